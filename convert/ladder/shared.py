"""One read of each source tensor for several writers that run at the same time (a quant ladder).

:meth:`SharedSources.share` gives a model whose tensors load through a cache: the first writer to
ask for a tensor reads it (and, where :func:`widen` allows, dequantises or widens it to f32 once);
the others take the same array. A writer says it is done with a tensor by releasing it (writers
release each tensor after its last piece, see :mod:`lmconv.streaming`); an entry leaves the cache,
and its pages the process, once every writer has released it or moved past it.

Writers run in lockstep: a writer that releases a tensor while it is ahead of another and the
cache holds more than ``budget`` bytes waits (in its own thread, never in the compute pool, which
the slower writers need) until the slowest catches up. The writer furthest behind never waits, so
there is no deadlock; memory stays at about the budget plus one tensor per writer's read-ahead.

The order of the tensors is learnt, not assumed: an entry gets its place in the order when it is
first released. Every writer of a ladder writes the same tensors in the same order (one format,
one layout), so a writer that releases entry ``k`` has passed every entry before it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from types import TracebackType
from typing import Any, Self

import numpy as np

from ..dtypes import F32
from ..ir import Model, Tensor
from ..transforms import dequantize_tensor


class Aborted(Exception):
    """Raised in a writer (or a load) once another writer of the ladder has failed."""


class _Entry:
    __slots__ = ("array", "error", "loading", "nbytes", "release")

    def __init__(self, release: Callable[[], None]) -> None:
        self.array: np.ndarray | None = None
        self.nbytes = 0
        self.loading = True
        self.error: BaseException | None = None
        self.release = release  # the source's own release (drops mapped pages), called once


def widen(t: Tensor) -> Tensor:
    """``t`` as the float32 every quantiser and every cast of a float starts from: exact for the
    16-bit and 8-bit floats, the plugin's own dequantiser for blocks (what a writer would apply)."""
    if t.dtype.is_quantized:
        return dequantize_tensor(t)
    if t.dtype.is_float and t.dtype.type_size < 4:
        return t.cast(F32)
    return t


class SharedSources:
    """The cache and the lockstep of ``writers`` writers (numbered 0 … writers-1)."""

    def __init__(self, writers: int, budget: int) -> None:
        self.writers = writers
        self.budget = budget
        self._cond = threading.Condition()
        self._entries: dict[int, _Entry] = {}
        self._seq: dict[int, int] = {}  # key → place in the order (first release); kept after the entry leaves
        self._progress = [-1] * writers  # per writer: the place of the last entry it released
        self._finished = [False] * writers
        self._bytes = 0
        self._failed: BaseException | None = None
        self._local = threading.local()
        self.reads: dict[int, int] = {}  # key → how many times it was read (1 unless it had to be read again)
        self.peak_bytes = 0

    # ------------------------------------------------------------------ the shared model
    def share(self, model: Model, widen_when: Callable[[Tensor], bool]) -> Model:
        """``model`` with every tensor (and every stored tensor a derivation keeps) loading through
        the cache; a tensor for which ``widen_when`` is true is held as f32 (see :func:`widen`)."""
        made: dict[int, Tensor] = {}

        def wrap(t: Tensor) -> Tensor:
            if id(t) in made:
                return made[id(t)]
            d = t.derivation
            derivation = d.with_inputs(tuple(wrap(i) for i in d.inputs)) if d is not None else None
            base = widen(t) if widen_when(t) else t
            key = len(made)
            new = Tensor(t.name, t.shape, base.dtype, self._loader(key, base, t), aliases=t.aliases, history=t.history,
                         origin=t.origin, derivation=derivation, release=lambda: self._release(key))
            made[id(t)] = new
            return new

        return model.with_tensors([wrap(t) for t in model])

    def _loader(self, key: int, base: Tensor, source: Tensor) -> Callable[[], np.ndarray]:
        widened = base is not source

        def load() -> np.ndarray:
            with self._cond:
                while True:
                    self._check()
                    e = self._entries.get(key)
                    if e is None:
                        e = self._entries[key] = _Entry(source.release)
                        self.reads[key] = self.reads.get(key, 0) + 1
                        break
                    if not e.loading:
                        assert e.array is not None
                        return e.array
                    self._cond.wait()
            try:
                arr = base.load()
                if widened:
                    source.release()  # the f32 copy is all the writers need: drop the source's pages now
                view = arr.view()
                view.flags.writeable = False  # one array, several writers: none may change it
            except BaseException as exc:
                with self._cond:
                    self._entries.pop(key, None)
                    e.loading, e.error = False, exc
                    self._cond.notify_all()
                raise
            with self._cond:
                e.array, e.nbytes, e.loading = view, int(arr.nbytes), False
                self._bytes += e.nbytes
                self.peak_bytes = max(self.peak_bytes, self._bytes)
                if widened:
                    e.release = _nothing
                self._cond.notify_all()
            return view

        return load

    # ------------------------------------------------------------------ writers
    def writer(self, index: int) -> _WriterScope:
        """``with sources.writer(i):`` around writer ``i``'s whole write, in its own thread."""
        return _WriterScope(self, index)

    def _release(self, key: int) -> None:
        w = getattr(self._local, "writer", None)
        if w is None:  # not a ladder writer's thread (e.g. a verification afterwards): nothing to do
            return
        with self._cond:
            seq = self._seq.setdefault(key, len(self._seq))
            self._progress[w] = max(self._progress[w], seq)
            self._collect()
            while self._ahead(w):
                self._cond.wait()
            self._check()

    def _ahead(self, w: int) -> bool:
        if self._failed is not None or self._bytes <= self.budget:
            return False
        behind = [p for p, done in zip(self._progress, self._finished) if not done]
        return bool(behind) and self._progress[w] > min(behind)

    def _collect(self) -> None:
        """Drop the entries every writer has released or passed (called with the lock held)."""
        live = [p for p, done in zip(self._progress, self._finished) if not done]
        low = min(live) if live else None
        for key in [k for k, e in self._entries.items() if not e.loading]:
            seq = self._seq.get(key)
            if low is None or (seq is not None and seq <= low):
                self._drop(key)
        self._cond.notify_all()

    def _drop(self, key: int) -> None:
        e = self._entries.pop(key)
        self._bytes -= e.nbytes
        e.array = None
        e.release()

    def _finish(self, w: int, error: BaseException | None) -> None:
        with self._cond:
            self._finished[w] = True
            if error is not None and self._failed is None:
                self._failed = error
            self._collect()

    def fail(self, error: BaseException) -> None:
        """Stop every writer (at its next load or release): another writer failed, or Ctrl-C."""
        with self._cond:
            if self._failed is None:
                self._failed = error
            self._cond.notify_all()

    def close(self) -> None:
        """Drop whatever is left (entries nobody released)."""
        with self._cond:
            for key in [k for k, e in self._entries.items() if not e.loading]:
                self._drop(key)

    def _check(self) -> None:
        if self._failed is not None:
            raise Aborted("another output of the ladder failed")


