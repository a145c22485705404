"""Run the slow numpy quantisers in worker processes, so that a second core actually helps.

The pipeline computes a tensor in chunks of rows on one thread per core (:mod:`lmconv.parallel`).
That is enough for casts and for kernels made of a few large numpy calls, but the searching
quantisers (the i-quants, the K-quants' scale searches, anything with an importance matrix) make
thousands of small calls per chunk, and the GIL held between them keeps two threads at about one
core's speed (ggml's C scales linearly). Here a thread that is handed such a chunk passes it to a
worker process and waits for the answer without holding the GIL: with one worker per compute
thread, N threads become N cores.

Why processes are cheap enough: a chunk is ~4 MB of float32 (``ROW_CHUNK_BYTES``) whose kernel
takes tens of milliseconds to seconds, against about a millisecond to pickle it through a pipe.

Why plain subprocesses and not :mod:`multiprocessing`: its spawn and forkserver workers re-import
the parent's ``__main__`` (a user's script without a ``__main__`` guard would run again in every
worker), and forking our own multi-threaded process is unsafe. A worker here is
``python -m lmconv.plugins.quantizers.offload`` reading length-prefixed pickles on stdin: it imports only
numpy and the kernels, ignores SIGINT (Ctrl-C is handled once, by the parent), exits when its
stdin closes (when the parent exits or is killed), and has no stderr: nothing of its own can reach
the user's terminal, and a pipe a caller reads our stderr from is not held open after we exit.

The results are the same bytes as in-process (the same functions run); if a worker dies (killed,
out of memory), it is dropped and the chunk is computed in-process instead.
"""

from __future__ import annotations

import atexit
import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import IO, Any

import numpy as np

__all__ = ["ENV", "MIN_ELEMENTS", "enabled", "run", "shutdown"]

MIN_ELEMENTS = 1 << 16
"""Chunks smaller than this (256 KB of float32) are computed in-process: sending them costs more
than a second core gains on them."""

ENV = "LMCONV_QUANT_PROCESSES"
"""``0`` keeps every kernel in-process; ``1`` sends even small chunks (tests); unset: automatic."""

_WORKER_ENV = "LMCONV_OFFLOAD_WORKER"
_broken = False  # set when a worker died before answering anything: everything stays in-process
_HEADER = struct.Struct("<Q")
_MODULE = __name__ if __name__ != "__main__" else "lmconv.plugins.quantizers.offload"


def _workers() -> int:
    from lmconv.parallel import compute_workers

    return compute_workers()


def enabled(elements: int) -> bool:
    """Whether a chunk of ``elements`` values goes to a worker process: only with more than one
    compute thread (one thread gains nothing), and only for chunks worth sending."""
    env = os.environ.get(ENV, "").strip()
    if env == "0" or _broken or os.environ.get(_WORKER_ENV) == "1":  # never from inside a worker
        return False
    if env == "1":
        return True
    return elements >= MIN_ELEMENTS and _workers() > 1


# --------------------------------------------------------------------------- the parent's side


def _send(stream: IO[bytes], obj: object) -> None:
    """Pickle ``obj`` with its arrays' data out of band (protocol 5): the header, the pickle, then
    each buffer written straight from the array's memory, with no copy into the pickle."""
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]
    stream.write(_HEADER.pack(len(data)) + _HEADER.pack(len(raws)) + b"".join(_HEADER.pack(r.nbytes) for r in raws))
    stream.write(data)
    for r in raws:
        stream.write(r)
    stream.flush()


def _read_exactly(stream: IO[bytes], into: memoryview) -> None:
    got = 0
    while got < into.nbytes:
        n = stream.readinto(into[got:])  # type: ignore[attr-defined]
        if not n:
            raise EOFError("worker closed its pipe")
        got += n


def _recv(stream: IO[bytes], scratch: list[bytearray] | None = None) -> Any:
    """Read what :func:`_send` wrote. With ``scratch`` (the worker's inputs, used only until the
    answer is sent) the buffers are read into reused memory, so no fresh pages are touched per
    chunk; without it (results handed to the caller) each buffer is new."""
    head = stream.read(2 * _HEADER.size)
    if len(head) < 2 * _HEADER.size:
        raise EOFError("worker closed its pipe")
    n, nbuf = _HEADER.unpack(head[:_HEADER.size])[0], _HEADER.unpack(head[_HEADER.size:])[0]
    sizes_raw = stream.read(nbuf * _HEADER.size)
    data = stream.read(n)
    if len(sizes_raw) < nbuf * _HEADER.size or len(data) < n:
        raise EOFError("worker closed its pipe")
    buffers = []
    for k in range(nbuf):
        size = _HEADER.unpack_from(sizes_raw, k * _HEADER.size)[0]
        if scratch is not None:
            while len(scratch) <= k:
                scratch.append(bytearray())
            if len(scratch[k]) < size:
                scratch[k] = bytearray(size)
            view = memoryview(scratch[k])[:size]
        else:
            view = memoryview(bytearray(size))
        _read_exactly(stream, view)
        buffers.append(view)
    return pickle.loads(data, buffers=buffers)


