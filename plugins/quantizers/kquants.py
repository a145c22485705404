"""K-quant quantisers (Q2_K … Q6_K) in numpy, byte-identical to llama.cpp's reference code.

Why byte-identical and not merely "close": a GGUF written by lmconv should be the
file ``llama-quantize`` would have written, so that users can diff, cache and
trust it, and so that our tests can compare bytes instead of error budgets.
The reference is ``quantize_row_qN_K_ref`` in ggml's ``ggml-quants.c`` (the path
``ggml_quantize_chunk`` takes when no importance matrix is given).

How it stays exact while running over whole tensors at once:

* Every value is a ``np.float32`` and every operation is the same IEEE single
  operation, in the same order, that the C code does (ggml-base is built
  without FMA contraction or fast-math, so C does one rounding per operator).
* C accumulates sums left to right (``s = 0; s += a[i]``). numpy's ``sum``
  is pairwise, so instead the data of a chunk are laid out *element-major*:
  an array ``(n, S)`` whose row ``i`` holds element ``i`` of each of ``S``
  sub-blocks. A sum is then ``n`` row additions, each one vectorised across
  all sub-blocks and done in C's order.
* ``nearest_int`` adds 1.5·2²³ and reads the mantissa bits. For
  ``|f| <= 4194303`` that is round-half-to-even, i.e. ``np.rint``; we take that
  fast path only when a per-sub-block bound proves every element is in range,
  and otherwise do the same bit trick as C (which also gives C's results for
  inf, NaN and huge values).
* A scale search keeps the *scale factor* of the best step, not the levels: the
  levels are a pure function of it, so they are recomputed once at the end.
* fp16 conversion is numpy's float32→float16 cast (round-to-nearest-even, the
  same as ggml's ``GGML_FP32_TO_FP16``), with NaN spelt as ggml spells it.

Finite values of any magnitude are exact, subnormals and values near the
float32 limit included (overflow to inf inside the sums is replayed), and so are
±inf and the ordinary quiet NaNs (C's comparison order with NaN is mirrored).
Only NaNs carrying a custom payload are not promised: which operand's payload
survives an x86 operation depends on the operand order the compiler picked.

Dequantisation is gguf-py's ``gguf.quants.dequantize``; the bytes returned here
are laid out as ``gguf.quants.quant_shape_to_byte_shape`` expects.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

__all__ = [
    "QK_K",
    "TYPE_SIZES",
    "KQUANTIZERS",
    "quantize_q2_K",
    "quantize_q3_K",
    "quantize_q4_K",
    "quantize_q5_K",
    "quantize_q6_K",
]

QK_K = 256
"""Elements in one K-quant super-block."""

TYPE_SIZES: dict[str, int] = {"q2_K": 84, "q3_K": 110, "q4_K": 144, "q5_K": 176, "q6_K": 210}
"""Bytes per super-block (``sizeof(block_qN_K)`` in ggml-common.h)."""

CHUNK_BLOCKS = 1024
"""Super-blocks processed together: bounds the temporaries (a few MB each) while
keeping numpy's per-call overhead small against the work per call."""

_CHUNK_FACTOR: dict[str, int] = {}
"""Per-type multiples of CHUNK_BLOCKS (none at present). q3_K's descent makes a fixed number of
small numpy calls per chunk whatever its size, but bigger chunks do not pay for that: their
temporaries fall out of cache and past the allocator's reuse (fresh pages fault in again, costly
on VMs); without an importance matrix its descent runs for several chunks at once instead
(:func:`_q3_K_rows`)."""

_f32 = np.float32
_MAGIC = _f32(12582912.0)  # 1.5 * 2**23, nearest_int's rounding constant
_SAFE = 4194303.0  # nearest_int's documented input range; rint agrees inside it
_GROUP_MAX_EPS = _f32(1e-15)
_ZERO = _f32(0.0)


# --------------------------------------------------------------------------- helpers

_scratch = threading.local()


