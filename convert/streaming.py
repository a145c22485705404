"""Write tensors one after another into an open file, never holding more than a few.

Writers go through :func:`iter_pieces`: a cast or quantisation (a row-wise map, see
``Tensor.map(rows=True)``) is computed in chunks of rows on a pool of one thread per
core — numpy releases the GIL in its kernels — while the main thread writes the
finished pieces in order. An untransformed tensor is one piece, a view of the
memory-mapped source written without a copy. At most ``PIECE_WINDOW_BYTES`` are in
flight, so memory is bounded by the largest source tensor, not by the model.
:func:`iter_loaded` (whole tensors, a few ahead) remains for writers that need them whole.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import ContextVar
from typing import IO, Any

import numpy as np

from .errors import InputError
from .formats import WriteOptions
from .ir import Tensor
from .parallel import ROW_CHUNK_BYTES, compute_pool, compute_workers


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def iter_loaded(tensors: Iterable[Tensor], *, workers: int | None = None, window: int = 2) -> Iterator[tuple[Tensor, np.ndarray]]:
    """Yield ``(tensor, array)`` in order, computing up to ``window`` tensors ahead."""
    workers = workers or default_workers()
    if workers <= 1:
        for t in tensors:
            yield t, t.load()
        return
    pending: deque[tuple[Tensor, Future[np.ndarray]]] = deque()
    it = iter(tensors)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lmconv-load") as pool:
        try:
            for t in it:
                pending.append((t, pool.submit(t.load)))
                if len(pending) >= window:
                    t0, fut = pending.popleft()
                    yield t0, fut.result()
            while pending:
                t0, fut = pending.popleft()
                yield t0, fut.result()
        finally:
            for _, fut in pending:
                fut.cancel()


PIECE_WINDOW_BYTES = 64 << 20  # output bytes computed ahead of the writer, at most (one job always may)

#: Set in each writer thread of a quant ladder (lmconv.ladder): an object whose ``submit(pool, tensor,
#: index, job)`` returns the future of piece ``index`` of ``tensor``, so that writers computing the same
#: tensor the same way compute each piece once (and share its future). None (the default) elsewhere.
SHARED_PIECES: ContextVar[Any] = ContextVar("lmconv_shared_pieces", default=None)


def iter_pieces(tensors: Iterable[Tensor], *, window_bytes: int | None = None) -> Iterator[tuple[Tensor, np.ndarray, bool]]:
    """Yield ``(tensor, piece, last)`` in order: each tensor's data as consecutive pieces of rows.

    A row-wise map (a cast, a quantisation: :meth:`Tensor.row_source`) of a large source is cut
    into chunks of rows that the compute pool transforms in parallel, so every core works even
    when one tensor is most of the model, and no tensor-sized result is ever allocated: pieces
    are a few MB, written as they come (compute overlaps writing). Any other tensor is one
    piece, ``tensor.load()`` — for an untransformed memory-mapped tensor, a view of the mapping
    that is written without a copy. At most ``window_bytes`` of output are in flight.
    """
    window = PIECE_WINDOW_BYTES if window_bytes is None else window_bytes
    pool = compute_pool()
    pending: deque[tuple[Tensor, Future[np.ndarray], bool, int]] = deque()
    in_flight = 0

    def jobs(t: Tensor) -> Iterator[tuple[Callable[[], np.ndarray], bool, int]]:
        rs = t.row_source()
        if rs is not None and compute_workers() > 1:
            fn, src = rs
            if len(src.shape) >= 2 and src.nbytes >= 2 * ROW_CHUNK_BYTES:
                n = 1
                for d in src.dtype.storage_shape(src.shape)[:-1]:
                    n *= d
                per = max(1, ROW_CHUNK_BYTES // max(1, src.nbytes // n))
                if per < n:
                    yield from _row_jobs(t, fn, pool.submit(src.load), n, per, src.nbytes // n)
                    return
        yield t.load, True, t.nbytes

    shared = SHARED_PIECES.get()
    try:
        for t in tensors:
            for index, (job, last, nbytes) in enumerate(jobs(t)):
                while pending and in_flight + nbytes > window:
                    t0, fut, last0, n0 = pending.popleft()
                    in_flight -= n0
                    yield t0, fut.result(), last0
                pending.append((t, pool.submit(job) if shared is None else shared.submit(pool, t, index, job), last, nbytes))
                in_flight += nbytes
        while pending:
            t0, fut, last0, n0 = pending.popleft()
            in_flight -= n0
            yield t0, fut.result(), last0
    finally:
        for _, fut, _, _ in pending:
            fut.cancel()


def _row_jobs(t: Tensor, fn: Callable[[np.ndarray], np.ndarray], src_future: Future[np.ndarray], n: int,
              per: int, src_row_bytes: int) -> Iterator[tuple[Callable[[], np.ndarray], bool, int]]:
    """Jobs computing ``fn`` over rows ``[r0, r1)`` of the (shared, once-loaded) source; each job's
    weight in the window is the larger of its source and result bytes (both are resident)."""
    want = t.dtype.numpy if t.dtype.numpy is not None else np.dtype(np.uint8)
    storage = t.dtype.storage_shape(t.shape)
    total = 1
    for d in storage:
        total *= d
    if total % n:
        raise InputError(f"tensor {t.name!r}: {n} source rows do not map onto {list(storage)}", path=t.origin or None)
    row_out = total // n

    def job(r0: int, r1: int) -> Callable[[], np.ndarray]:
        def run() -> np.ndarray:
            src = src_future.result()  # submitted before every piece job: never waits on one of them
            piece = np.asarray(fn(src.reshape(n, -1)[r0:r1]))
            if piece.dtype != want or piece.size != (r1 - r0) * row_out:
                raise InputError(
                    f"tensor {t.name!r} rows {r0}..{r1} came out as {piece.dtype}{list(piece.shape)}, "
                    f"not {t.dtype} rows of {row_out}", path=t.origin or None)
            return piece

        return run

    itemsize = want.itemsize
    for r0 in range(0, n, per):
        r1 = min(r0 + per, n)
        yield job(r0, r1), r1 == n, (r1 - r0) * max(row_out * itemsize, src_row_bytes)


def all_finite(arr: np.ndarray) -> bool:
    """Whether a float array holds no NaN or ±Inf: in chunks (no array-sized temporaries), and on
    the raw exponent bits for bf16/f16, whose ``isfinite`` is several times slower."""
    a = np.asarray(arr)
    if a.size == 0:
        return True
    if not a.flags.c_contiguous:
        return bool(np.isfinite(a).all())
    flat = a.reshape(-1)
    mask = {"bfloat16": 0x7F80, "float16": 0x7C00}.get(a.dtype.name) if a.dtype.itemsize == 2 else None
    step = 1 << 20
    for i in range(0, flat.size, step):
        chunk = flat[i:i + step]
        if mask is not None:
            if int(np.bitwise_and(chunk.view(np.uint16), 0x7FFF).max()) >= mask:
                return False
        elif not np.isfinite(chunk).all():
            return False
    return True


def write_array(fh: IO[bytes], arr: np.ndarray) -> int:
    """Write the raw bytes of ``arr`` (C order) without an extra copy when it is contiguous."""
    arr = np.ascontiguousarray(arr)
    view = memoryview(arr.reshape(-1).view(np.uint8))
    fh.write(view)
    return arr.nbytes


def write_arrays(fh: IO[bytes], tensors: list[Tensor], options: WriteOptions, *, align: int = 1) -> None:
    """Stream ``tensors`` into ``fh`` back to back (each padded to ``align``), piece by piece."""
    done = 0
    for t, piece, last in iter_pieces(tensors):
        n = write_array(fh, piece)
        del piece
        done += n
        options.progress(n)
        if last:
            t.release()
            if done != t.nbytes:
                raise InputError(f"tensor {t.name!r} produced {done} bytes, not the {t.nbytes} declared",
                                 path=t.origin or None)
            if align > 1 and done % align:
                fh.write(b"\0" * (-done % align))
            done = 0
