"""One job, run where an engine puts it (a local worker process, a Ray task): :func:`run_job`.

A job never raises for a problem of its own: whatever stops it (a missing source, an unknown type,
a verification that fails) becomes its entry in the report, with the one-line message and exit
code ``lmconv convert`` would give. Outputs are written as ``lmconv convert`` writes them (staged,
renamed into place at the end), so a job that dies leaves none.

Outputs that exist already are verified against the source: a job all of whose outputs exist and
verify is skipped; a ladder writes only the outputs it lacks. An output that exists and does not
verify fails the job, unless ``force`` (lmconv never replaces what it did not write without it).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

from ..errors import InputError, LmconvError, OutputError
from .jobs import Job


def plugin_options(given: dict[str, Any]) -> dict[str, Any]:
    """A job's ``options`` table as ``lmconv convert`` would pass its plugin flags (``options.extra``):
    every installed option, parsed, defaults included; an unknown name fails the job."""
    from ..errors import UsageError
    from ..registry import get_registry

    opts = get_registry().options.values()
    by_name = {o.flag[2:]: o for o in opts} | {o.dest: o for o in opts}
    unknown = [k for k in given if k not in by_name]
    if unknown:
        known = ", ".join(sorted(o.flag[2:] for o in opts))
        raise UsageError(f"unknown option {unknown[0]!r} in the job's options (known: {known})")
    raw = {by_name[k].dest: v for k, v in given.items()}
    extra = {}
    for o in opts:
        value = raw.get(o.dest)
        if o.type is list and isinstance(value, str):
            value = [value]
        extra[o.dest] = o.value(value)
    return {k: v for k, v in extra.items() if v not in (None, False, [])}


def expected_outputs(job: Job, extra: dict[str, Any]) -> list[tuple[str | None, Path]]:
    """``(quant of the rung or None, path)`` of every output the job writes."""
    if job.is_ladder:
        from ..ladder import ladder_format, ladder_paths, parse_quants

        quants = parse_quants(job.quants)
        return list(zip(quants, ladder_paths(job.source, job.out or ".", quants, ladder_format(job.to), job.name)))
    from ..formats import WriteOptions
    from ..pipeline import choose_output_format

    fmt = choose_output_format(job.target or "", job.to)
    return [(None, p) for p in fmt.output_paths(Path(job.target or ""), WriteOptions(quant=job.quant, extra=extra))]


def _verify(source: str, outputs: list[Path], model: Any, fmt: str) -> Any:
    from ..pipeline import ConversionResult
    from ..verify import verify_conversion

    return verify_conversion(ConversionResult(Path(source), model.format, fmt, outputs, model), quiet=True)


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


def run_job(job: Job | dict[str, Any], verify_all: bool = False) -> dict[str, Any]:
    """Run ``job`` and return its entry of the report (schemas/batch-report.schema.json)."""
    if isinstance(job, dict):
        job = Job(**job)
    start = time.perf_counter()
    entry: dict[str, Any] = {"id": job.id, "source": job.source, "status": "ok", "error": None, "exit_code": 0,
                             "seconds": 0.0, "bytes": 0, "outputs": [], "skipped_outputs": 0, "attempts": 1,
                             "pid": os.getpid(), "host": socket.gethostname(), "warnings": []}
    verify = job.verify or verify_all
    try:
        _run(job, verify, entry)
    except LmconvError as exc:
        entry.update(status="failed", error=str(exc), exit_code=exc.exit_code)
    except MemoryError:
        entry.update(status="failed", error="out of memory", exit_code=1)
    except Exception as exc:  # noqa: BLE001 - a bug: one line in the report, as the CLI says it
        entry.update(status="failed", error=f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}",
                     exit_code=70)
    entry["seconds"] = round(time.perf_counter() - start, 3)
    entry["bytes"] = sum(o["bytes"] for o in entry["outputs"])
    return entry


def _run(job: Job, verify: bool, entry: dict[str, Any]) -> None:
    from ..pipeline import convert, read_model

    warnings: list[str] = entry["warnings"]
    extra = plugin_options(job.options)
    if job.strict:
        extra["strict"] = True
    wanted = expected_outputs(job, extra)
    todo = wanted
    if not job.force and any(p.exists() for _, p in wanted):
        model = read_model(job.source, config=job.config, tokenizer=job.tokenizer, extra=extra)
        todo = []
        for quant, path in wanted:
            if not path.exists():
                todo.append((quant, path))
                continue
            try:
                report = _verify(job.source, [path], model, job.to or "")
            except InputError as exc:  # not even a model: lmconv did not leave it there (outputs are atomic)
                raise OutputError(f"exists and cannot be read back ({str(exc).removeprefix(f'{path}: ')}); "
                                  f"set force = true to replace it", path=path) from None
            if not report.ok:
                raise OutputError(f"exists and does not verify against {job.source} ({report.summary()}); "
                                  f"set force = true to replace it", path=path)
            entry["outputs"].append({"path": str(path), "bytes": _size(path), "verify": "ok", "detail": report.summary(),
                                     "written": False})
        entry["skipped_outputs"] = len(wanted) - len(todo)
        if not todo:
            entry["status"] = "skipped"
            return
    results: list[Any]
    if job.is_ladder:
        from ..ladder import convert_ladder

        assert job.out is not None
        quants = [q for q, _ in todo]
        ladder = convert_ladder(job.source, job.out, quants, to=job.to, dtype=job.dtype, name=job.name, force=job.force,
                                config=job.config, tokenizer=job.tokenizer, extra=extra, warn=warnings.append)
        results = ladder.results
    else:
        results = [convert(job.source, job.target or "", to=job.to, dtype=job.dtype, quant=job.quant, force=job.force,
                           config=job.config, tokenizer=job.tokenizer, extra=extra, warn=warnings.append)]
    failed = []
    for res in results:
        from ..companions import companion_files

        beside = set(companion_files(res.model)) if len(res.outputs) > 1 else set()
        weights = [Path(p) for p in res.outputs if Path(p).name not in beside]  # config and tokenizer files aside
        record: dict[str, Any] = {"path": str(weights[0]), "bytes": sum(_size(p) for p in weights),
                                  "verify": "not run", "detail": None, "written": True}
        if verify:
            from ..verify import verify_conversion

            report = verify_conversion(res, quiet=True)
            record.update(verify="ok" if report.ok else "failed", detail=report.summary())
            if not report.ok:
                failed.append(Path(record["path"]).name)
        entry["outputs"].append(record)
    if failed:
        entry.update(status="failed", exit_code=6, error=f"verification failed for {', '.join(failed)} (the files were kept)")
