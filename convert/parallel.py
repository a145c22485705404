"""The compute pool that row-wise maps run on, and ``map_rows`` for one whole tensor.

One tensor can be most of the work (an embedding, an output head): its rows are split into chunks
that a pool of one thread per core transforms in parallel (numpy releases the GIL in its kernels).
This module knows arrays only, no IR: :class:`lmconv.ir.Tensor` uses it for ``load()`` of a
row-wise map, and :mod:`lmconv.streaming` for writers that take tensors in pieces.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

ROW_CHUNK_BYTES = 4 << 20  # source bytes per chunk: big enough that numpy's per-call cost vanishes

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_in_pool = threading.local()


def compute_workers() -> int:
    """One thread per core, or ``LMCONV_THREADS`` (a batch job sharing the machine with others)."""
    env = os.environ.get("LMCONV_THREADS", "").strip()
    return max(1, int(env)) if env.isdigit() else max(1, os.cpu_count() or 1)


def _mark_pool_thread() -> None:
    _in_pool.active = True


def compute_pool() -> ThreadPoolExecutor:
    """The process-wide pool that row chunks (and other CPU-bound pieces) run on."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=compute_workers(), thread_name_prefix="lmconv-rows",
                                       initializer=_mark_pool_thread)
        return _pool


def map_rows(fn: Callable[[np.ndarray], np.ndarray], src: np.ndarray, out_shape: tuple[int, ...],
             out_dtype: np.dtype) -> np.ndarray:
    """``fn(src)`` for a row-wise ``fn`` (each row of the last axis maps to one row of the result,
    as casts and block quantisers do), computed chunk by chunk on the compute pool.

    Falls back to ``fn(src)`` in one call for small or 1-D arrays, inside a pool thread (no
    nesting), or when a chunk's result is not the promised dtype/size (so that the caller's own
    validation reports it as it would have).
    """
    if src.ndim < 2 or src.nbytes < 2 * ROW_CHUNK_BYTES or getattr(_in_pool, "active", False) or compute_workers() < 2:
        return fn(src)
    rows = src.reshape(-1, src.shape[-1])
    n = rows.shape[0]
    out = np.empty(out_shape, out_dtype)
    if out.size % n:
        return fn(src)
    out_rows = out.reshape(n, -1)
    per = max(1, ROW_CHUNK_BYTES // max(1, rows[0].nbytes))
    if per >= n:
        return fn(src)

    class _Mismatch(Exception):
        pass

    def one(r0: int, r1: int) -> None:
        res = np.asarray(fn(rows[r0:r1]))
        if res.dtype != out.dtype or res.size != (r1 - r0) * out_rows.shape[1]:
            raise _Mismatch
        out_rows[r0:r1] = res.reshape(r1 - r0, -1)

    pool = compute_pool()
    futures = [pool.submit(one, r0, min(r0 + per, n)) for r0 in range(0, n, per)]
    try:
        for f in futures:
            f.result()
    except _Mismatch:
        return fn(src)
    finally:
        for f in futures:
            f.cancel()
    return out
