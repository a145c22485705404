"""``lmconv batch JOBS.toml``: many conversions and ladders (a catalogue), locally or on Ray.

:func:`run_batch` reads the jobs file (:mod:`.jobs`, ``schemas/batch.schema.json``), runs every job
on an engine — local worker processes (:mod:`.local`) or Ray tasks (:mod:`.ray_engine`) — each job
as :func:`.run.run_job` does it, and ends with a report (:mod:`.report`). One job's failure is its
entry in the report; the others run to the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .jobs import Job, load_jobs
from .report import exit_code, make_report, summary_table, write_report

__all__ = ["Job", "default_report_path", "exit_code", "load_jobs", "run_batch", "summary_table", "write_report"]

ENGINES = ("local", "ray")


def default_report_path(jobs_file: Path) -> Path:
    """``jobs.toml`` → ``jobs.report.json`` beside it."""
    return jobs_file.with_name(jobs_file.stem + ".report.json")


def run_batch(jobs_file: str | Path, *, engine: str = "local", workers: int | None = None, verify: bool = False,
              retries: int = 3, address: str | None = None, cpus_per_job: float = 1.0,
              on_done: Callable[[dict[str, Any]], None] = lambda entry: None) -> dict[str, Any]:
    """Run every job of ``jobs_file``; return the report (the caller writes it and sets the exit code)."""
    if engine not in ENGINES:
        raise UsageError(f"unknown engine {engine!r}; choose {' or '.join(ENGINES)}")
    if workers is not None and workers < 1:
        raise UsageError("--jobs must be at least 1")
    if retries < 0:
        raise UsageError("--retries must be 0 or more")
    if cpus_per_job <= 0:
        raise UsageError("--cpus-per-job must be more than 0")
    path = Path(jobs_file)
    jobs = load_jobs(path)
    started, t0 = time.time(), time.perf_counter()
    if engine == "ray":
        from .ray_engine import run_ray

        entries = run_ray(jobs, address=address, cpus_per_job=cpus_per_job, verify_all=verify, retries=retries,
                          on_done=on_done)
    else:
        from .local import machine_jobs, run_local

        entries = run_local(jobs, workers=workers or machine_jobs(len(jobs)), verify_all=verify, retries=retries,
                            on_done=on_done)
    return make_report(path, engine, entries, started, time.perf_counter() - t0)