def _buf(key: str, like: np.ndarray | tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
    """An uninitialised scratch array, reused from chunk to chunk of one quantise call.

    Why: the per-chunk temporaries are megabytes, and glibc may hand such blocks
    back to the OS when they are freed, so fresh arrays can page-fault again on
    every chunk. Outside :func:`_run` (no pool installed) this is a plain
    ``np.empty``. ``key`` names one use; two arrays alive at once need two keys.
    """
    shape = like.shape if isinstance(like, np.ndarray) else like
    pool: dict[str, np.ndarray] | None = getattr(_scratch, "pool", None)
    n = 1
    for d in shape:
        n *= int(d)
    if pool is None:
        return np.empty(shape, dtype)
    b = pool.get(key)
    if b is None or b.dtype != dtype or b.size < n:
        b = np.empty(n, dtype)
        pool[key] = b
    return b[:n].reshape(shape)


def _nearest_int(f: np.ndarray) -> np.ndarray:
    """ggml's ``nearest_int`` for any float32 input (int32 out), bit for bit."""
    v = (np.asarray(f, dtype=_f32) + _MAGIC).view(np.int32)
    v &= 0x7FFFFF
    v -= 0x400000
    return v


def _clip(a: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """In-place ``MAX(lo, MIN(hi, a))``. ``np.clip`` costs more per call on small arrays but is one
    pass, and several times faster than ``np.maximum`` + ``np.minimum`` with a scalar on chunk-sized
    ones (same results, NaN included: both propagate it)."""
    lo_, hi_ = a.dtype.type(lo), a.dtype.type(hi)
    if a.size >= 1024:
        np.clip(a, lo_, hi_, out=a)
    else:
        np.maximum(a, lo_, out=a)
        np.minimum(a, hi_, out=a)
    return a


def _round_clamp(f: np.ndarray, lo: int, hi: int, safe: bool) -> np.ndarray:
    """``MAX(lo, MIN(hi, nearest_int(f)))`` as float32, in place on ``f`` when ``safe``.

    ``safe`` must only be True when every element is known to satisfy
    ``|f| <= 4194303`` (not NaN): then nearest_int is round-half-even and clamping
    to integer bounds commutes with rounding.
    """
    if safe:
        _clip(f, lo, hi)
        np.rint(f, out=f)
        return f
    v = _nearest_int(f)
    _clip(v, lo, hi)
    return v.astype(_f32)


def _is_safe(bound: np.ndarray) -> bool:
    """True when all per-sub-block magnitude bounds allow the rint fast path (NaN → False)."""
    return bool(np.all(np.abs(bound) <= _SAFE))


def _all_safe(a: np.ndarray) -> bool:
    """:func:`_is_safe` for every element of ``a`` at once: two whole-array reductions instead of
    ``|a|`` and a per-column maximum (NaN → False: it propagates through both)."""
    return bool(np.max(a) <= _SAFE) and bool(np.min(a) >= -_SAFE)


def _seqsum_loop(a: np.ndarray, from_zero: bool = True) -> np.ndarray:
    acc = a[0] + _ZERO if from_zero else a[0].copy()
    for i in range(1, a.shape[0]):
        np.add(acc, a[i], out=acc)
    return acc


def _reduce_is_sequential() -> bool:
    """Whether ``np.add.reduce(a, axis=0)`` of a C-contiguous ``(n, S)`` array adds rows in order.

    It does in every numpy we know of (pairwise summation applies only along the contiguous
    axis, so an axis-0 reduction is ``acc += a[i]`` row after row), which makes it a single
    call instead of ``n``. Checked once on columns whose sum depends on the order: a pairwise
    or 8-accumulator sum would give 0 or 2 where left to right gives 1 (the +1s vanish next
    to 2**25 only when added to it)."""
    col = np.zeros(32, _f32)
    col[0], col[1], col[2], col[3] = 2.0**25, 1.0, -(2.0**25), 1.0
    col[9], col[17] = 1.0, -1.0
    a = np.repeat(col[:, None], 3, axis=1)
    ok = all(np.array_equal(np.add.reduce(a, axis=0, **kw).view(np.uint32), _seqsum_loop(a, fz).view(np.uint32))
             for kw, fz in (({"initial": _ZERO}, True), ({}, False)))
    return ok and float(np.add.reduce(a, axis=0)[0]) == float(_seqsum_loop(a, False)[0])


_SEQUENTIAL_REDUCE = _reduce_is_sequential()


def _seqsum(a: np.ndarray, from_zero: bool = True) -> np.ndarray:
    """Left-to-right float32 sum over axis 0 of an element-major ``(n, S)`` array.

    ``from_zero`` mirrors C's ``float s = 0; for (...) s += a[i];`` (the ``+ 0``
    only matters for the sign of an all-``-0.0`` sum); without it the sum starts
    from ``a[0]`` as in ``float s = a[0]; for (i = 1; ...)``. One ``np.add.reduce``
    call when numpy reduces axis 0 in row order (checked at import), else a row loop.
    """
    # (a single column would make axis 0 the contiguous one, which numpy sums pairwise)
    if _SEQUENTIAL_REDUCE and a.ndim == 2 and a.shape[1] > 1 and a.flags.c_contiguous:
        if from_zero:
            return np.add.reduce(a, axis=0, initial=_ZERO)
        # numpy starts an add-reduction from +0, C from a[0]: the same sum, except that an
        # all--0.0 column sums to +0 here and to -0 in C. Zero sums are rare; redo those in C's way.
        res = np.add.reduce(a, axis=0)
        zero = res == 0
        if zero.any():
            cols = np.flatnonzero(zero)
            res[cols] = _seqsum_loop(a[:, cols], False)
        return res
    return _seqsum_loop(a, from_zero)


def _fp16_bits(v: np.ndarray) -> np.ndarray:
    """GGML_FP32_TO_FP16 as uint16 bits: round-to-nearest-even, overflow → inf, NaN → ±0x7E00."""
    v = np.asarray(v, dtype=_f32)
    bits = v.astype(np.float16).view(np.uint16)
    nan = np.isnan(v)
    if nan.any():
        sign = (v.view(np.uint32) >> 16).astype(np.uint16) & np.uint16(0x8000)
        bits = np.where(nan, sign | np.uint16(0x7E00), bits)
    return bits


def _fp16_to_f32(bits: np.ndarray) -> np.ndarray:
    """GGML_FP16_TO_FP32 (exact widening)."""
    return bits.view(np.float16).astype(_f32)


def _element_major(blocks: np.ndarray, n: int) -> np.ndarray:
    """``(B, 256)`` super-blocks → ``(n, B*256/n)``: row i = element i of every sub-block."""
    src = blocks.reshape(-1, n).T
    out = _buf("x", src.shape)
    np.copyto(out, src)
    return out


def _block_major(lev: np.ndarray, nblocks: int) -> np.ndarray:
    """Inverse of :func:`_element_major` for the integer levels, as uint8 ``(B, 256)``."""
    return np.ascontiguousarray(lev.T.astype(np.uint8)).reshape(nblocks, QK_K)


def _pack_2bit(L: np.ndarray) -> np.ndarray:
    """qs[32h + l] = L[128h+l] | L[128h+l+32]<<2 | L[128h+l+64]<<4 | L[128h+l+96]<<6 (q2_K, q3_K)."""
    Lb = L.reshape(L.shape[0], 2, 4, 32)
    qs = Lb[:, :, 0, :] | (Lb[:, :, 1, :] << 2) | (Lb[:, :, 2, :] << 4) | (Lb[:, :, 3, :] << 6)
    return qs.reshape(L.shape[0], 64)


def _pack_scales_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """The 12 scale bytes of q4_K/q5_K: eight 6-bit scales and eight 6-bit mins (get_scale_min_k4's inverse)."""
    out = np.empty((ls.shape[0], 12), np.uint8)
    out[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    out[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    return out


def _prepare(rows: np.ndarray) -> tuple[np.ndarray, tuple[int, ...], int]:
    """Check and flatten ``(..., n)`` rows into ``(nblocks, 256)`` float32 super-blocks."""
    rows = np.asarray(rows)
    if rows.ndim == 0:
        raise ValueError("expected rows of shape (..., n) with n % 256 == 0, got a scalar")
    n = rows.shape[-1]
    if n % QK_K:
        raise ValueError(f"row length {n} is not a multiple of the K-quant block size {QK_K}")
    x = np.ascontiguousarray(rows, dtype=_f32)
    return x.reshape(-1, QK_K), rows.shape[:-1], n // QK_K


@contextmanager
def scratch_scope() -> Iterator[None]:
    """Scratch arrays (:func:`_buf`) for one quantise call on this thread, NaN/overflow warnings off.

    The scratch arrays outlive the call, one set per thread: a conversion quantises a model
    piece by piece on a few long-lived threads, and fresh megabyte arrays for every piece
    would page-fault (kernel time) each time glibc returned them to the OS. A nested call
    (one quantiser using another's routines) gets a set of its own."""
    outer = getattr(_scratch, "pool", None)
    if outer is None:
        _scratch.pool = _scratch.kept = getattr(_scratch, "kept", None) or {}
    else:
        _scratch.pool = {}
    try:
        with np.errstate(all="ignore"):  # overflow/NaN are part of the replayed C arithmetic
            yield
    finally:
        _scratch.pool = outer


def _run(rows: np.ndarray, name: str, chunk_fn: Callable[..., np.ndarray], imatrix: np.ndarray | None = None) -> np.ndarray:
    """Quantise ``rows`` chunk by chunk of super-blocks with ``chunk_fn`` → uint8 block bytes.

    With an importance matrix (``imatrix``: one weight per column of a row, as ggml takes it)
    ``chunk_fn(blocks, qw)`` gets the weights of each block's columns too."""
    blocks, lead, nb_row = _prepare(rows)
    qw_all = None
    if imatrix is not None:
        qw_all = check_imatrix(imatrix, nb_row * QK_K).reshape(nb_row, QK_K)
    ts = TYPE_SIZES[name]
    out = np.empty((blocks.shape[0], ts), np.uint8)
    with scratch_scope():
        step = CHUNK_BLOCKS * _CHUNK_FACTOR.get(name, 1)
        for start in range(0, blocks.shape[0], step):
            stop = min(start + step, blocks.shape[0])
            if qw_all is None:
                out[start:stop] = chunk_fn(blocks[start:stop])
            else:
                out[start:stop] = chunk_fn(blocks[start:stop], qw_all[np.arange(start, stop) % nb_row])
    return out.reshape(*lead, nb_row * ts)


# --------------------------------------------------------------------------- scale searches


def _make_qkx2(
    x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int, use_mad: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``make_qkx2_quants`` for every sub-block of an element-major chunk ``x``/``w`` ``(n, S)``.

    Fits ``x ≈ scale·L − the_min`` with levels ``L`` in ``0..nmax``, trying
    ``nstep+1`` candidate inverse scales and keeping the one with the least
    weighted error. Returns ``(scale, the_min, L)``, ``L`` float32 ``(n, S)``.
    """
    fmax = _f32(nmax)
    # C: min = max = x[0], then `if (x[i] < min) min = x[i]` (likewise max): later
    # NaNs never win a comparison, a NaN in x[0] is never replaced
    xmin = np.fmin.reduce(x, axis=0)
    mx = np.fmax.reduce(x, axis=0)
    nan0 = np.isnan(x[0])
    if nan0.any():
        xmin[nan0] = x[0, nan0]
        mx[nan0] = x[0, nan0]
    # a zero extreme keeps the sign of the first zero (C replaces min/max only when strictly beyond):
    # it shows when the minimum is stored as it is (q4_1/q5_1's m with an importance matrix)
    for ext in (xmin, mx):
        zero = ext == 0
        if zero.any():
            cols = np.flatnonzero(zero)
            first = np.argmax(x[:, cols] == 0, axis=0)
            ext[cols] = x[first, cols]
    x_has_nan = bool(np.isnan(np.add.reduce(x, axis=0)).any())  # NaN elements escape min/max bounds
    mn = np.where(xmin > 0, _ZERO, xmin)  # if (min > 0) min = 0
    sum_w = _seqsum(w, from_zero=False)  # float sum_w = weights[0]; ...
    tmp = _buf("qkx2.tmp", x)
    sum_x = _seqsum(np.multiply(w, x, out=tmp), from_zero=False)  # float sum_x = sum_w * x[0]; ...
    degenerate = mx == mn
    if degenerate.any():
        mn = np.where(degenerate, mx - _f32(1), mn)  # any finite stand-in; overwritten below

    def levels(iscale: np.ndarray, shift: np.ndarray, out: np.ndarray) -> np.ndarray:
        # nearest_int(iscale*(x[i] - min)) clamped to 0..nmax. C's `min` moves during the
        # search (it becomes the best fit's min), so x - min is not always >= 0.
        np.subtract(x, shift, out=out)
        np.multiply(out, iscale, out=out)
        # every element lies between these two (rounding is monotone; iscale may be < 0)
        a = iscale * (mx - shift)
        b = iscale * (xmin - shift)
        hi = np.maximum(a, b)
        lo = np.minimum(a, b)
        if not x_has_nan and _is_safe(hi) and _is_safe(lo):
            if np.all(hi < fmax + _f32(0.5)) and np.all(lo >= _f32(-0.5)):
                return np.rint(out, out=out)  # rounds into 0..nmax by itself
            return _round_clamp(out, 0, nmax, True)
        out[...] = _round_clamp(out, 0, nmax, False)
        return out

    def error(scale: np.ndarray, lev: np.ndarray, shift: np.ndarray) -> np.ndarray:
        # diff = scale*L + min - x ; err += w * (|diff| or diff*diff)
        np.multiply(lev, scale, out=tmp)
        np.add(tmp, shift, out=tmp)
        np.subtract(tmp, x, out=tmp)
        if use_mad:
            np.abs(tmp, out=tmp)
        else:
            np.multiply(tmp, tmp, out=tmp)
        np.multiply(tmp, w, out=tmp)
        return _seqsum(tmp)

    iscale = fmax / (mx - mn)
    scale = _f32(1) / iscale
    lev = levels(iscale, mn, _buf("qkx2.lev", x))
    best_error = error(scale, lev, mn)
    best_iscale = iscale
    best_shift = mn  # the min the kept levels were computed against
    cur_min = mn

    wl = _buf("qkx2.wl", x)
    prod = _buf("qkx2.prod", x)
    for step in range(nstep + 1):
        factor = _f32(_f32(rmin) + _f32(rdelta) * _f32(step)) + fmax
        isc = factor / (mx - cur_min)
        lev = levels(isc, cur_min, lev)
        np.multiply(w, lev, out=wl)
        sum_l = _seqsum(wl)
        np.multiply(wl, lev, out=prod)
        sum_l2 = _seqsum(prod)
        np.multiply(wl, x, out=prod)
        sum_xl = _seqsum(prod)
        D = sum_w * sum_l2 - sum_l * sum_l
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
        pos_min = this_min > 0
        if pos_min.any():
            this_min[pos_min] = 0
            this_scale[pos_min] = sum_xl[pos_min] / sum_l2[pos_min]
        cur_error = error(this_scale, lev, this_min)
        better = (D > 0) & (cur_error < best_error)
        if better.any():
            best_error = np.where(better, cur_error, best_error)
            scale = np.where(better, this_scale, scale)
            best_iscale = np.where(better, isc, best_iscale)
            best_shift = np.where(better, cur_min, best_shift)
            cur_min = np.where(better, this_min, cur_min)

    lev = levels(best_iscale, best_shift, lev)
    if degenerate.any():
        lev[:, degenerate] = 0
        scale = np.where(degenerate, _ZERO, scale)
        cur_min = np.where(degenerate, mx, cur_min)
    return scale, -cur_min, lev


def _abs_max(x: np.ndarray, scratch: bool = False) -> tuple[np.ndarray, np.ndarray, bool]:
    """:func:`_abs_max_exact`'s result from two reductions when no column holds a NaN or both
    ``+a`` and ``-a`` at its largest magnitude ``a`` (then the first of them would decide): the
    largest magnitude is ``max(max(x), -min(x))`` and its value the one of the two that reaches it."""
    hi = np.maximum.reduce(x, axis=0)  # NaN-propagating: a NaN anywhere in a column shows here
    lo = np.minimum.reduce(x, axis=0)
    neg = -lo
    amax = np.maximum(hi, neg)
    amax += _ZERO  # never negative; an all-zero column gives +0 as max(|x|) does
    if np.isnan(amax).any():
        return _abs_max_exact(x, scratch)
    tie = (hi == neg) & (hi > 0)
    if tie.any():
        return _abs_max_exact(x, scratch)
    mx = np.where(hi >= neg, hi, lo)
    return amax, np.where(amax > 0, mx, _ZERO), False


def _abs_max_exact(x: np.ndarray, scratch: bool = False) -> tuple[np.ndarray, np.ndarray, bool]:
    """Per column: ``(amax, max)`` as C finds them with ``if (fabsf(v) > amax) {amax = fabsf(v); max = v;}``
    from ``amax = max = 0``: the first largest magnitude, NaNs never chosen, ``(0, 0)`` if none is > 0.
    Also says whether ``x`` holds any NaN (which ``amax`` then does not bound)."""
    n = x.shape[0]
    ax = np.abs(x, out=_buf("absmax.ax", x)) if scratch else np.abs(x)
    nan = np.isnan(ax, out=_buf("absmax.nan", x, np.bool_)) if scratch else np.isnan(ax)
    has_nan = bool(nan.any())
    if has_nan:
        ax[nan] = 0
    amax = np.maximum.reduce(ax, axis=0)
    # first row where |x| == amax: the largest of (n - i) over the rows that reach it
    eq = np.equal(ax, amax, out=_buf("absmax.nan", x, np.bool_)) if scratch else ax == amax
    rank = np.multiply(eq, np.arange(n, 0, -1, dtype=np.uint8)[:, None],
                       out=_buf("absmax.rank", x, np.uint8) if scratch else None)
    first = (n - np.maximum.reduce(rank, axis=0)).astype(np.intp)
    mx = np.take_along_axis(x, first[None, :], axis=0)[0]
    return amax, np.where(amax > 0, mx, _ZERO), has_nan


def _make_qx_rmse1(x: np.ndarray, nmax: int, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``make_qx_quants(n, nmax, x, L, rmse_type=1, weights)`` over an element-major chunk.

    Symmetric levels ``-nmax..nmax-1``; tries 19 inverse scales around ``nmax/max``
    and keeps the best weighted least-squares fit (weights x² when none are given).
    Returns ``(scale, L+nmax, amax)``.
    """
    amax, mx, has_nan = _abs_max(x, scratch=True)
    zero = amax < _GROUP_MAX_EPS
    mxs = np.where(zero, _f32(1), mx)
    w = np.multiply(x, x, out=_buf("qx.w", x)) if weights is None else weights
    wx = np.multiply(w, x, out=_buf("qx.wx", x))
    fmax = _f32(nmax)
    lev = _buf("qx.lev", x)
    wl = _buf("qx.wl", x)

    def levels(iscale: np.ndarray) -> np.ndarray:
        np.multiply(x, iscale, out=lev)
        return _round_clamp_into(lev, -nmax, nmax - 1, not has_nan and _is_safe(iscale * mxs))

    def sums() -> tuple[np.ndarray, np.ndarray]:
        np.multiply(wx, lev, out=wl)
        sumlx = _seqsum(wl)
        np.multiply(w, lev, out=wl)
        np.multiply(wl, lev, out=wl)
        return sumlx, _seqsum(wl)

    iscale = -fmax / mxs
    levels(iscale)
    sumlx, suml2 = sums()
    scale = np.where(suml2 != 0, sumlx / suml2, _ZERO)
    best = scale * sumlx
    best_iscale = iscale
    for step in range(-9, 10):
        if step == 0:
            continue
        isc = -(fmax + _f32(0.1) * _f32(step)) / mxs
        levels(isc)
        sumlx, suml2 = sums()
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        if better.any():
            scale = np.where(better, sumlx / suml2, scale)
            best = np.where(better, scale * sumlx, best)
            best_iscale = np.where(better, isc, best_iscale)
    levels(best_iscale)
    lev += fmax
    if zero.any():
        lev[:, zero] = 0
        scale = np.where(zero, _ZERO, scale)
    return scale, lev, amax


def _round_clamp_into(buf: np.ndarray, lo: int, hi: int, safe: bool) -> np.ndarray:
    """:func:`_round_clamp` whose result always lands in ``buf``."""
    r = _round_clamp(buf, lo, hi, safe)
    if r is not buf:
        buf[...] = r
    return buf


_Q3_BIAS = 0x400000  # nearest_int's mantissa bias: levels are kept as l + bias (see _make_q3)


def _q3_candidates(x: np.ndarray, lev_b: np.ndarray, slx: np.ndarray, sl2: np.ndarray,
                   scratch: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Levels (biased) that make_q3_quants' descent would propose, and whether it may take them.

    ``slx``/``sl2`` are the running sums with the element's own term removed;
    returns ``(new_b, candidate)`` where candidate = ``slx > 0 and new_l != L``.
    """
    q = np.multiply(x, sl2, out=_buf("q3.q", sl2) if scratch else None)
    np.divide(q, slx, out=q)
    q += _MAGIC
    new_b = q.view(np.int32)
    new_b &= 0x7FFFFF  # nearest_int(q) + bias, for any q (also inf/NaN/huge)
    _clip(new_b, _Q3_BIAS - 4, _Q3_BIAS + 3)
    cand = np.not_equal(new_b, lev_b, out=_buf("q3.cand", new_b, np.bool_) if scratch else None)
    cand &= np.greater(slx, 0, out=_buf("q3.pos", slx, np.bool_) if scratch else None)
    return new_b, cand


def _q3_pass(x: np.ndarray, lev_b: np.ndarray, p1: np.ndarray, p2: np.ndarray,
             sumlx: np.ndarray, suml2: np.ndarray) -> np.ndarray:
    """One exact descent pass (elements in order) over the columns given; updates in place.

    ``p1[i] = w*x[i]*L[i]`` and ``p2[i] = w*L[i]*L[i]`` are each element's terms of
    ``sumlx``/``suml2``, kept so removing an element's term is one subtraction.
    Returns which sub-blocks changed.
    """
    changed = np.zeros(sumlx.shape[0], bool)
    for i in range(x.shape[0]):
        slx = sumlx - p1[i]
        sl2 = suml2 - p2[i]
        new_b, cand = _q3_candidates(x[i], lev_b[i], slx, sl2)
        idx = np.flatnonzero(cand)
        if idx.size == 0:
            continue
        nl = (new_b[idx] - _Q3_BIAS).astype(_f32)
        xi = x[i, idx]
        wi = xi * xi
        t1 = (wi * xi) * nl  # slx += w*x[i]*new_l
        t2 = (wi * nl) * nl  # sl2 += w*new_l*new_l
        s1 = slx[idx] + t1
        s2 = sl2[idx] + t2
        c1, c2 = sumlx[idx], suml2[idx]
        ok = (s2 > 0) & ((s1 * s1) * c2 > (c1 * c1) * s2)
        if not ok.any():
            continue
        acc = idx[ok]
        lev_b[i, acc] = new_b[acc]
        p1[i, acc] = t1[ok]
        p2[i, acc] = t2[ok]
        sumlx[acc] = s1[ok]
        suml2[acc] = s2[ok]
        changed[acc] = True
    return changed


def _make_q3(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``make_q3_quants(16, 4, x, L, do_rmse=true)`` over an element-major chunk.

    Start from ``nearest_int(-4/max · x)``, then up to five passes of coordinate
    descent, each element in turn, accepting a level change when it improves the
    x²-weighted fit. Level changes are rare, which the vectorisation exploits:

    * a pass is first screened for all sub-blocks at once with the sums as they
      stand at its start. A sub-block with no candidate there changes nothing
      in the pass (its sums never move, so the screen *is* the pass), and so
      nothing in any later pass either: it is finished;
    * the rest get the exact element-by-element pass, and only those that
      changed go on to the next one.

    This is the one-chunk composition of the steps: :func:`_q3_start` (start and first screen),
    :func:`_q3_descend` (the passes over the sub-blocks still moving) and :func:`_q3_levels`;
    quantize_q3_K (:func:`_q3_K_rows`) runs the descent once for the working sets of several
    chunks, and recomputes levels only where the final requantisation keeps them.
    Returns ``(scale, L+4, amax)``.
    """
    st = _q3_start(x)
    g1, g2 = st.sumlx[st.where], st.suml2[st.where]
    _q3_descend(st.gx, st.gl, g1, g2)
    st.sumlx[st.where] = g1
    st.suml2[st.where] = g2
    return st.scale(), _q3_levels(x, st), st.amax


class _Q3State:
    """One chunk's make_q3_quants after its first screen: the sums of every sub-block, and the
    working set (sub-blocks ``where``, their data ``gx`` and biased levels ``gl``) of those the
    descent may still change. Levels are not kept for the rest: they are the starting ones."""

    def __init__(self, amax: np.ndarray, zero: np.ndarray, iscale: np.ndarray, safe: bool, sumlx: np.ndarray,
                 suml2: np.ndarray, where: np.ndarray, gx: np.ndarray, gl: np.ndarray) -> None:
        self.amax, self.zero, self.iscale, self.safe = amax, zero, iscale, safe
        self.sumlx, self.suml2, self.where, self.gx, self.gl = sumlx, suml2, where, gx, gl

    def scale(self) -> np.ndarray:
        scale = np.where(self.suml2 > 0, self.sumlx / self.suml2, _ZERO)
        return np.where(self.zero, _ZERO, scale) if self.zero.any() else scale


def _q3_start(x: np.ndarray) -> _Q3State:
    """The starting levels and sums of :func:`_make_q3`, and the first pass's screen over the chunk."""
    nmax = 4
    amax, mx, has_nan = _abs_max(x, scratch=True)
    zero = amax < _GROUP_MAX_EPS
    mxs = np.where(zero, _f32(1), mx)
    iscale = _f32(-nmax) / mxs
    safe = not has_nan and _is_safe(iscale * mxs)
    lev = np.multiply(x, iscale, out=_buf("q3.lev", x))
    _round_clamp_into(lev, -nmax, nmax - 1, safe)
    w = np.multiply(x, x, out=_buf("q3.p2", x))
    p1 = np.multiply(w, x, out=_buf("q3.p1", x))
    p1 *= lev  # w*x[i]*L[i], each element's share of sumlx
    p2 = w
    p2 *= lev
    p2 *= lev  # w*L[i]*L[i], its share of suml2
    sumlx = _seqsum(p1)
    suml2 = _seqsum(p2)
    lev_b = _buf("q3.lev_b", x, np.int32)
    np.copyto(lev_b, lev, casting="unsafe")
    lev_b += _Q3_BIAS
    # the first screen runs over the whole chunk in place; all-zero sub-blocks keep L = 0 and never
    # enter the descent
    _, cand = _q3_candidates(x, lev_b, np.subtract(sumlx, p1, out=p1), np.subtract(suml2, p2, out=p2), scratch=True)
    live_mask = np.logical_or.reduce(cand, axis=0)
    if zero.any():
        live_mask &= ~zero
    where = np.flatnonzero(live_mask)
    # the sub-blocks still moving (a fifth or so) are gathered with np.take, several times
    # faster than a[:, cols] fancy indexing
    return _Q3State(amax, zero, iscale, safe, sumlx, suml2, where,
                    np.take(x, where, axis=1), np.take(lev_b, where, axis=1))


def _q3_descend(gx: np.ndarray, gl: np.ndarray, g1: np.ndarray, g2: np.ndarray) -> None:
    """The five descent passes of :func:`_make_q3` over a working set whose first screen is done:
    data ``gx``, biased levels ``gl`` ``(16, M)``, sums ``g1``/``g2`` ``(M,)``, all updated in place.

    The set shrinks from pass to pass (to the sub-blocks that changed, then passed the screen);
    the shrunk arrays are copies, so their results are written back to the given ones."""
    # each element's terms p1 = w·x·L, p2 = w·L·L (w = x²), as _q3_start computed them
    p2 = np.multiply(gx, gx, out=_buf("q3.dp2", gx))
    p1 = np.multiply(p2, gx, out=_buf("q3.dp1", gx))
    lf = np.subtract(gl, _Q3_BIAS, out=_buf("q3.dlf", gx), casting="unsafe")  # exact: |l| <= 4
    p1 *= lf
    p2 *= lf
    p2 *= lf
    pos = np.arange(gx.shape[1])  # the working set's columns in the given arrays
    x, lev, s1, s2 = gx, gl, g1, g2
    shrinks = 0

    def shrink(k: np.ndarray) -> tuple[np.ndarray, ...]:
        # np.take into scratch arrays (fresh megabyte arrays would fault in page by page), two
        # alternating sets so that a source is never its own destination
        nonlocal shrinks
        shrinks += 1
        return tuple(np.take(a, k, axis=1, mode="clip",
                             out=_buf(f"q3.ws{shrinks % 2}.{j}", (a.shape[0], k.size), a.dtype.type))
                     for j, a in enumerate((x, lev, p1, p2)))

    for it in range(5):
        if pos.size == 0:
            break
        if it:
            _, cand = _q3_candidates(x, lev, np.subtract(s1, p1, out=_buf("q3.dslx", p1)),
                                     np.subtract(s2, p2, out=_buf("q3.dsl2", p2)), scratch=True)
            keep = np.logical_or.reduce(cand, axis=0)
            if not keep.any():
                break
            if not keep.all():
                k = np.flatnonzero(keep)
                pos, s1, s2 = pos[k], s1[k], s2[k]
                x, lev, p1, p2 = shrink(k)
        changed = _q3_pass(x, lev, p1, p2, s1, s2)
        k = np.flatnonzero(changed)
        if k.size == 0:
            break
        if lev is not gl:
            gl[:, pos[k]] = np.take(lev, k, axis=1)
            g1[pos[k]] = s1[k]
            g2[pos[k]] = s2[k]
        # unchanged sub-blocks are finished; drop them when that shrinks the set noticeably (one
        # left in repeats the pass it just made: the same candidates, all rejected again)
        if k.size < pos.size * 0.8:
            pos, s1, s2 = pos[k], s1[k], s2[k]
            x, lev, p1, p2 = shrink(k)


def _q3_levels(x: np.ndarray, st: _Q3State) -> np.ndarray:
    """The levels ``L+4`` (float32 ``(16, S)``) make_q3_quants ends with: the starting ones,
    recomputed, with the descent's results in the working set, 0 in all-zero sub-blocks."""
    lev = np.multiply(x, st.iscale, out=_buf("q3.lev", x))
    _round_clamp_into(lev, -4, 3, st.safe)
    lev += _f32(4)
    if st.where.size:
        lev[:, st.where] = st.gl - (_Q3_BIAS - 4)
    if st.zero.any():
        lev[:, st.zero] = 0
    return lev


# --------------------------------------------------------------------------- importance weights


def check_imatrix(imatrix: np.ndarray, n: int) -> np.ndarray:
    """The importance matrix of one row of ``n`` columns, as float32 (ValueError for another size)."""
    w = np.ascontiguousarray(imatrix, dtype=_f32).reshape(-1)
    if w.size != n:
        raise ValueError(f"the importance matrix has {w.size} values for rows of {n}")
    return w


def _block_sumsq(blocks: np.ndarray) -> np.ndarray:
    """``float s = 0; for (j) s += x[j]*x[j];`` over each row of ``blocks`` ``(B, n)``, in C's order."""
    t = _buf("sumsq", (blocks.shape[1], blocks.shape[0]))
    np.copyto(t, blocks.T)
    np.multiply(t, t, out=t)
    return _seqsum(t)


def _element_major_as(a: np.ndarray, n: int, key: str) -> np.ndarray:
    """:func:`_element_major` into another scratch array (for weights next to the data)."""
    src = a.reshape(-1, n).T
    out = _buf(key, src.shape)
    np.copyto(out, src)
    return out


def _imatrix_weights(x: np.ndarray, qw: np.ndarray, sigma2: np.ndarray, key: str = "w") -> np.ndarray:
    """``weight[i] = qw[i] * sqrtf(sigma2 + x[i]*x[i])`` (element-major; ``sigma2`` per column)."""
    w = np.multiply(x, x, out=_buf(key, x))
    w += sigma2
    np.sqrt(w, out=w)
    w *= qw
    return w


def _make_qp(x: np.ndarray, w: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """``make_qp_quants(n, nmax, x, L, w)`` over an element-major ``(n, S)``: levels ``0..nmax`` for
    non-negative ``x`` (the scales and mins of a super-block), a 9-step scale search by weighted
    squared error, then up to five passes of coordinate descent in element order. Returns
    ``(scale, L)``, ``L`` int32 holding what C stores in its ``uint8_t`` array."""
    x = np.ascontiguousarray(x, dtype=_f32)
    w = np.ascontiguousarray(w, dtype=_f32)
    n = x.shape[0]
    fn = _f32(nmax)
    with np.errstate(all="ignore"):
        mx = np.maximum(np.max(x, axis=0), _ZERO)  # max = MAX(max, x[i]) from 0
        zero = mx < _GROUP_MAX_EPS
        mxs = np.where(zero, _f32(1), mx)
        iscale = fn / mxs
        lev = (_nearest_int(iscale * x) & 0xFF).astype(_f32)  # stored as uint8_t
        diff = x - (_f32(1) / iscale) * lev
        best_mse = _seqsum((w * diff) * diff)
        best_iscale = iscale
        for step in (-4, -3, -2, -1, 1, 2, 3, 4):
            isc = (_f32(0.1) * _f32(step) + fn) / mxs
            lv = np.minimum(_nearest_int(isc * x), nmax).astype(_f32)
            diff = x - (_f32(1) / isc) * lv
            mse = _seqsum((w * diff) * diff)
            better = mse < best_mse
            best_mse = np.where(better, mse, best_mse)
            best_iscale = np.where(better, isc, best_iscale)
        li = np.minimum(_nearest_int(best_iscale * x), nmax)
        lf = li.astype(_f32)
        wx = w * x
        sumlx = _seqsum(wx * lf)
        suml2 = _seqsum((w * lf) * lf)
        L = li & 0xFF
        for _ in range(5):
            changed = False
            for i in range(n):
                Li = L[i].astype(_f32)
                slx = sumlx - wx[i] * Li
                sl2 = suml2 - (w[i] * Li) * Li
                ok = (slx > 0) & (sl2 > 0)
                if not ok.any():
                    continue
                new_l = np.minimum(_nearest_int((x[i] * sl2) / slx), nmax)
                ok &= new_l != L[i]
                if not ok.any():
                    continue
                nl = new_l.astype(_f32)
                slx = slx + wx[i] * nl
                sl2 = sl2 + (w[i] * nl) * nl
                ok &= (slx * slx) * suml2 > (sumlx * sumlx) * sl2
                if ok.any():
                    L[i] = np.where(ok, new_l & 0xFF, L[i])
                    sumlx = np.where(ok, slx, sumlx)
                    suml2 = np.where(ok, sl2, suml2)
                    changed = True
            if not changed:
                break
        scale = np.where(suml2 > 0, sumlx / suml2, _ZERO)
    if zero.any():
        scale = np.where(zero, _ZERO, scale)
        L[:, zero] = 0
    return scale.astype(_f32), L


# --------------------------------------------------------------------------- block types


def _q2_K_chunk(blocks: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    nb = blocks.shape[0]
    x = _element_major(blocks, 16)
    if qw is not None:
        return _q2_K_weighted(blocks, x, qw)
    w = np.abs(x, out=_buf("w", x))
    scales, mins, lev = _make_qkx2(x, w, 3, -0.5, 0.1, 15, True)
    sc = scales.reshape(nb, 16)
    mi = mins.reshape(nb, 16)
    max_scale = np.fmax(np.fmax.reduce(sc, axis=1), _ZERO)
    max_min = np.fmax(np.fmax.reduce(mi, axis=1), _ZERO)
    q4scale = _f32(15)

    has_s = max_scale > 0
    iscale = q4scale / np.where(has_s, max_scale, _f32(1))
    byte = np.where(has_s[:, None], _nearest_int(iscale[:, None] * sc) & 0xFF, 0)
    d16 = np.where(has_s, _fp16_bits(max_scale / q4scale), np.uint16(0))
    has_m = max_min > 0
    imin = q4scale / np.where(has_m, max_min, _f32(1))
    byte |= np.where(has_m[:, None], (_nearest_int(imin[:, None] * mi) << 4) & 0xFF, 0)
    dmin16 = np.where(has_m, _fp16_bits(max_min / q4scale), np.uint16(0))
    byte = byte.astype(np.uint8)

    d = (_fp16_to_f32(d16)[:, None] * (byte & 0xF).astype(_f32)).reshape(-1)
    dm = (_fp16_to_f32(dmin16)[:, None] * (byte >> 4).astype(_f32)).reshape(-1)
    lev = _requantize(x, lev, d, dm, 0, 3)

    return _pack_q2_K(nb, byte, _block_major(lev, nb), d16, dmin16)


def _pack_q2_K(nb: int, byte: np.ndarray, L: np.ndarray, d16: np.ndarray, dmin16: np.ndarray) -> np.ndarray:
    out = np.empty((nb, TYPE_SIZES["q2_K"]), np.uint8)
    out[:, 0:16] = byte
    out[:, 16:80] = _pack_2bit(L)
    out[:, 80:82] = d16.view(np.uint8).reshape(nb, 2)
    out[:, 82:84] = dmin16.view(np.uint8).reshape(nb, 2)
    return out


def _q2_K_weighted(blocks: np.ndarray, x: np.ndarray, qw: np.ndarray) -> np.ndarray:
    """``quantize_row_q2_K_impl``: importance-weighted 37-step min/scale search per 16 elements, the
    scales and mins fitted on 4 bits by ``make_qp_quants`` (weighted by each sub-block's total weight)."""
    nb = blocks.shape[0]
    sigma2 = _block_sumsq(blocks) / _f32(QK_K)
    w = _imatrix_weights(x, _element_major_as(qw, 16, "qw"), np.repeat(sigma2, 16))
    sw = _seqsum(w).reshape(nb, 16)
    scales, mins, lev = _make_qkx2(x, w, 3, -0.9, 0.05, 36, False)
    dm, ls = _make_qp(scales.reshape(nb, 16).T, sw.T, 15)
    mm, lm = _make_qp(mins.reshape(nb, 16).T, sw.T, 15)
    d16, dmin16 = _fp16_bits(dm), _fp16_bits(mm)
    byte = ((ls.T | (lm.T << 4)) & 0xFF).astype(np.uint8)
    d = (_fp16_to_f32(d16)[:, None] * (byte & 0xF).astype(_f32)).reshape(-1)
    dmin = (_fp16_to_f32(dmin16)[:, None] * (byte >> 4).astype(_f32)).reshape(-1)
    lev = _requantize(x, lev, d, dmin, 0, 3)
    return _pack_q2_K(nb, byte, _block_major(lev, nb), d16, dmin16)


def _requantize(
    x: np.ndarray, lev: np.ndarray, d: np.ndarray, dm: np.ndarray | None, lo: int, hi: int
) -> np.ndarray:
    """Second pass common to all K types: ``L = clamp(nearest_int((x + dm) / d))`` for the
    sub-blocks whose rebuilt scale ``d`` is non-zero; the others keep the search's levels."""
    live = d != 0
    if not live.any():
        return lev
    ds = np.where(live, d, _f32(1))
    q = _buf("requant.q", x)
    if dm is not None:
        np.add(x, dm, out=q)
    else:
        np.copyto(q, x)
    q /= ds
    # checked on the array itself (cheap next to the search)
    safe = _all_safe(q)
    new = _round_clamp_into(q, lo, hi, safe)
    if live.all():
        return new
    return np.where(live, new, lev)


def _qk4_common(blocks: np.ndarray, nmax: int, rmin: float, nstep: int, qw: np.ndarray | None = None) -> tuple:
    """Shared body of q4_K / q5_K: search, 6-bit scale/min packing, requantisation."""
    nb = blocks.shape[0]
    x = _element_major(blocks, 32)
    if qw is not None:
        return _qk4_weighted(blocks, x, qw, nmax)
    w = _buf("w", x)
    sum_x2 = _seqsum(np.multiply(x, x, out=w))
    av_x = np.sqrt(sum_x2 / _f32(32))
    np.abs(x, out=w)
    w += av_x
    scales, mins, lev = _make_qkx2(x, w, nmax, rmin, 0.1, nstep, False)
    sc = scales.reshape(nb, 8)
    mi = mins.reshape(nb, 8)
    max_scale = np.fmax(np.fmax.reduce(sc, axis=1), _ZERO)
    max_min = np.fmax(np.fmax.reduce(mi, axis=1), _ZERO)
    c63 = _f32(63)
    inv_scale = np.where(max_scale > 0, c63 / np.where(max_scale > 0, max_scale, _f32(1)), _ZERO)
    inv_min = np.where(max_min > 0, c63 / np.where(max_min > 0, max_min, _f32(1)), _ZERO)
    ls = np.minimum(_nearest_int(inv_scale[:, None] * sc) & 0xFF, 63).astype(np.uint8)
    lm = np.minimum(_nearest_int(inv_min[:, None] * mi) & 0xFF, 63).astype(np.uint8)
    d16 = _fp16_bits(max_scale / c63)
    dmin16 = _fp16_bits(max_min / c63)
    d = (_fp16_to_f32(d16)[:, None] * ls.astype(_f32)).reshape(-1)
    dm = (_fp16_to_f32(dmin16)[:, None] * lm.astype(_f32)).reshape(-1)
    lev = _requantize(x, lev, d, dm, 0, nmax)
    return nb, d16, dmin16, _pack_scales_k4(ls, lm), _block_major(lev, nb)


def _qk4_weighted(blocks: np.ndarray, x: np.ndarray, qw: np.ndarray, nmax: int) -> tuple:
    """``quantize_row_q4_K_impl`` / ``q5_K_impl``: importance-weighted 37-step search per 32 elements,
    6-bit scales and mins fitted by ``make_qp_quants`` weighted by each sub-block's total weight."""
    nb = blocks.shape[0]
    sigma2 = (_f32(2) * _block_sumsq(blocks)) / _f32(QK_K)
    w = _imatrix_weights(x, _element_major_as(qw, 32, "qw"), np.repeat(sigma2, 8))
    sw = _seqsum(w).reshape(nb, 8)
    scales, mins, lev = _make_qkx2(x, w, nmax, -0.9, 0.05, 36, False)
    d_block, ls = _make_qp(scales.reshape(nb, 8).T, sw.T, 63)
    m_block, lm = _make_qp(mins.reshape(nb, 8).T, sw.T, 63)
    ls, lm = ls.T, lm.T
    if nmax == 31:  # q5_K clamps, q4_K does not (make_qp_quants keeps them <= 63 anyway)
        ls, lm = np.minimum(ls, 63), np.minimum(lm, 63)
    packed = _pack_scales_k4(ls.astype(np.uint8), lm.astype(np.uint8))
    sc, mn = _unpack_scales_k4(packed)
    d16, dmin16 = _fp16_bits(d_block), _fp16_bits(m_block)
    d = (_fp16_to_f32(d16)[:, None] * sc.astype(_f32)).reshape(-1)
    dm = (_fp16_to_f32(dmin16)[:, None] * mn.astype(_f32)).reshape(-1)
    lev = _requantize(x, lev, d, dm, 0, nmax)
    return nb, d16, dmin16, packed, _block_major(lev, nb)


def _unpack_scales_k4(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``get_scale_min_k4`` for the eight sub-blocks of each row of packed bytes ``(nb, 12)``."""
    d = np.empty((q.shape[0], 8), np.uint8)
    m = np.empty((q.shape[0], 8), np.uint8)
    d[:, 0:4] = q[:, 0:4] & 63
    m[:, 0:4] = q[:, 4:8] & 63
    d[:, 4:8] = (q[:, 8:12] & 0xF) | ((q[:, 0:4] >> 6) << 4)
    m[:, 4:8] = (q[:, 8:12] >> 4) | ((q[:, 4:8] >> 6) << 4)
    return d, m


def _q4_K_chunk(blocks: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    nb, d16, dmin16, scales, L = _qk4_common(blocks, 15, -1.0, 20, qw)
    out = np.empty((nb, TYPE_SIZES["q4_K"]), np.uint8)
    out[:, 0:2] = d16.view(np.uint8).reshape(nb, 2)
    out[:, 2:4] = dmin16.view(np.uint8).reshape(nb, 2)
    out[:, 4:16] = scales
    Lb = L.reshape(nb, 4, 2, 32)
    out[:, 16:144] = (Lb[:, :, 0, :] | (Lb[:, :, 1, :] << 4)).reshape(nb, 128)
    return out


def _q5_K_chunk(blocks: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    nb, d16, dmin16, scales, L = _qk4_common(blocks, 31, -0.5, 15, qw)
    out = np.empty((nb, TYPE_SIZES["q5_K"]), np.uint8)
    out[:, 0:2] = d16.view(np.uint8).reshape(nb, 2)
    out[:, 2:4] = dmin16.view(np.uint8).reshape(nb, 2)
    out[:, 4:16] = scales
    Lb = L.reshape(nb, 4, 2, 32)
    hi = (Lb >> 4).astype(np.uint8)  # the fifth bit of each level
    qh = np.zeros((nb, 32), np.uint8)
    for k in range(4):
        qh |= hi[:, k, 0, :] << (2 * k)
        qh |= hi[:, k, 1, :] << (2 * k + 1)
    out[:, 16:48] = qh
    lo = Lb & 0xF
    out[:, 48:176] = (lo[:, :, 0, :] | (lo[:, :, 1, :] << 4)).reshape(nb, 128)
    return out


def _q3_K_chunk(blocks: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    if qw is None:
        return _q3_K_rows(blocks)
    return _q3_K_weighted(blocks, _element_major(blocks, 16), qw)


_Q3_DESCENT_CHUNKS = 8
"""Chunks whose descents run together (see :func:`_q3_K_rows`)."""


def _q3_K_rows(rows: np.ndarray) -> np.ndarray:
    """quantize_q3_K without an importance matrix. The descent's passes cost a fixed number of
    numpy calls each whatever the number of sub-blocks (they are element by element), so they run
    once for the working sets of several chunks, while everything else runs chunk by chunk (small
    enough temporaries to stay in cache and in the allocator's reach): each chunk is started and
    screened, the descent runs for the batch, then each chunk is finished and packed (its
    element-major copy made again, cheaper than keeping it)."""
    blocks, lead, nb_row = _prepare(rows)
    out = np.empty((blocks.shape[0], TYPE_SIZES["q3_K"]), np.uint8)
    step = CHUNK_BLOCKS * _CHUNK_FACTOR.get("q3_K", 1)
    spans = [(a, min(a + step, blocks.shape[0])) for a in range(0, blocks.shape[0], step)]
    with scratch_scope():
        for k in range(0, len(spans), _Q3_DESCENT_CHUNKS):
            batch = spans[k:k + _Q3_DESCENT_CHUNKS]
            states = [_q3_start(_element_major(blocks[a:b], 16)) for a, b in batch]
            _q3_descend_all(states)
            for (a, b), st in zip(batch, states):
                out[a:b] = _q3_K_end(_element_major(blocks[a:b], 16), st)
    return out.reshape(*lead, nb_row * TYPE_SIZES["q3_K"])


def _q3_descend_all(states: list[_Q3State]) -> None:
    """:func:`_q3_descend` for the working sets of several chunks at once; results written back."""
    if len(states) == 1:
        st = states[0]
        gx, gl = st.gx, st.gl
    else:
        m = sum(st.where.size for st in states)  # (scratch arrays: the batch's levels stay in use until it is packed)
        gx = np.concatenate([st.gx for st in states], axis=1, out=_buf("q3.gx", (16, m)))
        gl = np.concatenate([st.gl for st in states], axis=1, out=_buf("q3.gl", (16, m), np.int32))
    g1 = np.concatenate([st.sumlx[st.where] for st in states])
    g2 = np.concatenate([st.suml2[st.where] for st in states])
    _q3_descend(gx, gl, g1, g2)
    o = 0
    for st in states:
        m = st.where.size
        st.gl = gl[:, o:o + m]
        st.sumlx[st.where] = g1[o:o + m]
        st.suml2[st.where] = g2[o:o + m]
        o += m


def _q3_K_end(x: np.ndarray, st: _Q3State) -> np.ndarray:
    """q3_K's sub-block scales on 6 signed bits and the packed block from a finished descent."""
    nb = x.shape[1] // 16
    sc = st.scale().reshape(nb, 16)
    _, max_scale, _ = _abs_max(sc.T)
    nz = max_scale != 0  # `if (max_scale)`: NaN counts as set
    iscale = _f32(-32) / np.where(nz, max_scale, _f32(1))
    l8 = ((_nearest_int(iscale[:, None] * sc) + 128) & 0xFF) - 128  # int8_t l = nearest_int(...)
    l6 = np.where(nz[:, None], np.clip(l8, -32, 31) + 32, 0).astype(np.uint8)
    d16 = np.where(nz, _fp16_bits(_f32(1) / iscale), np.uint16(0))
    packed = np.empty((nb, 12), np.uint8)
    packed[:, 0:8] = (l6[:, 0:8] & 0xF) | ((l6[:, 8:16] & 0xF) << 4)
    hi2 = l6 >> 4
    packed[:, 8:12] = hi2[:, 0:4] | (hi2[:, 4:8] << 2) | (hi2[:, 8:12] << 4) | (hi2[:, 12:16] << 6)
    d = (_fp16_to_f32(d16)[:, None] * (l6.astype(_f32) - _f32(32))).reshape(-1)
    return _q3_K_finish(x, lambda: _q3_levels(x, st), d, packed, d16)


def _q3_K_finish(x: np.ndarray, levels: Callable[[], np.ndarray], d: np.ndarray, packed: np.ndarray,
                 d16: np.ndarray) -> np.ndarray:
    """The final levels ``clamp(nearest_int(x/d), -4, 3) + 4`` (the search's, ``levels()``, where ``d`` is 0)
    and the q3_K bytes, packed straight from the element-major ``(16, nb·16)`` layout: only the
    96 packed bytes of a block are transposed to block order, not its 256 levels."""
    nb = x.shape[1] // 16
    live = d != 0
    q = np.divide(x, np.where(live, d, _f32(1)), out=_buf("requant.q", x))
    _round_clamp_into(q, -4, 3, _all_safe(q))
    q += _f32(4)
    if not live.all():
        np.copyto(q, levels(), where=~live)
    L = _buf("q3.L8", x, np.uint8)
    np.copyto(L, q, casting="unsafe")
    out = np.empty((nb, TYPE_SIZES["q3_K"]), np.uint8)
    # For element i of block b the 16 sub-blocks' levels are 16 consecutive bytes: two
    # little-endian words W_h holding sub-blocks 8h..8h+7, byte m = sub-block 8h + m, values <= 7.
    # The bytes of each packed field come from every other byte of a word (m = 2k + t), gathered
    # with shifts that move only zero bits onto the field's other bits.
    W = L.view("<u8").reshape(16, nb, 2)
    # hmask[b, 16t + i]: bit 4h + k = bit 2 of sub-block 8h + 2k + t (L > 3)
    H = (W >> np.uint64(2)) & np.uint64(0x0101010101010101)
    hm = np.empty((16, nb, 2), np.uint8)
    for t in (0, 1):
        Ht = H >> np.uint64(8 * t)
        v = Ht | (Ht >> np.uint64(15)) | (Ht >> np.uint64(30)) | (Ht >> np.uint64(45))
        v &= np.uint64(0xF)
        hm[:, :, t] = v[:, :, 0] | (v[:, :, 1] << np.uint64(4))
    out[:, 0:32] = hm.transpose(1, 2, 0).reshape(nb, 32)
    # qs[b, 32h + 16t + i]: bits 2k..2k+1 = (sub-block 8h + 2k + t) & 3  (_pack_2bit's layout)
    W &= np.uint64(0x0303030303030303)
    qs = np.empty((16, nb, 2, 2), np.uint8)
    for t in (0, 1):
        Wt = W >> np.uint64(8 * t)
        qs[:, :, :, t] = Wt | (Wt >> np.uint64(14)) | (Wt >> np.uint64(28)) | (Wt >> np.uint64(42))
    out[:, 32:96] = qs.transpose(1, 2, 3, 0).reshape(nb, 64)
    out[:, 96:108] = packed
    out[:, 108:110] = d16.view(np.uint8).reshape(nb, 2)
    return out


def _q3_K_weighted(blocks: np.ndarray, x: np.ndarray, qw: np.ndarray) -> np.ndarray:
    """``quantize_row_q3_K_impl``: ``make_qx_quants`` with importance weights per 16 elements, the
    sixteen scales fitted on 6 signed bits by ``make_qx_quants`` again (weighted by sub-block totals)."""
    nb = blocks.shape[0]
    sigma2 = (_f32(2) * _block_sumsq(blocks)) / _f32(QK_K)
    w = _imatrix_weights(x, _element_major_as(qw, 16, "qw"), np.repeat(sigma2, 16))
    sw = _seqsum(w).reshape(nb, 16)
    scales, lev, _ = _make_qx_rmse1(x, 4, w)
    lev = lev.copy()  # the next make_qx_quants reuses its scratch
    d_block, ls, _ = _make_qx_rmse1(np.ascontiguousarray(scales.reshape(nb, 16).T), 32, np.ascontiguousarray(sw.T))
    l6 = ls.T.astype(np.uint8)
    packed = np.empty((nb, 12), np.uint8)
    packed[:, 0:8] = (l6[:, 0:8] & 0xF) | ((l6[:, 8:16] & 0xF) << 4)
    hi2 = l6 >> 4
    packed[:, 8:12] = hi2[:, 0:4] | (hi2[:, 4:8] << 2) | (hi2[:, 8:12] << 4) | (hi2[:, 12:16] << 6)
    d16 = _fp16_bits(d_block)
    d = (_fp16_to_f32(d16)[:, None] * (l6.astype(_f32) - _f32(32))).reshape(-1)
    return _q3_K_finish(x, lambda: lev, d, packed, d16)


def _q6_K_chunk(blocks: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    """``quantize_row_q6_K_ref``, or with importance weights ``_impl`` (which weights the
    level fit by the importance alone, without the sigma term the other types add)."""
    nb = blocks.shape[0]
    x = _element_major(blocks, 16)
    w = None if qw is None else np.ascontiguousarray(_element_major_as(qw, 16, "qw"))
    scales, lev, _ = _make_qx_rmse1(x, 32, w)
    sc = scales.reshape(nb, 16)
    max_abs, max_scale, _ = _abs_max(sc.T)
    zero_block = max_abs < _GROUP_MAX_EPS
    iscale = _f32(-128) / np.where(zero_block, _f32(1), max_scale)
    d16 = _fp16_bits(_f32(1) / iscale)
    q8 = np.minimum(_nearest_int(iscale[:, None] * sc), 127)
    q8 = (((q8 + 128) & 0xFF) - 128).astype(np.int8)  # stored as int8_t
    d = (_fp16_to_f32(d16)[:, None] * q8.astype(_f32)).reshape(-1)
    lev = _requantize(x, lev - _f32(32), d, None, -32, 31) + _f32(32)

    L = _block_major(lev, nb)
    Lb = L.reshape(nb, 2, 4, 32)
    lo = Lb & 0xF
    hi = Lb >> 4
    out = np.empty((nb, TYPE_SIZES["q6_K"]), np.uint8)
    ql = out[:, 0:128].reshape(nb, 2, 64)
    ql[:, :, 0:32] = lo[:, :, 0, :] | (lo[:, :, 2, :] << 4)
    ql[:, :, 32:64] = lo[:, :, 1, :] | (lo[:, :, 3, :] << 4)
    out[:, 128:192] = (hi[:, :, 0, :] | (hi[:, :, 1, :] << 2) | (hi[:, :, 2, :] << 4) | (hi[:, :, 3, :] << 6)).reshape(nb, 64)
    out[:, 192:208] = q8.view(np.uint8)
    out[:, 208:210] = d16.view(np.uint8).reshape(nb, 2)
    if zero_block.any():
        out[zero_block] = 0
    return out


# --------------------------------------------------------------------------- public API


def quantize_q2_K(rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Quantise float32 rows ``(..., n)`` (``n % 256 == 0``) to Q2_K block bytes ``(..., n/256*84)``.

    Byte-identical to ``quantize_row_q2_K_ref``: per 16-element sub-block a min/scale
    search (|x|-weighted, mean absolute error), 4-bit scales and mins, 2-bit levels.
    """
    return _run(rows, "q2_K", _q2_K_chunk, imatrix)


def quantize_q3_K(rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Quantise float32 rows ``(..., n)`` to Q3_K block bytes ``(..., n/256*110)``.

    Byte-identical to ``quantize_row_q3_K_ref``: symmetric 3-bit levels refined by
    coordinate descent, 6-bit signed sub-block scales, one fp16 super-scale.
    """
    return _q3_K_rows(rows) if imatrix is None else _run(rows, "q3_K", _q3_K_chunk, imatrix)


def quantize_q4_K(rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Quantise float32 rows ``(..., n)`` to Q4_K block bytes ``(..., n/256*144)``.

    Byte-identical to ``quantize_row_q4_K_ref``: per 32-element sub-block a 21-step
    min/scale search, 6-bit scales and mins, 4-bit levels.
    """
    return _run(rows, "q4_K", _q4_K_chunk, imatrix)


def quantize_q5_K(rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Quantise float32 rows ``(..., n)`` to Q5_K block bytes ``(..., n/256*176)``.

    Byte-identical to ``quantize_row_q5_K_ref``: as Q4_K with 5-bit levels and a
    16-step search.
    """
    return _run(rows, "q5_K", _q5_K_chunk, imatrix)


def quantize_q6_K(rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Quantise float32 rows ``(..., n)`` to Q6_K block bytes ``(..., n/256*210)``.

    Byte-identical to ``quantize_row_q6_K_ref``: symmetric 6-bit levels with a
    19-step scale search per 16-element sub-block, 8-bit sub-block scales.
    """
    return _run(rows, "q6_K", _q6_K_chunk, imatrix)


KQUANTIZERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "q2_K": quantize_q2_K,
    "q3_K": quantize_q3_K,
    "q4_K": quantize_q4_K,
    "q5_K": quantize_q5_K,
    "q6_K": quantize_q6_K,
}
"""Block-type name (lmconv's spelling, case as in ``lmconv.dtypes``) → quantiser."""
