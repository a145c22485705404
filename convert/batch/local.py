"""The local engine: ``--jobs N`` worker processes here, each running one job at a time.

Workers are started with ``spawn`` (no thread or lock of this process is inherited) and take jobs
until none are left, so lmconv and its plugins are imported once per worker, not per job. A job
that fails is its entry in the report. A worker that dies without a result (a signal, the OOM
killer) takes no other job with it: a new worker takes its place, and its job is started again up
to ``retries`` times, as Ray retries a task whose worker died.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

from .jobs import Job


def machine_jobs(n_jobs: int) -> int:
    """How many jobs run at once by default: one per core, at most one per 2 GB of available
    memory, never more than there are jobs."""
    cores = os.cpu_count() or 1
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        avail = 0
    by_memory = max(1, avail // (2 << 30)) if avail else cores
    return max(1, min(cores, by_memory, n_jobs))


def _worker(conn: Connection, verify_all: bool, threads: int) -> None:
    """A worker's life: run each job it is sent, send back its entry; stop at None."""
    os.environ["LMCONV_THREADS"] = str(threads)  # the cores are shared by the jobs running at once
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from .run import run_job

    try:
        while True:
            job = conn.recv()
            if job is None:
                return
            conn.send(run_job(job, verify_all))
    except (EOFError, KeyboardInterrupt):
        return


class _Worker:
    def __init__(self, ctx: Any, verify_all: bool, threads: int) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker, args=(child, verify_all, threads), name="lmconv-batch-worker")
        self.proc.start()
        child.close()
        self.job: Job | None = None

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join()
        self.conn.close()


def run_local(jobs: list[Job], *, workers: int, verify_all: bool, retries: int,
              on_done: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
    """Run every job, ``workers`` at a time; ``on_done(entry)`` as each one ends. Returns the
    entries in the order of ``jobs``."""
    ctx = mp.get_context("spawn")
    workers = max(1, min(workers, len(jobs)))
    threads = max(1, (os.cpu_count() or 1) // workers)
    queue = list(jobs)
    attempts = {j.id: 0 for j in jobs}
    results: dict[str, dict[str, Any]] = {}
    pool = [_Worker(ctx, verify_all, threads) for _ in range(workers)]

    def finish(job: Job, entry: dict[str, Any]) -> None:
        entry["attempts"] = attempts[job.id]
        results[job.id] = entry
        on_done(entry)

    try:
        while queue or any(w.job for w in pool):
            for w in pool:
                if w.job is None and queue:
                    w.job = queue.pop(0)
                    attempts[w.job.id] += 1
                    w.conn.send(w.job.to_dict())
            busy = {w.conn: w for w in pool if w.job} | {w.proc.sentinel: w for w in pool if w.job}
            for ready in wait(list(busy)):
                w = busy[ready]  # type: ignore[index]
                if w.job is None:
                    continue  # its result and its sentinel were both ready: handled once
                job, entry = w.job, None
                try:
                    if w.conn.poll():
                        entry = w.conn.recv()
                except (EOFError, OSError):
                    entry = None
                if entry is not None:
                    w.job = None
                    finish(job, entry)
                    continue
                if w.proc.is_alive():
                    continue
                # The worker died in the middle of the job: a new one takes its place.
                code = w.proc.exitcode
                w.job = None
                w.conn.close()
                pool[pool.index(w)] = _Worker(ctx, verify_all, threads)
                if attempts[job.id] <= retries:
                    queue.insert(0, job)
                else:
                    finish(job, _died(job, code, attempts[job.id]))
    except BaseException:
        for w in pool:
            if w.proc.is_alive():
                w.proc.terminate()  # SIGTERM; a staging folder left behind goes with the next run there
        raise
    finally:
        for w in pool:
            w.stop()
    return [results[j.id] for j in jobs]


def _died(job: Job, exitcode: int | None, attempts: int) -> dict[str, Any]:
    how = f"signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"exit code {exitcode}"
    return {"id": job.id, "source": job.source, "status": "failed", "exit_code": 1, "seconds": 0.0, "bytes": 0,
            "error": f"its worker process died ({how}) in each of {attempts} attempt(s); no output was written",
            "outputs": [], "skipped_outputs": 0, "attempts": attempts, "pid": None, "host": None, "warnings": []}
