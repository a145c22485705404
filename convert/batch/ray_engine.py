"""The Ray engine (``lmconv batch --engine ray``): each job a Ray task on an existing cluster.

The cluster is ``--address``, else ``RAY_ADDRESS``, else the one ``ray start --head`` left running
on this machine. Every node needs lmconv installed (``pip install 'lmconv[ray]'``) and the jobs'
paths (a shared filesystem). A task asks for ``--cpus-per-job`` CPUs and uses that many compute
threads. A task whose worker dies (killed, out of memory, node lost) is retried by Ray up to
``--retries`` times; a job that fails is not (its error is in the report). Outputs are staged and
renamed into place as always, so a killed attempt leaves no output; its staging folder is removed
by the next attempt in that folder (its process is gone). An address where no Ray cluster answers is
refused in seconds, in one line (:func:`_probe`), not after Ray's minutes of retries.

Ray is imported here only when this engine runs: it is an extra, ``lmconv[ray]``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from ..errors import MissingDependencyError, UsageError
from .jobs import Job


class Attempts:
    """A counter of attempts per job, kept by a small Ray actor (a retried task starts again from scratch)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def hit(self, job_id: str) -> int:
        self.counts[job_id] = self.counts.get(job_id, 0) + 1
        return self.counts[job_id]

    def get(self) -> dict[str, int]:
        return dict(self.counts)


def ray_job(job: dict[str, Any], verify_all: bool, threads: int, attempts: Any) -> dict[str, Any]:
    """The task: count the attempt, then run the job with ``threads`` compute threads."""
    import ray

    ray.get(attempts.hit.remote(job["id"]))
    os.environ["LMCONV_THREADS"] = str(threads)
    from .run import run_job

    return run_job(job, verify_all)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise MissingDependencyError("--engine ray needs Ray; install it with: pip install 'lmconv[ray]'") from None
    return ray


def run_ray(jobs: list[Job], *, address: str | None, cpus_per_job: float, verify_all: bool, retries: int,
            on_done: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
    """Run every job as a Ray task; ``on_done(entry)`` as each one ends. Entries in the order of ``jobs``."""
    ray = _import_ray()
    import logging

    where = address or os.environ.get("RAY_ADDRESS") or "auto"
    no_cluster = "; start one with `ray start --head` or point RAY_ADDRESS (or --address) at one"
    if not _reachable(where):  # Ray itself would retry an address nobody answers at for minutes
        raise UsageError(f"no Ray cluster answers at {where}{no_cluster}")
    problem = _probe(where)
    if problem:
        raise UsageError(f"no Ray cluster answers at {where} ({problem}){no_cluster}")
    try:
        ray.init(address=where, logging_level=logging.ERROR, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = " ".join(str(exc).split())[:200]
        raise UsageError(f"cannot connect to a Ray cluster at {where} ({first}){no_cluster}") from None
    try:
        counter = ray.remote(num_cpus=0)(Attempts).remote()
        task = ray.remote(ray_job).options(num_cpus=cpus_per_job, max_retries=retries, retry_exceptions=False,
                                           name="lmconv-batch-job")
        threads = max(1, int(cpus_per_job))
        refs = {task.remote(j.to_dict(), verify_all, threads, counter): j for j in jobs}
        results: dict[str, dict[str, Any]] = {}
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    job = refs[ref]
                    try:
                        entry = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        entry = _lost(job, exc)
                    results[job.id] = entry
                    counts = ray.get(counter.get.remote())
                    entry["attempts"] = counts.get(job.id, entry.get("attempts", 1))
                    on_done(entry)
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        return [results[j.id] for j in jobs]
    finally:
        ray.shutdown()


def _reachable(address: str, timeout: float = 3.0) -> bool:
    """Whether something listens at ``address`` (``host:port`` or ``ray://host:port``); True for the
    names Ray resolves itself (``auto``, ``local``)."""
    import socket

    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return True
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            return True
    except OSError:
        return False


CONNECT_TIMEOUT = 15.0  # seconds a Ray cluster has to answer before lmconv gives up on it

# Run in a child process: whether a Ray GCS answers at argv[1] ("auto": the cluster `ray start` left
# here). Exit 0 when it does, 1 (the reason on stdout) when it does not, 3 when this Ray has not these
# (internal) names, and the probe is skipped. Ray's own connect timeouts are shortened for it.
_PROBE = """
import sys
try:
    from ray._private.services import canonicalize_bootstrap_address
    from ray._raylet import GcsClient
except Exception:
    sys.exit(3)
try:
    address = canonicalize_bootstrap_address(sys.argv[1])
    if address is None:
        raise ConnectionError("no running Ray instance was found on this machine")
    GcsClient(address=address).cluster_id
except Exception as exc:
    print(" ".join(str(exc).split())[:200])
    sys.exit(1)
"""


def _probe(address: str, timeout: float = CONNECT_TIMEOUT) -> str | None:
    """Why no Ray cluster answers at ``address`` (None when one does, or when it cannot be told).

    ``ray.init`` retries an address that takes a connection but does not answer as Ray does (another
    service, a proxy, a cluster that hangs) for minutes, printing warnings as it goes; a child process
    asks first, quietly, and is killed after ``timeout`` seconds."""
    import subprocess
    import sys

    if address.startswith("ray://") or address == "local":
        return None  # Ray Client (its own connection timeout) and "start one here" are ray.init's
    env = {**os.environ, "RAY_gcs_rpc_server_connect_timeout_s": "3", "RAY_gcs_rpc_server_reconnect_timeout_s": "5",
           "RAY_BACKEND_LOG_LEVEL": "error"}
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE, address], capture_output=True, text=True, env=env,
                              timeout=timeout, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        return f"no answer in {timeout:.0f} s"
    except OSError:
        return None
    if proc.returncode in (0, 3):
        return None
    lines = [ln.strip() for ln in proc.stdout.splitlines() if ln.strip()]
    return lines[-1] if lines else "something listens there, but not a Ray cluster"  # Ray gave up (it aborts)


def _lost(job: Job, exc: BaseException) -> dict[str, Any]:
    what = type(exc).__name__
    first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
    return {"id": job.id, "source": job.source, "status": "failed", "exit_code": 1, "seconds": 0.0, "bytes": 0,
            "error": f"its Ray task failed ({what}: {first[:200]}) after every retry; no output was written",
            "outputs": [], "skipped_outputs": 0, "attempts": 0, "pid": None, "host": None, "warnings": []}
