"""The 32-element legacy types (q4_0, q4_1, q5_0, q5_1) with an importance matrix, in numpy,
byte-identical to ggml's ``quantize_row_qN_M_impl``.

Without an importance matrix ggml quantises these with the ``_ref`` rounding that gguf-py
reproduces (``gguf.quants``), and q8_0 ignores the matrix altogether. With one, each 32-element
block gets a weighted fit instead: the weight of element ``j`` is ``imatrix[j]·sqrt(σ² + x_j²)``,
σ² the row's mean square, and

* q4_0 / q5_0: ``make_qx_quants`` — symmetric levels ``-8..7`` (``-16..15``), the best of 19 scales
  around ``max/-8`` by weighted least squares;
* q4_1 / q5_1: ``make_qkx3_quants`` — levels ``0..15`` (``0..31``) over ``[min, max]``, 37 trial
  scales refined by a weighted least-squares fit of scale and minimum.

The levels are the search's own (no second rounding against the f16 scale, unlike K-quants). The
exactness rules are those of :mod:`.kquants` (C's float32 operations in C's order; sums taken
element-major so that they run left to right); its search routines are shared.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from . import kquants as kq

__all__ = ["LEGACY_WEIGHTED", "TYPE_SIZES", "quantize_weighted"]

QK = 32
TYPE_SIZES = {"q4_0": 18, "q4_1": 20, "q5_0": 22, "q5_1": 24}
ROWS_PER_CHUNK_ELEMENTS = 1 << 18
"""Elements quantised together (a chunk is whole rows: σ² is a per-row statistic)."""

_f32 = np.float32


def _weights(rows: np.ndarray, qw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Element-major data ``(32, rows·nb)`` and its weights ``qw·sqrt(σ²_row + x²)``."""
    r, n = rows.shape
    sigma2 = kq._block_sumsq(rows) / _f32(n)  # sum_x2/n_per_row
    x = kq._element_major(rows, QK)
    q = kq._element_major_as(np.broadcast_to(qw, (r, n)), QK, "qw")
    return x, kq._imatrix_weights(x, q, np.repeat(sigma2, n // QK))


def _nibbles(L: np.ndarray) -> np.ndarray:
    """``qs[j] = L[j] | L[j+16] << 4`` (low four bits) for block-major levels ``(B, 32)``."""
    return ((L[:, :16] & 0xF) | ((L[:, 16:] & 0xF) << 4)).astype(np.uint8)


def _high_bits(L: np.ndarray) -> np.ndarray:
    """q5's ``qh``: bit 4 of level ``j`` at bit ``j`` of a little-endian uint32."""
    bits = ((L >> 4) & 1).astype(np.uint32) << np.arange(QK, dtype=np.uint32)
    return np.bitwise_or.reduce(bits, axis=1).astype("<u4").view(np.uint8).reshape(-1, 4)


def _q40_q50(rows: np.ndarray, qw: np.ndarray, nmax: int) -> np.ndarray:
    x, w = _weights(rows, qw)
    scale, lev, _ = kq._make_qx_rmse1(x, nmax, w)
    L = np.ascontiguousarray(lev.T).astype(np.int32)
    d16 = kq._fp16_bits(scale).view(np.uint8).reshape(-1, 2)
    if nmax == 8:
        return np.concatenate([d16, _nibbles(L)], axis=1)
    return np.concatenate([d16, _high_bits(L), _nibbles(L)], axis=1)


def _q41_q51(rows: np.ndarray, qw: np.ndarray, nmax: int) -> np.ndarray:
    x, w = _weights(rows, qw)
    scale, the_min, lev = kq._make_qkx2(x, w, nmax, -0.9, 0.05, 36, False)
    L = np.ascontiguousarray(lev.T).astype(np.int32)
    d16 = kq._fp16_bits(scale).view(np.uint8).reshape(-1, 2)
    m16 = kq._fp16_bits(-the_min).view(np.uint8).reshape(-1, 2)
    if nmax == 15:
        return np.concatenate([d16, m16, _nibbles(L)], axis=1)
    return np.concatenate([d16, m16, _high_bits(L), _nibbles(L)], axis=1)


_CHUNKS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "q4_0": lambda r, w: _q40_q50(r, w, 8),
    "q5_0": lambda r, w: _q40_q50(r, w, 16),
    "q4_1": lambda r, w: _q41_q51(r, w, 15),
    "q5_1": lambda r, w: _q41_q51(r, w, 31),
}


def quantize_weighted(name: str, rows: np.ndarray, imatrix: np.ndarray) -> np.ndarray:
    """Quantise float32 rows ``(..., n)`` (``n % 32 == 0``) to ``name`` blocks with the importance
    matrix ``imatrix`` (``n`` weights, one per column), as ``ggml_quantize_chunk`` does."""
    rows = np.asarray(rows)
    n = rows.shape[-1]
    if n % QK:
        raise ValueError(f"row length {n} is not a multiple of the block size {QK}")
    qw = kq.check_imatrix(imatrix, n)
    flat = np.ascontiguousarray(rows, dtype=_f32).reshape(-1, n)
    ts = TYPE_SIZES[name]
    out = np.empty((flat.shape[0], n // QK * ts), np.uint8)
    per = max(1, ROWS_PER_CHUNK_ELEMENTS // n)
    fn = _CHUNKS[name]
    with kq.scratch_scope():
        for r0 in range(0, flat.shape[0], per):
            r1 = min(r0 + per, flat.shape[0])
            out[r0:r1] = fn(flat[r0:r1], qw).reshape(r1 - r0, -1)
    return out.reshape(*rows.shape[:-1], n // QK * ts)


LEGACY_WEIGHTED = tuple(TYPE_SIZES)
