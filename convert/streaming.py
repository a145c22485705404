"""Write tensors one after another into an open file, never holding more than a few.

Loading (and any cast or quantisation attached to a tensor) runs on a small
thread pool ahead of the writer — numpy releases the GIL in its kernels — while
the main thread writes finished arrays in order. At most ``window`` tensors are
in flight, so memory is bounded by the largest tensors, not the model.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO

import numpy as np

from .formats import WriteOptions
from .ir import Tensor


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


def write_array(fh: IO[bytes], arr: np.ndarray) -> int:
    """Write the raw bytes of ``arr`` (C order) without an extra copy when it is contiguous."""
    arr = np.ascontiguousarray(arr)
    view = memoryview(arr.reshape(-1).view(np.uint8))
    fh.write(view)
    return arr.nbytes


def write_arrays(fh: IO[bytes], tensors: list[Tensor], options: WriteOptions, *, align: int = 1) -> None:
    for t, arr in iter_loaded(tensors):
        n = write_array(fh, arr)
        del arr
        t.release()
        if align > 1 and n % align:
            fh.write(b"\0" * (-n % align))
        options.progress(n)
