"""``lmconv batch JOBS.toml``: run a jobs file (see lmconv.batch and schemas/batch.schema.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from .app import _err, _human, _state, app


BATCH_HELP = (
    "Run the jobs of JOBS (a TOML file, schemas/batch.schema.json): conversions and quant ladders, each "
    "job in a worker process here (--jobs N at a time) or as a Ray task on a cluster (--engine ray, "
    "RAY_ADDRESS or `ray start --head`; pip install 'lmconv[ray]'). A job whose worker dies is retried. "
    "Jobs whose outputs exist and verify are skipped; a failing job fails alone. Ends with a summary table "
    "and a JSON report (--report, default JOBS.report.json); exits 0 when no job failed, else the failed "
    "jobs' exit code (1 when they differ).")


def install_batch_command() -> None:
    """Register ``batch`` on the app (after the other sub-commands, so that ``lmconv --help`` lists it
    beside ``convert``)."""
    app.command("batch", help=BATCH_HELP,
                short_help="Run a jobs file of conversions and quant ladders, here or on a Ray cluster.")(batch_cmd)


def batch_cmd(
    jobs_file: Annotated[str, typer.Argument(metavar="JOBS", help="The jobs file (TOML).")],
    engine: Annotated[str, typer.Option("--engine", help="local (worker processes) or ray (tasks on a Ray cluster).")] = "local",
    jobs: Annotated[int | None, typer.Option("--jobs", "-j", help="Local engine: jobs at once (default: one per core, "
                                                "at most one per 2 GB of free memory); the cores are shared out.")] = None,
    verify: Annotated[bool, typer.Option("--verify", help="Verify every output against its source.")] = False,
    report: Annotated[str | None, typer.Option("--report", help="Where to write the JSON report (default: "
                                                  "JOBS.report.json beside the jobs file).")] = None,
    retries: Annotated[int, typer.Option("--retries", help="Times a job whose worker died is started again (Ray's "
                                         "max_retries).")] = 3,
    address: Annotated[str | None, typer.Option("--address", help="Ray: the cluster (default: RAY_ADDRESS, else "
                                                   "the local one `ray start --head` runs).")] = None,
    cpus_per_job: Annotated[float, typer.Option("--cpus-per-job", help="Ray: CPUs each task asks for (and compute "
                                                "threads it uses).")] = 1.0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors and the summary table.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> int:
    import sys

    from ..batch import default_report_path, exit_code, run_batch, summary_table, write_report

    _state["quiet"] = quiet
    done = [0]

    def on_done(entry: dict[str, Any]) -> None:
        done[0] += 1
        if quiet:
            return
        line = f"lmconv: batch: {entry['id']} {entry['status']} in {entry['seconds']:.1f}s"
        if entry["status"] == "failed":
            line += f": {entry['error']}"
        elif entry["bytes"]:
            n = len(entry["outputs"])
            line += f" ({n} output{'s' if n != 1 else ''}, {_human(entry['bytes'])})"
        _err(line)

    result = run_batch(jobs_file, engine=engine, workers=jobs, verify=verify, retries=retries, address=address,
                       cpus_per_job=cpus_per_job, on_done=on_done)
    out = Path(report) if report else default_report_path(Path(jobs_file))
    try:
        write_report(result, out)
    except OSError as exc:
        from ..errors import OutputError

        raise OutputError(f"cannot write the report: {exc.strerror or exc}", path=out) from None
    sys.stdout.write(summary_table(result) + "\n")
    if not quiet:
        _err(f"lmconv: batch: report written to {out}")
    return exit_code(result["jobs"])
