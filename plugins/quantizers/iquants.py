"""The i-quants (IQ4_NL, IQ4_XS, IQ3_S, IQ3_XXS, IQ2_S, IQ2_XS, IQ2_XXS, IQ1_S, IQ1_M) in numpy,
byte-identical to ggml's ``ggml_quantize_chunk(type, …, imatrix)``.

Every block is searched for the scale that minimises a weighted squared error — weights
``imatrix[j]·sqrt(σ² + x_j²)`` with an importance matrix, else ``x_j²`` (IQ2_S: ``σ²/4 + x_j²``) —
over levels that are either a fixed non-linear table (IQ4: 16 values from -127 to 113) or the
points of a lattice grid (IQ3: 4-vectors of 8 levels; IQ2: 8-vectors of 3 levels; IQ1: 8-vectors
of -1/0/+1 shifted by ±1/8) of which only a few hundred are representable. A vector that rounds off
the grid is moved to the best of its precomputed neighbours, the grid points within the nearest
two or three distances (:mod:`.grids`).

How it stays exact: as :mod:`.kquants` — float32 operations in C's order (sums element-major, so
that they run left to right over a block), ``nearest_int``'s own rounding, first-best tie rules
("strictly better" comparisons keep the earliest candidate), C's ``qsort`` order (glibc's is a
stable merge sort for these small arrays), and the grid's neighbour lists built as ggml builds
them. Each search runs for all blocks of a chunk at once; the per-candidate work of a neighbour
search is laid out flat (one row per block × candidate), so no Python loop runs per block.

IQ2_XXS, IQ2_XS and IQ1_S need an importance matrix (ggml asserts one): they raise ValueError
without. Non-finite inputs are not covered (ggml aborts on some of them).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from . import grids
from . import kquants as kq

__all__ = ["BLOCK_SIZES", "IQUANTIZERS", "NEEDS_IMATRIX", "TYPE_SIZES"]

_f32 = np.float32
_ZERO = _f32(0)
QK_K = 256

TYPE_SIZES = {"iq4_nl": 18, "iq4_xs": 136, "iq3_s": 110, "iq3_xxs": 98, "iq2_s": 82, "iq2_xs": 74,
              "iq2_xxs": 66, "iq1_s": 50, "iq1_m": 56}
BLOCK_SIZES = {name: 32 if name == "iq4_nl" else QK_K for name in TYPE_SIZES}
NEEDS_IMATRIX = frozenset({"iq2_xxs", "iq2_xs", "iq1_s"})
"""Types ggml refuses to quantise without an importance matrix (``ggml_quantize_requires_imatrix``)."""

CHUNK_ELEMENTS = 1 << 18
_CHUNK = {"iq1_s": 1 << 14, "iq1_m": 1 << 14,  # their split scans make ~35 candidates per element
          "iq4_nl": 1 << 16, "iq4_xs": 1 << 16}
"""Elements searched together: bounds the temporaries (the neighbour searches make several
arrays of a few candidates per element; IQ4's scale search dozens of arrays per trial, int64
index arrays among them). Temporaries of megabytes are handed back to the OS by glibc and fault in
again page by page on the next chunk, which on a VM costs as much as the arithmetic (IQ4 at 1M
elements took twice ggml's whole time in page faults); at these sizes they stay in cache and in the
heap, and numpy's per-call overhead is still small against the work per call."""


# --------------------------------------------------------------------------- driver


def _run(name: str, rows: np.ndarray, imatrix: np.ndarray | None,
         chunk_fn: Callable[[np.ndarray, np.ndarray | None], np.ndarray]) -> np.ndarray:
    """Quantise ``rows`` ``(..., n)`` block by block: ``chunk_fn(blocks, qw)`` gets ``(B, block)``
    float32 blocks and the importance weights of their columns (or None), returns ``(B, type_size)``."""
    rows = np.asarray(rows)
    if rows.ndim == 0:
        raise ValueError("expected rows of shape (..., n), got a scalar")
    block, ts = BLOCK_SIZES[name], TYPE_SIZES[name]
    n = rows.shape[-1]
    if n % block:
        raise ValueError(f"row length {n} is not a multiple of the {name} block size {block}")
    if imatrix is None and name in NEEDS_IMATRIX:
        raise ValueError(f"{name} needs an importance matrix (ggml refuses to quantise it without one)")
    nb_row = n // block
    blocks = np.ascontiguousarray(rows, dtype=_f32).reshape(-1, block)
    qw_all = None if imatrix is None else kq.check_imatrix(imatrix, n).reshape(nb_row, block)
    out = np.empty((blocks.shape[0], ts), np.uint8)
    step = max(1, _CHUNK.get(name, CHUNK_ELEMENTS) // block)
    with kq.scratch_scope():
        for start in range(0, blocks.shape[0], step):
            stop = min(start + step, blocks.shape[0])
            qw = None if qw_all is None else qw_all[np.arange(start, stop) % nb_row]
            out[start:stop] = chunk_fn(blocks[start:stop], qw)
    return out.reshape(*rows.shape[:-1], nb_row * ts)


def _em(a: np.ndarray, n: int) -> np.ndarray:
    """Element-major copy ``(n, B·len/n)`` of block-major data: row i = element i of every group."""
    return np.ascontiguousarray(a.reshape(-1, n).T)


def _sigma2(blocks: np.ndarray, factor: float) -> np.ndarray:
    """``sumx2 = Σ x²`` over each block in C's order, times ``factor`` (``2.f/size``, ``1/size`` …)."""
    return kq._seqsum(np.square(_em(blocks, blocks.shape[1]))) * _f32(factor)


def _weights(x: np.ndarray, qw: np.ndarray | None, sigma2: np.ndarray, per: int) -> np.ndarray:
    """Element-major weights: ``qw·sqrt(σ² + x²)`` with an importance matrix, else ``x²``."""
    if qw is None:
        return np.square(x)
    w = np.square(x)
    w += np.repeat(sigma2, per)
    np.sqrt(w, out=w)
    w *= _em(qw, x.shape[0])
    return w


# --------------------------------------------------------------------------- IQ4_NL / IQ4_XS

_IQ4_VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.float32)
# for an integer k = floor(a) in -128..127: the first level > a is the first level >= k + 1
_IQ4_NEXT = np.searchsorted(_IQ4_VALUES, np.arange(-128, 128, dtype=np.float32) + 1, side="left").astype(np.intp)


def _iq4_index(a: np.ndarray) -> np.ndarray:
    """``best_index_int8(16, kvalues_iq4nl, a)``: the nearest level (the upper one on a tie, the
    first below the table, the last above it and for NaN), elementwise."""
    lo_v, hi_v = _IQ4_VALUES[0], _IQ4_VALUES[-1]
    inside = (a > lo_v) & (a < hi_v)
    k = np.floor(np.where(inside, a, _ZERO)).astype(np.intp) + 128
    mu = _IQ4_NEXT[k]
    idx = mu - ((a - _IQ4_VALUES[mu - 1]) < (_IQ4_VALUES[mu] - a))
    return np.where(a <= lo_v, 0, np.where(inside, idx, 15))


def _iq4_scales(x: np.ndarray, w: np.ndarray, ntry: int = 7) -> np.ndarray:
    """The per-32 scale search of ``quantize_row_iq4_nl_impl`` (element-major ``(32, S)``): start
    from ``max/127``, then 2·ntry+1 inverse scales ``(t - 127)/max``, keeping the weighted
    least-squares scale of the best fit. All-zero blocks get 0."""
    amax, mx, _ = kq._abs_max(x)
    zero = amax < kq._GROUP_MAX_EPS
    mxs = np.where(zero, _f32(1), mx)

    def fit(inv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q = _IQ4_VALUES[_iq4_index(inv * x)]
        wq = w * q
        return kq._seqsum(wq * x), kq._seqsum(wq * q)

    d = (-mxs) / _IQ4_VALUES[0]
    sumqx, sumq2 = fit(_f32(1) / d)
    d = np.where(sumq2 > 0, sumqx / sumq2, _ZERO)
    best = d * sumqx
    for t in range(-ntry, ntry + 1):
        sumqx, sumq2 = fit(_f32(t - 127) / mxs)
        better = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
        if better.any():
            d = np.where(better, sumqx / sumq2, d)
            best = np.where(better, d * sumqx, best)
    return np.where(zero, _ZERO, d)


def _pack_nibbles32(L: np.ndarray) -> np.ndarray:
    """``q4[16i + j] = L[32i + j] | L[32i + 16 + j] << 4`` for block-major levels ``(B, 32k)``."""
    Lb = L.reshape(L.shape[0], -1, 2, 16)
    return (Lb[:, :, 0, :] | (Lb[:, :, 1, :] << 4)).reshape(L.shape[0], -1).astype(np.uint8)


def _iq4_nl_chunk(blocks: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
    nb = blocks.shape[0]
    x = _em(blocks, 32)
    w = _weights(x, qw, _sigma2(blocks, 2.0 / 32), 1)
    d = _iq4_scales(x, w)
    inv = np.where(d != 0, _f32(1) / np.where(d != 0, d, _f32(1)), _ZERO)
    L = _iq4_index(inv * x).T
    out = np.empty((nb, 18), np.uint8)
    out[:, 0:2] = kq._fp16_bits(d).view(np.uint8).reshape(nb, 2)
    out[:, 2:18] = _pack_nibbles32(L)
    return out


def _iq4_xs_chunk(blocks: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
    nb = blocks.shape[0]
    x = _em(blocks, 32)
    w = _weights(x, qw, _sigma2(blocks, 2.0 / QK_K), 8)
    scales = _iq4_scales(x, w).reshape(nb, 8)
    _, max_scale, _ = kq._abs_max(np.ascontiguousarray(scales.T))  # the first largest |scale|, signed
    d = (-max_scale) / _f32(32)
    inv = np.where(d != 0, _f32(1) / np.where(d != 0, d, _f32(1)), _ZERO)
    ls = np.clip(kq._nearest_int(inv[:, None] * scales), -32, 31)
    dl = d[:, None] * ls.astype(_f32)
    idl = np.where(dl != 0, _f32(1) / np.where(dl != 0, dl, _f32(1)), _ZERO).reshape(-1)
    L = _iq4_index(idl * x).T.reshape(nb, QK_K)
    ls = (ls + 32).astype(np.uint16)
    lo = (ls & 0xF).astype(np.uint8)
    hi = ls >> 4
    out = np.empty((nb, 136), np.uint8)
    out[:, 0:2] = kq._fp16_bits(d).view(np.uint8).reshape(nb, 2)
    sh = np.bitwise_or.reduce(hi << (2 * np.arange(8, dtype=np.uint16)), axis=1).astype("<u2")
    out[:, 2:4] = sh.view(np.uint8).reshape(nb, 2)
    out[:, 4:8] = lo[:, 0::2] | (lo[:, 1::2] << 4)
    out[:, 8:136] = _pack_nibbles32(L)
    return out


def quantize_iq4_nl(rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """IQ4_NL: blocks of 32, one f16 scale, 4-bit indices into a non-linear table (4.5 bits/weight)."""
    return _run("iq4_nl", rows, imatrix, _iq4_nl_chunk)


def quantize_iq4_xs(rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """IQ4_XS: super-blocks of 256, eight 6-bit sub-block scales, IQ4_NL's table (4.25 bits/weight)."""
    return _run("iq4_xs", rows, imatrix, _iq4_xs_chunk)


# --------------------------------------------------------------------------- lattice grids (IQ2, IQ3)


_CAPS = np.array([1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256, 320],
                 np.int64)


def _buckets(cnt: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Queries grouped by their neighbour count rounded up to a few widths (padding never wins)."""
    ci = np.searchsorted(_CAPS, cnt).astype(np.uint8)
    order = np.argsort(ci, kind="stable")  # one (radix) sort, not a pass over all queries per width
    ends = np.cumsum(np.bincount(ci, minlength=_CAPS.size))
    starts = ends - np.bincount(ci, minlength=_CAPS.size)
    return [(int(_CAPS[k]), order[starts[k]:ends[k]]) for k in np.flatnonzero(ends > starts)]


def _neighbours(g: grids.Grid, u: np.ndarray, xv: np.ndarray, wv: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``iq2/iq3_find_best_neighbour`` for M groups off the grid: among the neighbours of code ``u``,
    the first grid point minimising ``Σ w·(scale·pos − x)²`` (``xv``/``wv`` ``(dim, M)``).

    The candidates are laid out ``(width, queries)``: each query's values broadcast along a row,
    the coordinates are gathered with ``np.take`` (fancy indexing with int32 indices costs several
    times more), and the first minimum is found with reductions along axis 0 (``argmin`` along
    short rows is slow): the least distance, then the first candidate reaching it."""
    out = np.empty(u.size, np.int64)
    rows = g.nb_row[u]
    for width, idx in _buckets(g.nb_count[u]):
        cand = np.take(g.nb_table_t[:width], rows[idx], axis=1)  # (the table may be narrower than width)
        sc = scale[idx]
        d2 = None
        for i in range(g.dim):
            diff = np.take(g.pos_pad[i], cand)
            diff *= sc
            diff -= xv[i, idx]
            t = wv[i, idx] * diff
            t *= diff
            if d2 is None:
                d2 = t  # C's 0 + t: the same value (t is never -0 unless a weight is, and ±0 compare equal)
            else:
                d2 += t
        out[idx] = cand[_first_min(d2), np.arange(idx.size)]
    return out


def _neighbours_by_terms(g: grids.Grid, u: np.ndarray, terms: np.ndarray) -> np.ndarray:
    """The same search when each coordinate's term depends only on its level: ``terms`` ``(M, dim,
    n_levels)`` holds ``w_i·(s·q_l − x_i)²`` computed as C computes it, and a candidate's distance
    is the left-to-right sum of its coordinates' terms (exact, and far fewer operations than
    recomputing each term per candidate on the 3-level grids)."""
    M = u.size
    k = g.dim * g.n_levels
    tab = np.empty((M, k + 1), _f32)
    tab[:, :k] = terms.reshape(M, k)
    tab[:, k] = np.nan
    flat_tab = tab.reshape(-1)
    rows = g.nb_row[u]
    out = np.empty(M, np.int64)
    for width, idx in _buckets(g.nb_count[u]):
        off = g.nb_off[rows[idx], :width].astype(np.intp)
        off += (idx * (k + 1))[:, None, None]
        v = flat_tab[off]
        d2 = v[:, :, 0] + v[:, :, 1]
        for i in range(2, g.dim):
            d2 += v[:, :, i]
        np.copyto(d2, np.inf, where=np.isnan(d2))
        out[idx] = g.nb_table[rows[idx], np.argmin(d2, axis=1)]
    return out


def _first_min(d2: np.ndarray) -> np.ndarray:
    """``argmin(d2, axis=0)`` with NaN as +inf, from reductions along axis 0 (``argmin`` is slow
    along axis 0 and along short rows alike): the least value, then the first row reaching it."""
    np.copyto(d2, np.inf, where=np.isnan(d2))
    best = np.min(d2, axis=0)
    width = d2.shape[0]
    rank = np.multiply(d2 == best, np.arange(width, 0, -1, dtype=np.int16)[:, None])
    return width - np.max(rank, axis=0)


def _terms(scale: np.ndarray, q: np.ndarray, xv: np.ndarray, wv: np.ndarray) -> np.ndarray:
    """``(w·(scale·q − x))·(scale·q − x)`` for every coordinate and level: ``scale`` ``(M,)``, ``q``
    ``(M, n_levels)``, ``xv``/``wv`` ``(dim, M)`` → ``(M, dim, n_levels)``."""
    diff = (scale[:, None] * q)[:, None, :] - xv.T[:, :, None]
    return (wv.T[:, :, None] * diff) * diff


class _Groups:
    """Element-major block data ``(n, S)`` seen as groups of ``dim`` along the element axis."""

    def __init__(self, g: grids.Grid, n: int, S: int) -> None:
        self.g, self.n, self.S = g, n, S
        self.ng = n // g.dim

    def view(self, a: np.ndarray) -> np.ndarray:
        return a.reshape(self.ng, self.g.dim, self.S)

    def codes(self, lev: np.ndarray) -> np.ndarray:
        """``u = Σ l_k << (bits·k)`` of every group ``(ng, S)`` (accumulated in int32: codes < 2¹⁶)."""
        v = self.view(lev)
        u = v[:, 0].astype(np.int32)
        for k in range(1, self.g.dim):
            u |= v[:, k] << (self.g.bits * k)
        return u.astype(np.intp)

    def gather(self, a: np.ndarray, base: np.ndarray) -> np.ndarray:
        """``a``'s groups at flat offsets ``base`` (see :meth:`levels`) as ``(dim, M)``, contiguous."""
        flat = a.reshape(-1)
        return np.stack([np.take(flat, base + i * self.S) for i in range(self.g.dim)])

    def levels(self, xval: np.ndarray, waux: np.ndarray, inv: np.ndarray, scale: np.ndarray, kmax: int,
               only: np.ndarray | None = None, lev: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Round every group (or the groups where ``only`` ``(ng, S)`` is set) at inverse scale
        ``inv`` to levels ``clamp(nearest_int(0.5·(inv·x − 1)), 0, kmax−1)``, moving a vector off
        the grid to its best neighbour at ``scale``. Returns ``(levels (n, S) int32, on_grid (ng, S))``
        (``lev``: the levels to update in place when ``only`` is given)."""
        t = xval * inv
        t -= _f32(1)
        t *= _f32(0.5)
        new = np.clip(kq._nearest_int(t), 0, kmax - 1)
        if only is not None:
            new = np.where(np.repeat(only, self.g.dim, axis=0), new, lev)
        u = self.codes(new)
        gi = self.g.kmap[u]
        on = gi >= 0
        off = ~on if only is None else (~on & only)
        if off.any():
            kk, bb = np.nonzero(off)
            # element i of group kk in column bb sits at flat offset base + i·S of an (n, S) array:
            # plain takes and puts, cheaper than a[kk, :, bb] fancy indexing
            base = kk * (self.g.dim * self.S) + bb
            best = _neighbours(self.g, u[kk, bb], self.gather(xval, base), self.gather(waux, base), scale[bb])
            lv = self.g.levels[best]
            flat = new.reshape(-1)
            for i in range(self.g.dim):
                np.put(flat, base + i * self.S, lv[:, i])
        return new, on

    def indices(self, lev: np.ndarray) -> np.ndarray:
        """Grid index of every group ``(ng, S)``; the levels must be on the grid."""
        gi = self.g.kmap[self.codes(lev)]
        if (gi < 0).any():  # ggml aborts here ("found point not on grid"); it cannot happen for finite data
            raise ValueError("a quantised group is not on the grid (non-finite input?)")
        return gi


def _fit(w: np.ndarray, xval: np.ndarray, lev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``sumqx = Σ w·x·q``, ``sumq2 = Σ w·q·q`` with ``q = 2·l + 1``, in element order."""
    q = (2 * lev + 1).astype(_f32)
    wq = w * q
    return kq._seqsum((w * xval) * q), kq._seqsum(wq * q)


def _signs(x: np.ndarray, w: np.ndarray, parity: bool) -> tuple[np.ndarray, np.ndarray]:
    """``xval = |x|`` (``x >= 0`` keeps ``x``, -0.0 included) and the sign bits of each group of 8.

    With ``parity`` (IQ2_XXS, IQ2_XS, IQ3_XXS store 7 sign bits and imply the eighth), a group
    with an odd number of negatives gets the element of least ``w·x²`` flipped back to negative
    in ``xval``, and its bit toggled; the 7 low bits are kept."""
    n, S = x.shape
    neg = ~(x >= 0)
    xval = np.where(neg, -x, x)
    bits = (neg.reshape(n // 8, 8, S).astype(np.int64) << np.arange(8)[None, :, None]).sum(axis=1)
    if parity:
        odd = neg.reshape(n // 8, 8, S).sum(axis=1) % 2 == 1
        if odd.any():
            wxx = ((w * x) * x).reshape(n // 8, 8, S)
            imin = np.argmin(wxx, axis=1)
            kk, bb = np.nonzero(odd)
            xv3 = xval.reshape(n // 8, 8, S)
            xv3[kk, imin[kk, bb], bb] = -xv3[kk, imin[kk, bb], bb]
            bits[kk, bb] ^= 1 << imin[kk, bb]
        bits &= 127
    return xval, bits


def _running_max(scales: np.ndarray) -> np.ndarray:
    """``max_scale = MAX(max_scale, scale)`` from 0 over axis 1 (non-negative scales)."""
    return np.maximum(np.max(scales, axis=1), _ZERO)


def _nibble_scale(inv: np.ndarray, scales: np.ndarray, top: int) -> np.ndarray:
    """``clamp(nearest_int(0.5·(id·scale − 1)), 0, top)``: a block scale as an odd multiple of ``d``."""
    t = inv[:, None] * scales
    t -= _f32(1)
    t *= _f32(0.5)
    return np.clip(kq._nearest_int(t), 0, top)


def _grid_blocks(name: str, blocks: np.ndarray, qw: np.ndarray | None) -> dict:
    """The per-block search shared by IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS and IQ3_S
    (``quantize_row_iq2_xxs_impl`` … ``quantize_row_iq3_s_impl``). Returns the block scales,
    grid indices, sign bits and which blocks had any data, per super-block."""
    sub, kmax, parity, eps, trials, step, init, requant = _GRID_TYPES[name]
    g = grids.grid(name)
    nb = blocks.shape[0]
    nsub = QK_K // sub
    x = _em(blocks, sub)
    S = x.shape[1]
    if name in ("iq2_xxs", "iq2_xs"):
        sigma2 = _sigma2(blocks, 1.0 / QK_K)
    else:
        sigma2 = _sigma2(blocks, 2.0 / QK_K)
    if qw is None and name == "iq2_s":
        w = np.square(x)
        w += np.repeat(_f32(0.25) * sigma2, nsub)
    else:
        w = _weights(x, qw, sigma2, nsub)
    waux = np.sqrt(w)
    xval, sbits = _signs(x, w, parity)
    gr = _Groups(g, sub, S)
    mx = np.max(xval, axis=0)
    dead = (mx == 0) if eps == 0 else (mx < eps)
    mxs = np.where(dead, _f32(1), mx)
    top = _f32(2 * kmax - 1)

    if init == "qp":  # IQ2_XXS: start from make_qp_quants' fit on 4 levels
        scale, lev = kq._make_qp(xval, w, kmax + 1)
        lev = lev.astype(np.int32)
        eff = scale * _f32(kmax)
        dead |= ~(eff > 0)
        base = np.where(dead, _f32(1), eff)
        on_grid = np.ones((gr.ng, S), bool)
    else:
        scale = mxs / top
        base = mxs
        lev = np.zeros((sub, S), np.int32)
        on_grid = np.full((gr.ng, S), init == "on")
    best = np.zeros(S, _f32)
    for t in trials:
        inv = (top + _f32(t) * _f32(step)) / base
        lv, on = gr.levels(xval, waux, inv, _f32(1) / inv, kmax)
        sumqx, sumq2 = _fit(w, xval, lv)
        better = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
        if better.any():
            scale = np.where(better, sumqx / sumq2, scale)
            best = np.where(better, scale * sumqx, best)
            lev = np.where(better, lv, lev)
            on_grid = np.where(better, on, on_grid)

    # once more at the chosen scale: every group (IQ2_XXS, IQ3_S) or those the best trial had off the grid
    if requant == "all":
        redo = (scale > 0) if init == "qp" else ((~on_grid).any(axis=0) & (scale > 0))
        only = None
    else:
        redo = (~on_grid).any(axis=0) & (scale > 0)
        only = ~on_grid & redo
    redo &= ~dead
    if redo.any():
        inv = _f32(1) / np.where(redo, scale, _f32(1))
        lv, _ = gr.levels(xval, waux, inv, scale, kmax, only=only, lev=lev)
        lev = np.where(redo, lv, lev)
        sumqx, sumq2 = _fit(w, xval, lev)
        scale = np.where(redo & (sumq2 > 0), sumqx / np.where(sumq2 > 0, sumq2, _f32(1)), scale)

    neg_scale = (scale < 0) & ~dead
    if neg_scale.any():  # "should never happen": flip the scale and every sign
        scale = np.where(neg_scale, -scale, scale)
        sbits = np.where(neg_scale, ~sbits & (127 if parity else 255), sbits)
    lev = np.where(dead, 0, lev)
    gi = np.where(dead, 0, gr.indices(lev))  # ggml writes nothing for a block without data
    sbits = np.where(dead, 0, sbits)
    scale = np.where(dead, _ZERO, scale)
    return {"scales": scale.reshape(nb, nsub), "grid": gi.T.reshape(nb, nsub, gr.ng),
            "signs": sbits.T.reshape(nb, nsub, sub // 8), "live": ~dead.reshape(nb, nsub)}


# type → (sub-block, kMaxQ, parity signs, zero threshold (0: exactly zero), trials, trial step,
#         start ("qp": make_qp_quants, "on"/"off": max/(2k−1) with groups counted on/off the grid),
#         second pass over "all" groups or only those "off" the grid)
_GRID_TYPES = {
    "iq2_xxs": (32, 3, True, 1e-15, range(-6, 7), 0.1, "qp", "all"),
    "iq2_xs": (16, 3, True, 1e-15, range(-9, 10), 0.1, "on", "off"),
    "iq2_s": (16, 3, False, 1e-8, range(-9, 10), 0.1, "on", "off"),
    "iq3_xxs": (32, 8, True, 1e-8, range(-15, 16), 0.2, "on", "off"),
    "iq3_s": (32, 8, False, 0, range(-9, 10), 0.2, "off", "all"),
}


def _super_scale(scales: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``d = max_scale/31`` (IQ2/IQ3: block scales as odd multiples of d, 4 bits) and the block
    scale codes; super-blocks whose scales are all 0 are marked (ggml writes them as zeros)."""
    max_scale = _running_max(scales)
    empty = ~(max_scale != 0)
    d = np.where(empty, _f32(1), max_scale) / _f32(31)
    return d, _nibble_scale(_f32(1) / d, scales, top), empty


def _iq2_xxs_chunk(blocks: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
    nb = blocks.shape[0]
    r = _grid_blocks("iq2_xxs", blocks, qw)
    d, ls, empty = _super_scale(r["scales"], 15)
    words = np.zeros((nb, 8, 2), np.uint32)
    words[:, :, 0] = (r["grid"].astype(np.uint32) << (8 * np.arange(4, dtype=np.uint32))).sum(axis=2)
    words[:, :, 1] = (r["signs"].astype(np.uint32) << (7 * np.arange(4, dtype=np.uint32))).sum(axis=2)
    words[:, :, 1] |= ls.astype(np.uint32) << 28
    words[empty] = 0
    out = np.empty((nb, 66), np.uint8)
    out[:, 0:2] = np.where(empty, np.uint16(0), kq._fp16_bits(d)).view(np.uint8).reshape(nb, 2)
    out[:, 2:66] = words.astype("<u4").view(np.uint8).reshape(nb, 64)
    return out


def _iq2_xs_chunk(blocks: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
    nb = blocks.shape[0]
    r = _grid_blocks("iq2_xs", blocks, qw)
    d, ls, empty = _super_scale(r["scales"], 15)
    qs = (r["grid"].astype(np.uint16) | (r["signs"].astype(np.uint16) << 9)).reshape(nb, 32)
    qs[empty] = 0
    out = np.zeros((nb, 74), np.uint8)
    out[:, 0:2] = np.where(empty, np.uint16(0), kq._fp16_bits(d)).view(np.uint8).reshape(nb, 2)
    out[:, 2:66] = qs.astype("<u2").view(np.uint8).reshape(nb, 64)
    sc = (ls[:, 0::2] | (ls[:, 1::2] << 4)).astype(np.uint8)
    out[:, 66:74] = np.where(empty[:, None], 0, sc)
    return out


def _iq2_s_chunk(blocks: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
    nb = blocks.shape[0]
    r = _grid_blocks("iq2_s", blocks, qw)
    d, ls, empty = _super_scale(r["scales"], 15)
    gi = r["grid"].reshape(nb, 32)
    out = np.zeros((nb, 82), np.uint8)
    out[:, 0:2] = kq._fp16_bits(d * _f32(0.9875)).view(np.uint8).reshape(nb, 2)
    out[:, 2:34] = (gi & 255).astype(np.uint8)
    out[:, 34:66] = r["signs"].reshape(nb, 32).astype(np.uint8)
    hi = (gi >> 8).reshape(nb, 8, 4) << (2 * np.arange(4))
    out[:, 66:74] = hi.sum(axis=2).astype(np.uint8)
    out[:, 74:82] = (ls[:, 0::2] | (ls[:, 1::2] << 4)).astype(np.uint8)
    out[empty] = 0
    return out


def _iq3_xxs_chunk(blocks: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
    nb = blocks.shape[0]
    r = _grid_blocks("iq3_xxs", blocks, qw)
    d, ls, empty = _super_scale(r["scales"], 15)
    out = np.zeros((nb, 98), np.uint8)
    out[:, 0:2] = kq._fp16_bits(d * _f32(1.0125)).view(np.uint8).reshape(nb, 2)
    out[:, 2:66] = r["grid"].reshape(nb, 64).astype(np.uint8)
    ss = (r["signs"].astype(np.uint32) << (7 * np.arange(4, dtype=np.uint32))).sum(axis=2)
    ss |= ls.astype(np.uint32) << 28
    out[:, 66:98] = ss.astype("<u4").view(np.uint8).reshape(nb, 32)
    out[empty, 2:] = 0
    out[empty, 0:2] = 0
    return out


def _iq3_s_chunk(blocks: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
    nb = blocks.shape[0]
    r = _grid_blocks("iq3_s", blocks, qw)
    d, ls, empty = _super_scale(r["scales"], 15)
    gi, signs, live = r["grid"], r["signs"], r["live"]
    out = np.zeros((nb, 110), np.uint8)
    out[:, 0:2] = kq._fp16_bits(d * _f32(1.033)).view(np.uint8).reshape(nb, 2)
    # ggml advances its qs/signs write positions only past sub-blocks that hold data: a
    # sub-block of zeros takes no slot, and the later ones move up
    slot = np.cumsum(live, axis=1) - live
    bb, ib = np.nonzero(live)
    qs = out[:, 2:66].reshape(nb, 8, 8)
    qs[bb, slot[bb, ib]] = (gi[bb, ib] & 255).astype(np.uint8)
    sg = out[:, 74:106].reshape(nb, 8, 4)
    sg[bb, slot[bb, ib]] = signs[bb, ib].astype(np.uint8)
    out[:, 2:66] = qs.reshape(nb, 64)
    out[:, 74:106] = sg.reshape(nb, 32)
    out[:, 66:74] = ((gi >> 8) << np.arange(8)).sum(axis=2).astype(np.uint8)
    out[:, 106:110] = (ls[:, 0::2] | (ls[:, 1::2] << 4)).astype(np.uint8)
    out[empty, 0:2] = 0
    out[empty, 106:110] = 0
    return out


def quantize_iq2_xxs(rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """IQ2_XXS: 8-vectors from a 256-point grid, 7 sign bits, 4-bit scales per 32 (2.06 bits/weight)."""
    return _run("iq2_xxs", rows, imatrix, _iq2_xxs_chunk)


def quantize_iq2_xs(rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """IQ2_XS: 8-vectors from a 512-point grid, 4-bit scales per 16 (2.31 bits/weight)."""
    return _run("iq2_xs", rows, imatrix, _iq2_xs_chunk)


def quantize_iq2_s(rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """IQ2_S: 8-vectors from a 1024-point grid, 8 free sign bits, 4-bit scales per 16 (2.5 bits/weight)."""
    return _run("iq2_s", rows, imatrix, _iq2_s_chunk)


def quantize_iq3_xxs(rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """IQ3_XXS: 4-vectors from a 256-point grid, 7 sign bits per 8, 4-bit scales per 32 (3.06 bits/weight)."""
    return _run("iq3_xxs", rows, imatrix, _iq3_xxs_chunk)


def quantize_iq3_s(rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """IQ3_S: 4-vectors from a 512-point grid, free signs, 4-bit scales per 32 (3.44 bits/weight)."""
    return _run("iq3_s", rows, imatrix, _iq3_s_chunk)


# --------------------------------------------------------------------------- IQ1_S / IQ1_M

_DELTA = _f32(0.125)
_X_P = np.array([_f32(-1) + _DELTA, _DELTA, _f32(1) + _DELTA], np.float32)
_X_M = np.array([_f32(-1) - _DELTA, -_DELTA, _f32(1) - _DELTA], np.float32)
_FLT_MAX = np.finfo(np.float32).max


def _keys(sqx: np.ndarray, sq2: np.ndarray, out: np.ndarray) -> None:
    """``out = sumqx²/sumq2`` as ``(sumqx/sumq2)·sumqx`` where ``sumq2 > 0``, else −inf."""
    np.divide(sqx, sq2, out=out)
    out *= sqx
    np.copyto(out, -np.inf, where=~(sq2 > 0))


def _scan(sqx: np.ndarray, sq2: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """C's running search ``if (sumq2 > 0 && sumqx² > best·sumq2) {scale = sumqx/sumq2; best = scale·sumqx;}``
    from ``best = -FLT_MAX`` over candidates ``(C, S)`` in order. Returns ``(winner or -1, scale)``;
    ``key`` holds each candidate's score (:func:`_keys`).

    Only candidates whose score ``sumqx²/sumq2`` is within 1e-4 of the best can be the last one
    taken — the float comparisons err by a few ulp, far less than that margin — and once the first
    of them is taken nothing below the margin is, so the exact scan is replayed over those alone
    (usually one; several when zero weights make splits tie exactly)."""
    top = key.max(axis=0)
    near = key >= top - np.abs(top) * _f32(1e-4)
    near &= top > -np.inf
    # the first and the last near candidate of each column from max-reductions along axis 0 (a
    # boolean sum or argmax along it is several times slower): count 0, 1 or "several" (2)
    C = key.shape[0]
    ramp = np.arange(1, C + 1, dtype=np.int16 if C < 2**15 else np.int32)[:, None]
    last = np.max(np.multiply(near, ramp), axis=0)  # index + 1 of the last, 0 if none
    first = C - np.max(np.multiply(near, ramp[::-1]), axis=0)  # C if none
    count = np.where(last == 0, 0, np.where(first == last - 1, 1, 2))
    win = np.where(last > 0, first, -1)
    S = sqx.shape[1]
    cols = np.arange(S)
    scale = np.zeros(S, _f32)
    # where the products C compares could overflow or fall into float32's subnormal range (huge or
    # tiny data), the few-ulp argument fails: those columns get the whole scan replayed
    extreme = ~((top < _f32(1e30)) & ((top > _f32(1e-30)) | (top == -np.inf)))
    extreme |= ~(np.maximum(sqx.max(axis=0), -sqx.min(axis=0)) < _f32(1e18)) | ~(sq2.max(axis=0) < _f32(1e30))
    if extreme.any():
        ex = np.flatnonzero(extreme)
        win[ex], scale[ex] = _scan_all(sqx[:, ex], sq2[:, ex])
        count[ex] = 0
    one = count == 1
    scale[one] = sqx[win[one], cols[one]] / sq2[win[one], cols[one]]
    many = np.flatnonzero(count > 1)
    if many.size:
        # the near candidates of each column in scan order: row k of `order` holds each column's
        # k-th (`valid` marks the columns that have one)
        col, cand = np.nonzero(near[:, many].T)  # by column, then candidate
        k_of = np.arange(col.size) - np.searchsorted(col, col)
        order = np.zeros((int(k_of.max()) + 1, many.size), np.intp)
        valid_k = np.zeros(order.shape, bool)
        order[k_of, col] = cand
        valid_k[k_of, col] = True
        best = np.full(many.size, -_FLT_MAX, _f32)
        w = np.full(many.size, -1)
        sc = np.zeros(many.size, _f32)
        for k in range(order.shape[0]):
            c = order[k]
            valid = valid_k[k]
            qx = sqx[c, many]
            q2 = sq2[c, many]
            take = valid & (q2 > 0) & (qx * qx > best * q2)
            if take.any():
                s_new = qx / np.where(take, q2, _f32(1))
                sc = np.where(take, s_new, sc)
                best = np.where(take, s_new * qx, best)
                w = np.where(take, c, w)
        win[many] = w
        scale[many] = sc
    return win, scale


def _scan_all(sqx: np.ndarray, sq2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_scan` replayed candidate by candidate (exact for any float values)."""
    S = sqx.shape[1]
    best = np.full(S, -_FLT_MAX, _f32)
    win = np.full(S, -1)
    sc = np.zeros(S, _f32)
    for c in range(sqx.shape[0]):
        qx, q2 = sqx[c], sq2[c]
        take = (q2 > 0) & (qx * qx > best * q2)
        if take.any():
            s_new = qx / np.where(take, q2, _f32(1))
            sc = np.where(take, s_new, sc)
            best = np.where(take, s_new * qx, best)
            win = np.where(take, c, win)
    return win, sc


def _split_levels(x: np.ndarray, i1: np.ndarray, i2: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Levels 0/1/2 for the elements below ``i1``, between, and from ``i2`` on in sorted order."""
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(x.shape[0])[:, None], axis=0)
    return (rank >= i1).astype(np.int32) + (rank >= i2).astype(np.int32)


def _best_split(sqx: np.ndarray, sq2: np.ndarray, key: np.ndarray, per: int, live: np.ndarray, x: np.ndarray,
                i1: np.ndarray, i2: np.ndarray, order: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The IQ1 split search's winner: ``(split, variant)`` candidates ``(pairs, per, S)`` scanned as C
    scans them; returns the blocks still live, the winning candidate, its levels and scale, and
    where the scale came out negative (there levels and scale are mirrored: 2 − l, −scale)."""
    S = sqx.shape[-1]
    win, scale = _scan(sqx.reshape(-1, S), sq2.reshape(-1, S), key.reshape(-1, S))
    live = live & (win >= 0)
    pair = np.where(live, win // per, 0)
    lev = _split_levels(x, i1[pair], i2[pair], order)
    neg = (scale < 0) & live
    return live, win, np.where(neg, 2 - lev, lev), np.where(neg, -scale, scale), neg


def _iq1_grid(g: grids.Grid, x: np.ndarray, w: np.ndarray, lev: np.ndarray, scale: np.ndarray,
              xx: np.ndarray, live: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grid indices of the groups of 8 (``xx`` ``(ng, S, 3)`` per group), neighbours for those off the
    grid; then, where any was off, the scale refitted ``Σ w·q·x / Σ w·q²`` if both are positive."""
    n, S = x.shape
    ng = n // 8
    shift = (2 * np.arange(8, dtype=np.int64))[None, :, None]
    L3 = lev.reshape(ng, 8, S)
    u = (L3.astype(np.int64) << shift).sum(axis=1)
    gi = g.kmap[u]
    off = (gi < 0) & live[None, :]
    if off.any():
        kk, bb = np.nonzero(off)
        x3, w3 = x.reshape(ng, 8, S), w.reshape(ng, 8, S)
        best = _neighbours_by_terms(g, u[kk, bb], _terms(scale[bb], xx[kk, bb], x3[kk, :, bb].T, w3[kk, :, bb].T))
        gi[kk, bb] = best
        L3[kk, :, bb] = g.levels[best]
        redo = off.any(axis=0)
        q = np.take_along_axis(np.repeat(xx, 8, axis=0), lev[:, :, None], axis=2)[:, :, 0]
        wq = w * q
        sumqx, sumq2 = kq._seqsum(wq * x), kq._seqsum(wq * q)
        fit = redo & (sumqx > 0) & (sumq2 > 0)
        scale = np.where(fit, sumqx / np.where(fit, sumq2, _f32(1)), scale)
    return np.where(live[None, :], gi, 0), lev, scale


def _iq1_s_chunk(blocks: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
    nb = blocks.shape[0]
    g = grids.grid("iq1_s")
    x = _em(blocks, 32)
    S = x.shape[1]
    w = _weights(x, qw, _sigma2(blocks, 2.0 / QK_K), 8)
    live = np.max(np.abs(x), axis=0) >= _f32(1e-12)
    order = np.argsort(x, axis=0, kind="stable")  # glibc's qsort here is a stable merge sort
    ws = np.take_along_axis(w, order, axis=0)
    xs = np.take_along_axis(x, order, axis=0)
    sumx = np.concatenate([np.zeros((1, S), _f32), np.cumsum(ws * xs, axis=0, dtype=_f32)])
    sumw = np.concatenate([np.zeros((1, S), _f32), np.cumsum(ws, axis=0, dtype=_f32)])
    i1, i2 = np.triu_indices(33)
    # every split (i1 <= i2) with +δ and −δ, in C's scan order: rows (pair, shift); the pair's terms
    # that depend on one end only come from per-prefix tables, a row block per i1
    tot_x, tot_w = sumx[32], sumw[32]
    sqx = np.empty((i1.size, 2, S), _f32)
    sq2 = np.empty((i1.size, 2, S), _f32)
    key = np.empty((i1.size, 2, S), _f32)
    tabs = []
    for v in (_X_P, _X_M):
        tabs.append((sumx * v[0], (tot_x - sumx) * v[2], (sumw * v[0]) * v[0], ((tot_w - sumw) * v[2]) * v[2], v[1]))
    start = 0
    for a in range(33):
        n = 33 - a
        b = sumx[a:] - sumx[a]
        wb = sumw[a:] - sumw[a]
        for k, (ax, cx, aw, cw, v1) in enumerate(tabs):
            t = b * v1
            t += ax[a]
            np.add(t, cx[a:], out=sqx[start:start + n, k])
            t = wb * v1
            t *= v1
            t += aw[a]
            np.add(t, cw[a:], out=sq2[start:start + n, k])
        _keys(sqx[start:start + n], sq2[start:start + n], key[start:start + n])
        start += n
    live, win, lev, scale, neg = _best_split(sqx, sq2, key, 2, live, x, i1, i2, order)
    del sqx, sq2, key
    shift = np.where(win % 2 == 0, 1, -1)
    shift = np.where(neg, -shift, shift)
    xx = np.where((shift == 1)[:, None], _X_P[None, :], _X_M[None, :])
    gi, lev, scale = _iq1_grid(g, x, w, lev, scale, np.broadcast_to(xx, (4, S, 3)), live)
    scale = np.where(live, scale, _ZERO)
    shift = np.where(live, shift, 1)

    scales = scale.reshape(nb, 8)
    max_scale = _running_max(scales)
    empty = ~(max_scale != 0)
    d = np.where(empty, _f32(1), max_scale) / _f32(15)
    gi = gi.T.reshape(nb, 8, 4)
    qh = ((gi >> 8) << (3 * np.arange(4))).sum(axis=2).astype(np.uint16)
    ls = np.clip(kq._nearest_int(_f32(0.5) * ((_f32(1) / d)[:, None] * scales - _f32(1))), 0, 7)
    ls |= np.where(shift.reshape(nb, 8) == -1, 8, 0)
    qh |= np.where(empty[:, None], 0, ls << 12).astype(np.uint16)
    out = np.empty((nb, 50), np.uint8)
    out[:, 0:2] = np.where(empty, np.uint16(0), kq._fp16_bits(d * _f32(1.125))).view(np.uint8).reshape(nb, 2)
    out[:, 2:34] = (gi & 255).reshape(nb, 32).astype(np.uint8)
    out[:, 34:50] = qh.astype("<u2").view(np.uint8).reshape(nb, 16)
    return out


def _iq1_m_chunk(blocks: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
    nb = blocks.shape[0]
    g = grids.grid("iq1_m")
    x = _em(blocks, 16)
    S = x.shape[1]
    w = _weights(x, qw, _sigma2(blocks, 2.0 / QK_K), 16)
    live = np.max(np.abs(x), axis=0) >= _f32(1e-7)
    order = np.argsort(x, axis=0, kind="stable")
    ws = np.take_along_axis(w, order, axis=0)
    wxs = ws * np.take_along_axis(x, order, axis=0)
    first_half = order < 8
    z = np.zeros((1, S), _f32)
    neutral = _f32(-0.0)  # x + (-0.0) == x exactly: a half's prefix "carried over" unchanged
    px = [np.concatenate([z, np.cumsum(np.where(first_half == (h == 0), wxs, neutral), axis=0, dtype=_f32)]) for h in (0, 1)]
    pw = [np.concatenate([z, np.cumsum(np.where(first_half == (h == 0), ws, neutral), axis=0, dtype=_f32)]) for h in (0, 1)]
    p2, m2 = _X_P[2], _X_M[2]
    cp1, cp2 = _X_P[0] * _X_P[0] - _X_P[1] * _X_P[1], _X_P[1] * _X_P[1] - _X_P[2] * _X_P[2]
    cm1, cm2 = _X_M[0] * _X_M[0] - _X_M[1] * _X_M[1], _X_M[1] * _X_M[1] - _X_M[2] * _X_M[2]
    i1, i2 = np.triu_indices(17)
    # every split (i1 <= i2) with the four sign combinations, in C's scan order: rows (pair, combination)
    sqx = np.empty((i1.size, 4, S), _f32)
    sq2 = np.empty((i1.size, 4, S), _f32)
    key = np.empty((i1.size, 4, S), _f32)
    halves = []
    for h in (0, 1):
        txs, tws = px[h][16], pw[h][16]
        halves.append((px[h], txs * p2, txs * m2, (tws * p2) * p2, (tws * m2) * m2,
                       pw[h] * cp1, pw[h] * cp2, pw[h] * cm1, pw[h] * cm2))
    start = 0
    for a in range(17):
        n = 17 - a
        parts = []
        for pxh, kp, km, k2p, k2m, w1p, w2p, w1m, w2m in halves:
            sx = pxh[a:] + pxh[a]
            parts.append((kp - sx, km - sx, (k2p + w1p[a]) + w2p[a:], (k2m + w1m[a]) + w2m[a:]))
        (qp0, qm0, q2p0, q2m0), (qp1, qm1, q2p1, q2m1) = parts
        for k, (x0, x1, y0, y1) in enumerate(((qp0, qp1, q2p0, q2p1), (qp0, qm1, q2p0, q2m1),
                                              (qm0, qp1, q2m0, q2p1), (qm0, qm1, q2m0, q2m1))):
            np.add(x0, x1, out=sqx[start:start + n, k])
            np.add(y0, y1, out=sq2[start:start + n, k])
        _keys(sqx[start:start + n], sq2[start:start + n], key[start:start + n])
        start += n
    live, win, lev, scale, neg = _best_split(sqx, sq2, key, 4, live, x, i1, i2, order)
    del sqx, sq2, key
    best_k = np.where(live, win % 4, 0)
    best_k = np.where(neg, 3 - best_k, best_k)
    xx = _iq1_m_values(best_k)
    gi, lev, scale = _iq1_grid(g, x, w, lev, scale, xx, live)
    scale = np.where(live, scale, _ZERO)
    best_k = np.where(live, best_k, 0)

    scales = scale.reshape(nb, 16)
    max_scale = _running_max(scales)
    empty = ~(max_scale != 0)
    d = np.where(empty, _f32(1), max_scale) / _f32(15)
    ls = np.clip(kq._nearest_int(_f32(0.5) * ((_f32(1) / d)[:, None] * scales - _f32(1))), 0, 7)
    gi_b = gi.T.reshape(nb, 16, 2)
    qs = (gi_b & 255).reshape(nb, 32).astype(np.uint8)
    qh = ((gi_b[:, :, 0] >> 8) | ((gi_b[:, :, 1] >> 8) << 4)).astype(np.uint8)
    qh |= np.where(empty[:, None], 0, np.array([0x00, 0x80, 0x08, 0x88], np.uint8)[best_k.reshape(nb, 16)])
    # the super-block scale: a weighted fit of all 256 elements at their final levels and block scales
    lv = g.levels[gi].transpose(0, 2, 1).reshape(16, S)  # element-major levels of the final grid points
    q = np.take_along_axis(np.repeat(xx, 8, axis=0), lv[:, :, None].astype(np.intp), axis=2)[:, :, 0]
    q = q * (2 * ls.reshape(-1) + 1).astype(_f32)[None, :]
    wq = w * q
    sumqx = kq._seqsum(_block_order(wq * x, nb))
    sumq2 = kq._seqsum(_block_order(wq * q, nb))
    dfit = np.where(sumq2 > 0, sumqx / np.where(sumq2 > 0, sumq2, _f32(1)), d)
    s16 = kq._fp16_bits(dfit * _f32(1.1125)).astype(np.uint16)
    sc = np.zeros((nb, 4), np.uint16)
    sc |= (ls.reshape(nb, 4, 4).astype(np.uint16) << (3 * np.arange(4, dtype=np.uint16))).sum(axis=2).astype(np.uint16)
    sc[:, 0] |= (s16 & 0x000F) << 12
    sc[:, 1] |= (s16 & 0x00F0) << 8
    sc[:, 2] |= (s16 & 0x0F00) << 4
    sc[:, 3] |= s16 & 0xF000
    sc[empty] = 0
    out = np.empty((nb, 56), np.uint8)
    out[:, 0:32] = qs
    out[:, 32:48] = qh
    out[:, 48:56] = sc.astype("<u2").view(np.uint8).reshape(nb, 8)
    return out


def _iq1_m_values(best_k: np.ndarray) -> np.ndarray:
    """The shifted level values of the two groups of 8 of each IQ1_M block ``(2, S, 3)``: group 0
    takes +δ for sign combinations 0 and 1, group 1 for 0 and 2."""
    first = np.where((best_k < 2)[:, None], _X_P[None, :], _X_M[None, :])
    second = np.where((best_k % 2 == 0)[:, None], _X_P[None, :], _X_M[None, :])
    return np.stack([first, second])


def _block_order(a: np.ndarray, nb: int) -> np.ndarray:
    """Element-major ``(16, nb·16)`` IQ1_M data → ``(256, nb)``: each super-block's elements in order."""
    return np.ascontiguousarray(a.reshape(16, nb, 16).transpose(2, 0, 1)).reshape(256, nb)


def quantize_iq1_s(rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """IQ1_S: 8-vectors of -1/0/+1 from a 2048-point grid, shifted ±1/8 per 32, 3-bit scales (1.56 bits/weight)."""
    return _run("iq1_s", rows, imatrix, _iq1_s_chunk)


def quantize_iq1_m(rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """IQ1_M: IQ1_S's grid per 16 with a shift per group of 8 and 3-bit scales (1.75 bits/weight)."""
    return _run("iq1_m", rows, imatrix, _iq1_m_chunk)


IQUANTIZERS: dict[str, Callable[..., np.ndarray]] = {
    "iq4_nl": quantize_iq4_nl,
    "iq4_xs": quantize_iq4_xs,
    "iq3_s": quantize_iq3_s,
    "iq3_xxs": quantize_iq3_xxs,
    "iq2_s": quantize_iq2_s,
    "iq2_xs": quantize_iq2_xs,
    "iq2_xxs": quantize_iq2_xxs,
    "iq1_s": quantize_iq1_s,
    "iq1_m": quantize_iq1_m,
}
"""Type name → ``quantize(rows, imatrix=None)``."""