def _widen(stream: IO[bytes] | None) -> None:
    """Make a pipe hold 1 MiB instead of 64 KiB (Linux): a 4 MB chunk then crosses in four
    wake-ups of the reader instead of sixty-four (about a third of the transfer time)."""
    try:
        import fcntl

        if stream is not None:
            fcntl.fcntl(stream.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)
    except (ImportError, AttributeError, OSError):  # not Linux, or above /proc/sys/fs/pipe-max-size
        pass


class _Worker:
    """One worker process and its two pipes; used by one thread at a time."""

    def __init__(self) -> None:
        env = dict(os.environ, **{_WORKER_ENV: "1", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"})
        self.served = 0
        self.proc = subprocess.Popen([sys.executable, "-m", _MODULE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                                     start_new_session=True)
        for stream in (self.proc.stdin, self.proc.stdout):
            _widen(stream)

    def call(self, fn: Callable[..., np.ndarray], rows: np.ndarray, args: tuple, kwargs: dict) -> tuple[bool, Any]:
        """Send one chunk and wait: ``(True, result)`` or ``(False, the kernel's exception)``;
        raises only when the chunk cannot be sent or the worker does not answer."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        _send(self.proc.stdin, (fn, rows, args, kwargs))
        return _recv(self.proc.stdout)

    def close(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class _Pool:
    """Idle workers in a queue; started lazily, at most one per compute thread."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.started = 0
        self.idle: queue.SimpleQueue[_Worker | None] = queue.SimpleQueue()
        self.all: list[_Worker] = []
        self.lock = threading.Lock()

    def take(self) -> _Worker:
        """An idle worker, a new one while fewer than ``size`` exist, else the next one given back.
        Raises OSError when a process cannot be started."""
        while True:
            try:
                w = self.idle.get_nowait()
            except queue.Empty:
                with self.lock:
                    if self.started < self.size:
                        self.started += 1
                        try:
                            w = _Worker()
                        except BaseException:
                            self.started -= 1
                            raise
                        self.all.append(w)
                        return w
                w = self.idle.get()
            if w is not None:  # None: a worker was dropped, so one may be started again
                return w

    def give_back(self, w: _Worker) -> None:
        self.idle.put(w)

    def drop(self, w: _Worker) -> None:
        with self.lock:
            if w in self.all:
                self.all.remove(w)
                self.started -= 1
        self.idle.put(None)  # wakes a thread waiting for a worker, which may now start one
        w.proc.kill()
        w.close()

    def close(self) -> None:
        with self.lock:
            workers, self.all, self.started = self.all, [], 0
        for w in workers:
            w.close()


_pool: _Pool | None = None
_pool_lock = threading.Lock()
_exit_hook = False


def _get_pool() -> _Pool:
    global _pool, _exit_hook
    with _pool_lock:
        if _pool is None:
            _pool = _Pool(max(1, _workers()))
            if not _exit_hook:
                # at exit the workers are told to stop and are waited for: none outlives lmconv, and
                # their CPU time and memory show in lmconv's own resource usage (wait4, time -v)
                atexit.register(shutdown)
                _exit_hook = True
        return _pool


def shutdown() -> None:
    """Stop the workers (idempotent); the next offloaded chunk starts new ones."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.close()


def run(fn: Callable[..., np.ndarray], rows: np.ndarray, *args: object, **kwargs: object) -> np.ndarray:
    """``fn(rows, *args, **kwargs)``, in a worker process when :func:`enabled` says so.

    ``fn`` must be picklable (a module-level function of the kernel modules, or a ``partial`` of
    one). Exceptions the kernel raises come back as themselves."""
    if not enabled(int(np.size(rows))):
        return fn(rows, *args, **kwargs)
    global _broken
    pool = _get_pool()
    try:
        w = pool.take()
    except OSError:  # no process can be started (limits, memory): compute here, and stop trying
        _broken = True
        return fn(rows, *args, **kwargs)
    try:
        ok, value = w.call(fn, np.ascontiguousarray(rows), args, kwargs)
    except BaseException as exc:
        if w.served == 0 or not isinstance(exc, (EOFError, OSError)):
            # a worker that cannot start, or a chunk that cannot be sent (pickling), will not do
            # better next time: stop trying rather than start a process per chunk
            _broken = True
        pool.drop(w)
        if not isinstance(exc, Exception):  # KeyboardInterrupt and the like
            raise
        return fn(rows, *args, **kwargs)
    w.served += 1
    pool.give_back(w)
    if not ok:
        raise value  # the kernel's own exception: the worker answered and is fine
    return value


# --------------------------------------------------------------------------- the worker's side


def _serve() -> None:
    """The worker loop: read ``(fn, rows, args, kwargs)``, answer ``(True, result)`` or
    ``(False, exception)``, until stdin closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing a kernel prints may corrupt the answers
    scratch: list[bytearray] = []
    while True:
        try:
            fn, rows, args, kwargs = _recv(inp, scratch)
        except EOFError:
            return
        try:
            answer: tuple[bool, object] = (True, fn(rows, *args, **kwargs))
        except Exception as exc:  # sent back and raised in the parent
            answer = (False, exc)
        try:
            _send(out, answer)
        except BrokenPipeError:
            return


if __name__ == "__main__":
    _serve()