class _WriterScope:
    def __init__(self, sources: SharedSources, index: int) -> None:
        self.sources, self.index = sources, index

    def __enter__(self) -> Self:
        self.sources._local.writer = self.index
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.sources._local.writer = None
        self.sources._finish(self.index, exc)


def _nothing() -> None:
    return None


class SharedPieces:
    """Pieces of output tensors that several writers compute alike, computed once.

    Two outputs of a ladder often hold a tensor in the same type (the q6_K output head of q6_k,
    q5_k_m and q4_k_m; most tensors of q4_k_s and q4_k_m). ``takers`` says how many writers write
    each ``(name, shape, type)``; the first writer to reach a piece of such a tensor (a chunk of
    rows, :func:`lmconv.streaming.iter_pieces`) submits its job to the compute pool, and the others
    get the same future (they wait in their own threads, never in the pool's), until every one of
    them has taken it. A piece is keyed by the tensor's history too, so two writers that got to a
    tensor by different steps never share it (they would only keep theirs a little longer)."""

    def __init__(self, takers: dict[tuple[str, tuple[int, ...], str], int]) -> None:
        self.takers = {k: n for k, n in takers.items() if n > 1}
        self._lock = threading.Lock()
        self._futures: dict[tuple[Any, ...], list[Any]] = {}  # key → [future, times taken]
        self.computed = 0
        self.reused = 0

    def submit(self, pool: Executor, t: Tensor, index: int, job: Callable[[], np.ndarray]) -> Future[np.ndarray]:
        n = self.takers.get((t.name, t.shape, t.dtype.name), 0)
        if n < 2:
            return pool.submit(job)
        key = (t.name, t.shape, t.dtype.name, t.history, index)
        with self._lock:
            entry = self._futures.get(key)
            if entry is None:
                self.computed += 1
                self._futures[key] = [pool.submit(_read_only, job), 1]
                return self._futures[key][0]
            entry[1] += 1
            self.reused += 1
            if entry[1] >= n:
                del self._futures[key]
            return entry[0]

    def close(self) -> None:
        with self._lock:
            self._futures.clear()


def _read_only(job: Callable[[], np.ndarray]) -> np.ndarray:
    piece = np.asarray(job()).view()
    piece.flags.writeable = False  # several writers write it out: none may change it
    return piece
