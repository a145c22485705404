"""The lattice grids of the i-quants, and what ggml's quantisers derive from them.

A grid is the list of vectors a block group may take: IQ2_XXS/IQ2_XS/IQ2_S 256/512/1024 points
of 8 coordinates from 3 levels, IQ1_S/IQ1_M 2048 points of 8 coordinates from 3 levels, IQ3_XXS/IQ3_S
256/512 points of 4 coordinates from 8 levels. The points themselves are taken from gguf-py (its
dequantisers carry each grid as packed level indices), so they are not copied here; ggml's
quantisers work with them as:

* ``pos``: each coordinate as ``2·l + 1`` (odd integers), what the distance searches use;
* ``kmap``: the code ``u = Σ l_k << (bits·k)`` of a vector of levels → its grid index, or -1;
* neighbours: for every code off the grid, the grid points at the ``nwant`` smallest squared
  distances (all points at each of those distances), ordered by (distance, index) — exactly the
  lists ``iq2xs_init_impl`` / ``iq3xs_init_impl`` build with ``qsort``.

Only codes whose levels can come out of the quantisers' rounding are needed (levels ``0..2`` for
the 2-bit and 1-bit grids, ``0..7`` for the 3-bit ones), so the tables cover those.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cache

import numpy as np
from gguf import quants

__all__ = ["Grid", "grid"]

_SPEC = {  # type → (gguf-py class, levels used, bits per code field, nwant)
    "iq2_xxs": ("IQ2_XXS", 3, 2, 2),
    "iq2_xs": ("IQ2_XS", 3, 2, 2),
    "iq2_s": ("IQ2_S", 3, 2, 1),
    "iq1_s": ("IQ1_S", 3, 2, 3),
    "iq1_m": ("IQ1_S", 3, 2, 3),
    "iq3_xxs": ("IQ3_XXS", 8, 3, 2),
    "iq3_s": ("IQ3_S", 8, 3, 3),
}


@dataclass(frozen=True)
class Grid:
    """One type's grid as the quantisers need it.

    ``levels``: int8 ``(G, dim)`` level of each coordinate; ``kmap``: int32 over all codes, the grid
    index or -1; ``nb_count``: per code, the length of its neighbour list (0 on the grid)."""

    levels: np.ndarray
    kmap: np.ndarray
    nb_count: np.ndarray
    bits: int
    dim: int
    n_levels: int
    nb_row: np.ndarray
    """Per code off the grid, its row of ``nb_table`` (-1 elsewhere)."""
    nb_table: np.ndarray
    """``(codes off the grid, longest list)``: each neighbour list, padded with ``G`` (the grid's size)."""
    pos_pad: np.ndarray
    """``(dim, G + 1)``: each point's coordinates as ``2·level + 1``, NaN for the padding index ``G``
    (a distance that never wins)."""
    nb_table_t: np.ndarray
    """``nb_table`` transposed, C-contiguous: a set of lists gathered with ``np.take(axis=1)`` comes out
    ``(width, lists)``, the layout the neighbour search works in."""
    nb_off: np.ndarray
    """``nb_table``'s points as int8 offsets ``i·n_levels + level`` into a per-query table of the
    ``dim·n_levels`` possible coordinate terms (the padding points to slot ``dim·n_levels``)."""


def _level_indices(cls_name: str) -> np.ndarray:
    """gguf-py's packed grid (hex text of level indices) → ``(G, dim)`` level indices."""
    cls = getattr(quants, cls_name)
    n_levels = len(cls.grid_map)
    bits = int(np.ceil(np.log2(n_levels)))
    per_byte = 8 // bits
    raw = bytes.fromhex(cls.grid_hex.decode())
    b = np.frombuffer(raw, np.uint8)
    shifts = np.arange(0, 8, 8 // per_byte, dtype=np.uint8)
    vals = (b[:, None] >> shifts[None, :]) & ((1 << bits) - 1)
    return vals.reshape(cls.grid_shape).astype(np.int8)


_lock = threading.Lock()


@cache
def _build(cls_name: str, n_levels: int, bits: int, nwant: int) -> Grid:
    levels = _level_indices(cls_name)
    n_grid, dim = levels.shape
    pos = (2 * levels.astype(np.int32) + 1)
    weights = (1 << (bits * np.arange(dim))).astype(np.int64)
    size = 1 << (bits * dim)
    kmap = np.full(size, -1, np.int32)
    kmap[(levels.astype(np.int64) * weights).sum(axis=1)] = np.arange(n_grid, dtype=np.int32)

    # every code with coordinates in 0..n_levels-1 that is off the grid
    codes = np.arange(size, dtype=np.int64)
    lv = (codes[:, None] >> (bits * np.arange(dim))) & ((1 << bits) - 1)
    usable = (lv < n_levels).all(axis=1) & (kmap < 0)
    off = codes[usable]
    lv_off = (2 * lv[usable] + 1).astype(np.int32)
    d2 = np.zeros((off.size, n_grid), np.int32)
    for k in range(dim):
        diff = pos[None, :, k] - lv_off[:, k, None]
        d2 += diff * diff
    # the nwant smallest distinct distances of each code
    limit = d2.min(axis=1)
    for _ in range(nwant - 1):
        limit = np.where(d2 > limit[:, None], d2, np.iinfo(np.int32).max).min(axis=1)
    rows, cols = np.nonzero(d2 <= limit[:, None])
    order = np.lexsort((cols, d2[rows, cols], rows))
    rows, cols = rows[order], cols[order]
    count = np.bincount(rows, minlength=off.size)
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    nb_count = np.zeros(size, np.int64)
    nb_count[off] = count
    nb_row = np.full(size, -1, np.int64)
    nb_row[off] = np.arange(off.size)
    table = np.full((off.size, int(count.max())), n_grid, np.int32)
    table[rows, np.arange(rows.size) - start[rows]] = cols
    pos_pad = np.full((dim, n_grid + 1), np.nan, np.float32)
    pos_pad[:, :n_grid] = pos.T
    slots = np.concatenate([levels.astype(np.int16) + n_levels * np.arange(dim, dtype=np.int16),
                            np.full((1, dim), dim * n_levels, np.int16)])
    return Grid(levels=levels, kmap=kmap, nb_count=nb_count, bits=bits, dim=dim, n_levels=n_levels, nb_row=nb_row,
                nb_table=table, nb_table_t=np.ascontiguousarray(table.T), pos_pad=pos_pad,
                nb_off=slots[table].astype(np.int8))


def grid(type_name: str) -> Grid:
    """The grid tables of ``type_name`` (iq2_xxs … iq3_s), built once (a fraction of a second)."""
    with _lock:
        return _build(*_SPEC[type_name])
