"""``lmconv SRC DST/ --quant q8_0,q6_k,…``: a quant ladder from the convert command (lmconv.ladder).

A comma list in ``--quant`` asks for one output per type in the folder DST, named
``<model name>-<TYPE>.gguf``; the convert command hands such a request here. Progress is one bar
per output on a terminal, and one line per output as it is completed otherwise.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

from .app import _err, _human, _warn


class _Bars:
    """One byte-count bar per output on stderr (a terminal only, never with --quiet)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.bar: Any = None
        self.tasks: list[Any] = []
        self.lock = threading.Lock()

    def start(self, labels: list[str], totals: list[int]) -> None:
        if not self.enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

        self.bar = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                            TransferSpeedColumn(), TimeRemainingColumn(), transient=True, console=Console(stderr=True))
        self.tasks = [self.bar.add_task(label, total=max(1, total)) for label, total in zip(labels, totals)]
        self.bar.start()

    def advance(self, rung: int, n: int) -> None:
        if self.bar is not None:
            with self.lock:
                self.bar.advance(self.tasks[rung], n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def run_ladder(src: str, dst: str, quant: str, *, to: str | None, dtype: str | None, force: bool,
               config: str | None, tokenizer: str | None, verify: bool, dry_run: bool, as_json: bool, quiet: bool,
               extra: dict[str, Any]) -> None:
    from ..errors import VerificationError
    from ..ladder import convert_ladder, ladder_format, ladder_paths, parse_quants

    names = parse_quants(quant)
    fmt = ladder_format(to)
    text = os.fspath(dst)
    named_like_a_file = not text.endswith(("/", os.sep)) and any(text.lower().endswith(e) for e in fmt.extensions)
    if os.path.isfile(text) or (named_like_a_file and not os.path.isdir(text)):
        paths = ", ".join(p.name for p in ladder_paths(src, "DST", names, fmt))
        raise _usage(f"{dst}: --quant with several types writes one file per type ({paths}) into a folder; "
                     f"give a folder as DST")
    bars = _Bars(not quiet)
    start = time.perf_counter()
    started: dict[int, float] = {}

    def on_model(model: Any, rungs: list[Any]) -> None:
        base = os.path.basename(src.rstrip("/")) or src
        bars.start([f"{base} → {r.path.name}" for r in rungs], [r.nbytes for r in rungs])

    def done(rung: int) -> None:
        started[rung] = time.perf_counter() - start

    try:
        result = convert_ladder(src, dst, names, to=to, dtype=dtype, force=force, config=config, tokenizer=tokenizer,
                                dry_run=dry_run, extra=extra, progress=bars.advance, warn=_warn,
                                on_model=on_model if not dry_run else (lambda m, r: None), rungs_done=done)
    finally:
        bars.close()
    if dry_run:
        _print_plans(result, as_json)
        return
    if not quiet:
        for rung, res in zip(result.rungs, result.results):
            size = sum(_size(p) for p in res.outputs)
            when = started.get(result.rungs.index(rung), time.perf_counter() - start)
            _err(f"lmconv: wrote {', '.join(str(p) for p in res.outputs)} ({_human(size)}, {rung.quant}) in {when:.1f}s")
        _err(f"lmconv: {len(result.results)} outputs from one read of {src} in {time.perf_counter() - start:.1f}s")
    if verify:
        from ..verify import verify_conversion

        failed = []
        for rung, res in zip(result.rungs, result.results):
            report = verify_conversion(res, quiet=True)
            if not quiet:
                _err(f"lmconv: verify {rung.path.name}: {report.summary()}")
            if not report.ok:
                failed.append(rung.path.name)
        if failed:
            raise VerificationError(f"verification failed for {', '.join(failed)} (the files were kept)", path=dst)


def _usage(msg: str) -> Exception:
    from ..errors import UsageError

    return UsageError(msg)


def _size(path: Any) -> int:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)
    return os.path.getsize(path)


def _print_plans(result: Any, as_json: bool) -> None:
    """A dry-run ladder: per output, its file, tensor count, bytes and the types it would hold."""
    import json
    from collections import Counter

    if as_json:
        doc = [{"output": str(r.path), "quant": r.quant, "plan": p.to_dict()} for r, p in zip(result.rungs, result.plans)]
        sys.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        return
    lines = []
    for rung, plan in zip(result.rungs, result.plans):
        doc = plan.to_dict()
        types = Counter(t["dtype"] for t in doc["tensors"])
        mix = ", ".join(f"{n} {d}" for d, n in types.most_common())
        lines.append(f"{rung.path}: {doc['totals']['tensors']} tensors, {_human(doc['totals']['bytes'])} ({mix})")
    lines.append("dry run: nothing was written")
    sys.stdout.write("\n".join(lines) + "\n")
