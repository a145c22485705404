"""A jobs file (TOML, ``schemas/batch.schema.json``) read into :class:`Job` objects.

Problems with the file itself — it cannot be read, it is not TOML, it breaks the schema, two jobs
share an id or an output — stop the batch before any job runs, with one line naming the file and
the problem (:func:`load_jobs`). Problems a job meets when it runs (a missing source, an unknown
quantisation type, an unknown plugin option) fail that job alone.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError, UsageError
from .schema import first_error

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
SETTINGS = ("out", "quants", "quant", "dtype", "to", "force", "verify", "strict", "config", "tokenizer", "options")


@dataclass
class Job:
    """One job: ``source`` to ``target`` (one conversion), or to ``out`` with ``quants`` (a ladder)."""

    id: str
    index: int
    source: str
    target: str | None = None
    out: str | None = None
    quants: list[str] = field(default_factory=list)
    name: str | None = None
    quant: str | None = None
    dtype: str | None = None
    to: str | None = None
    force: bool = False
    verify: bool = False
    strict: bool = False
    config: str | None = None
    tokenizer: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def is_ladder(self) -> bool:
        return self.target is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_jobs(path: str | os.PathLike[str]) -> list[Job]:
    """Every job of the jobs file ``path``, paths made absolute (relative ones are relative to the
    file's folder). Raises :class:`InputError` (exit 3) when it cannot be read and
    :class:`UsageError` (exit 2) when it is not TOML or not a jobs file."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("no such jobs file", path=file) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the jobs file: {getattr(exc, 'strerror', None) or exc}", path=file) from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"is not valid TOML: {exc}", path=file) from None
    problem = first_error(doc)
    if problem:
        raise UsageError(f"is not a valid jobs file: {problem} (see schemas/batch.schema.json)", path=file)
    base = file.resolve().parent
    defaults = doc.get("defaults", {})
    jobs = [_job(i, entry, defaults, base, file) for i, entry in enumerate(doc["jobs"])]
    _check_unique(jobs, file)
    return jobs


def _job(i: int, entry: dict[str, Any], defaults: dict[str, Any], base: Path, file: Path) -> Job:
    where = f"jobs[{i}]"
    if "target" in entry and ("quants" in entry or "out" in entry):
        raise UsageError(f"is not a valid jobs file: {where}: a job has either target (one output) or "
                         f"quants and out (a ladder), not both", path=file)
    if "quant" in entry and "quants" in entry:
        raise UsageError(f"is not a valid jobs file: {where}: quant goes with target, quants with out", path=file)
    single = "target" in entry
    merged = {k: v for k, v in defaults.items() if not (single and k in ("quants", "out"))
              and not (not single and k == "quant")}
    merged.update(entry)
    merged["options"] = {**defaults.get("options", {}), **entry.get("options", {})}
    if not single and ("quants" not in merged or "out" not in merged):
        raise UsageError(f"is not a valid jobs file: {where}: give target (one output), or quants and out "
                         f"(a ladder), in the job or in [defaults]", path=file)
    quants = merged.get("quants", [])
    if isinstance(quants, str):
        quants = [q for q in (s.strip() for s in quants.split(",")) if q]
    return Job(
        id=merged.get("id") or f"job-{i + 1}", index=i, source=_source(merged["source"], base),
        target=_path(merged.get("target"), base), out=_path(merged.get("out"), base), quants=list(quants),
        name=merged.get("name"), quant=merged.get("quant"), dtype=merged.get("dtype"), to=merged.get("to"),
        force=bool(merged.get("force", False)), verify=bool(merged.get("verify", False)),
        strict=bool(merged.get("strict", False)), config=_path(merged.get("config"), base),
        tokenizer=_path(merged.get("tokenizer"), base), options=dict(merged["options"]),
    )


def _path(value: str | None, base: Path) -> str | None:
    if value is None:
        return None
    p = Path(os.path.expanduser(value))
    text = str(p if p.is_absolute() else base / p)
    return text + os.sep if value.endswith(("/", os.sep)) else text  # a trailing slash means a folder


def _source(value: str, base: Path) -> str:
    """A path (relative to the jobs file), or a hub id when it looks like one and no such path exists."""
    local = _path(value, base)
    assert local is not None
    if not Path(local).exists() and not os.path.lexists(local) and HUB_ID.match(value) and not value.startswith("."):
        return value
    return local


def _check_unique(jobs: list[Job], file: Path) -> None:
    seen: dict[str, int] = {}
    for job in jobs:
        if job.id in seen:
            raise UsageError(f"is not a valid jobs file: jobs[{seen[job.id]}] and jobs[{job.index}] are both "
                             f"{job.id!r}", path=file)
        seen[job.id] = job.index
    targets: dict[str, str] = {}
    for job in jobs:
        for out in _outputs_known_now(job):
            key = os.path.normcase(os.path.abspath(out))
            if key in targets:
                raise UsageError(f"is not a valid jobs file: {targets[key]} and {job.id} both write {out}", path=file)
            targets[key] = job.id


def _outputs_known_now(job: Job) -> list[str]:
    """The outputs a job will write, when they can be told without loading anything that may fail."""
    if not job.is_ladder:
        return [str(job.target).rstrip("/" + os.sep)]
    from ..ladder import ladder_format, ladder_paths

    try:
        return [str(p) for p in ladder_paths(job.source, job.out or ".", job.quants, ladder_format(job.to), job.name)]
    except UsageError:
        return []  # the job fails alone when it runs, with the reason
