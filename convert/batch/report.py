"""The end of a batch: the JSON report (schemas/batch-report.schema.json) and the summary table."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from lmconv.units import format_size


def make_report(jobs_file: Path, engine: str, entries: list[dict[str, Any]], started: float, elapsed: float) -> dict[str, Any]:
    counts = {s: sum(1 for e in entries if e["status"] == s) for s in ("ok", "skipped", "failed")}
    return {
        "jobs_file": str(jobs_file),
        "engine": engine,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": round(elapsed, 3),
        "summary": {**counts, "jobs": len(entries), "bytes": sum(e["bytes"] for e in entries)},
        "jobs": entries,
    }


def exit_code(entries: list[dict[str, Any]]) -> int:
    """0 when no job failed; else the failed jobs' exit code when they share one, 1 when they differ."""
    codes = {e["exit_code"] for e in entries if e["status"] == "failed"}
    if not codes:
        return 0
    return codes.pop() if len(codes) == 1 else 1


def write_report(report: dict[str, Any], path: Path) -> None:
    """Write ``report`` to ``path`` whole or not at all (a temporary file beside it, then a rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()




def _verified(entry: dict[str, Any]) -> str:
    marks = [o["verify"] for o in entry["outputs"]]
    if not marks:
        return "-"
    if all(m == "ok" for m in marks):
        return "ok"
    if any(m == "failed" for m in marks):
        return "FAILED"
    return "partly" if any(m == "ok" for m in marks) else "not run"


def summary_table(report: dict[str, Any]) -> str:
    rows = [("job", "status", "time", "outputs", "bytes", "verify", "error")]
    for e in report["jobs"]:
        outs = f"{len(e['outputs'])}" + (f" ({e['skipped_outputs']} kept)" if e.get("skipped_outputs") else "")
        retried = f" ×{e['attempts']}" if e.get("attempts", 1) > 1 else ""
        error = (e["error"] or "")[:100] + ("…" if e["error"] and len(e["error"]) > 100 else "")
        rows.append((e["id"], e["status"] + retried, f"{e['seconds']:.1f}s", outs, format_size(e["bytes"]), _verified(e), error))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    s = report["summary"]
    lines.append(f"{s['jobs']} jobs: {s['ok']} ok, {s['skipped']} skipped (outputs there and verified), "
                 f"{s['failed']} failed; {format_size(s['bytes'])} in {report['seconds']:.1f}s ({report['engine']})")
    return "\n".join(lines)
