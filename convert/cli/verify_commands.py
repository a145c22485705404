"""``lmconv verify`` and ``lmconv roundtrip``: prove that the numbers survived."""

from __future__ import annotations

import sys
from typing import Annotated, Any, Optional

import typer

from .app import _state, _warn, app


def _print_report(report: Any, title: str) -> None:
    """A rich table of the per-tensor comparison, then config, tokenizer and logits findings."""
    from rich.console import Console
    from rich.table import Table

    from ..bounds import fmt as _fmt

    con = Console(width=None if sys.stdout.isatty() else 180)
    con.print(f"[bold]{title}[/bold]")
    table = Table("tensor", "shape", "dtype", "steps", "max|diff|", "rel err", "rel bound", "cosine", "SNR dB", "status")
    for t in report.tensors:
        name = t.name + (f" (= {', '.join(t.aliases)})" if t.aliases else "")
        shape = "×".join(map(str, t.shape_a if t.shape_a is not None else t.shape_b or [])) or "scalar"
        if t.shape_a is not None and t.shape_b is not None and t.shape_a != t.shape_b:
            shape = f"{'×'.join(map(str, t.shape_a))} → {'×'.join(map(str, t.shape_b))}"
        dtype = t.dtype_a if t.dtype_a == t.dtype_b else f"{t.dtype_a or '-'} → {t.dtype_b or '-'}"
        snr = "inf" if t.exact else _fmt(t.snr_db)
        cos = "-" if t.cosine is None else f"{t.cosine:.6f}"
        style = "green" if t.ok else "red"
        table.add_row(name, shape, dtype, "+".join(t.steps) or "-", _fmt(t.max_abs_diff), _fmt(t.rel_err),
                      _fmt(t.rel_bound), cos, snr, f"[{style}]{t.status}[/{style}]")
    con.print(table)
    if report.skipped:
        con.print("skipped (buffers, not weights): " + ", ".join(report.skipped))
    cfg = report.config
    if cfg.changed:
        for k, v in cfg.changed.items():
            con.print(f"[red]config {k}[/red]: {v['a']!r} → {v['b']!r}")
    if cfg.only_in_a or cfg.only_in_b:
        con.print(f"config keys only in A: {', '.join(cfg.only_in_a) or '-'}; only in B: {', '.join(cfg.only_in_b) or '-'}")
    tok = report.tokenizer
    con.print(f"tokenizer: compared {tok.compared}" + ("" if tok.ok else " — differs"))
    for d in tok.differences:
        con.print(f"  [red]{d['field']}[/red]: {d['detail']}")
    for note in [*cfg.notes, *tok.notes, *report.notes]:
        con.print(f"note: {note}")
    if report.logits:
        lg = report.logits
        con.print(f"logits ({lg['runtime_a']} vs {lg['runtime_b']}, {lg['n_tokens']} tokens): max|diff| {_fmt(lg['max_abs_diff'])}, "
                  f"max|diff|/max|logit| {_fmt(lg['rel_max_diff'])}, KL mean {_fmt(lg['kl_mean'])} max {_fmt(lg['kl_max'])}, "
                  f"top-1 agreement {100 * lg['top1_agreement']:.1f}%")


@app.command("verify", help="Compare model B against model A: every tensor (bit-exact, or within the bound of the cast/quantisation "
                            "it went through), config and tokenizer; optionally the logits. Exit 6 when outside the bounds.")
def verify_cmd(
    a: Annotated[str, typer.Argument(help="The reference model (file, sharded index or folder).")],
    b: Annotated[str, typer.Argument(help="The model to check against it.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON (schemas/verify-report.schema.json).")] = False,
    atol: Annotated[Optional[float], typer.Option("--atol", help="Absolute tolerance: replaces the derived bounds by atol + rtol·|a|.")] = None,
    rtol: Annotated[Optional[float], typer.Option("--rtol", help="Relative tolerance (see --atol).")] = None,
    policy: Annotated[Optional[str], typer.Option("--policy", help="What B went through, for every tensor: lossless, f16, bf16, q8_0, q4_K … (default: read from B).")] = None,
    logits: Annotated[bool, typer.Option("--logits", help="Also run both models and compare their logits.")] = False,
    text: Annotated[Optional[str], typer.Option("--text", help="Text to tokenise for --logits (default: fixed token ids).")] = None,
    runtime: Annotated[str, typer.Option("--runtime", help="numpy (reference forward) or llama.cpp (for GGUF files).")] = "numpy",
    base: Annotated[Optional[str], typer.Option("--base", help="LoRA adapters: their base model (needed for a GGUF adapter that lmconv did not write).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the one-line summary.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    from ..adapters import is_adapter
    from ..errors import UsageError, VerificationError
    from ..pipeline import read_model
    from ..verify import verify_models

    _state["quiet"] = quiet
    extra = {"base": base} if base else None
    model_a = read_model(a, warn=_warn, extra=extra)
    model_b = read_model(b, warn=_warn, extra=extra)
    if is_adapter(model_a) or is_adapter(model_b):  # two adapters: compared by the change each makes
        from ..verify.adapters import verify_adapters

        if not (is_adapter(model_a) and is_adapter(model_b)):
            raise UsageError(f"{a if is_adapter(model_a) else b} is a LoRA adapter and the other is not: compare two "
                             "adapters, or merge it first (lmconv merge BASE ADAPTER DST)")
        if logits or text is not None or policy:
            raise UsageError("two LoRA adapters are compared by their deltas; --logits and --policy apply to models")
        report = verify_adapters(model_a, model_b, atol=atol, rtol=rtol)
    else:
        report = verify_models(model_a, model_b, policy=policy, atol=atol, rtol=rtol, logits=logits or text is not None,
                               text=text, runtime=runtime)
    if as_json:
        sys.stdout.write(report.to_json() + "\n")
    elif not quiet:
        _print_report(report, f"{b}  vs  {a}")
    if not report.ok:
        raise VerificationError(f"does not match {a}: {report.failure_line()}", path=b)
    if not as_json:
        sys.stdout.write(f"lmconv: verify: {report.summary()}\n")


@app.command("roundtrip", help="Convert FILE to --via FORMAT and back in a temporary folder, and verify both hops against FILE.")
def roundtrip_cmd(
    file: Annotated[str, typer.Argument(help="A model file, sharded index or folder.")],
    via: Annotated[str, typer.Option("--via", help="The format to go through (see `lmconv formats`).")],
    dtype: Annotated[Optional[str], typer.Option("--dtype", help="Cast on the way out: f32, f16 or bf16.")] = None,
    quant: Annotated[Optional[str], typer.Option("--quant", help="Quantise on the way out (GGUF): q8_0, q4_K …")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print both reports as JSON.")] = False,
    atol: Annotated[Optional[float], typer.Option("--atol", help="Absolute tolerance (replaces the derived bounds).")] = None,
    rtol: Annotated[Optional[float], typer.Option("--rtol", help="Relative tolerance (replaces the derived bounds).")] = None,
    keep: Annotated[Optional[str], typer.Option("--keep", help="Keep the intermediate and final files in this (new) folder.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the summary.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    import json
    import shutil
    import tempfile
    from pathlib import Path

    from ..errors import OutputError, UsageError, VerificationError
    from ..pipeline import convert, detect_format, read_model
    from ..registry import get_registry
    from ..verify import verify_models

    _state["quiet"] = quiet
    src = Path(file)
    src_fmt = detect_format(src)
    via_fmt = get_registry().format(via)
    if not (via_fmt.can_write and via_fmt.can_read):
        raise UsageError(f"format {via_fmt.name} cannot be both written and read back")
    if not src_fmt.can_write:
        raise UsageError(f"{src}: format {src_fmt.name} can be read but not written, so there is no way back")
    if keep:
        work = Path(keep)
        if work.exists() and any(work.iterdir()):
            raise OutputError("exists and is not empty", path=work)
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="lmconv-roundtrip-"))
    try:
        (work / "via").mkdir()
        (work / "back").mkdir()
        stem = src.name.rstrip("/") or "model"
        for ext in src_fmt.extensions:
            if stem.lower().endswith(ext):
                stem = stem[: -len(ext)]
                break
        mid = work / "via" / (stem if via_fmt.is_directory else stem + via_fmt.extensions[0])
        back = work / "back" / (src.name if not src_fmt.is_directory else stem)
        convert(src, f"{mid}/" if via_fmt.is_directory else mid, to=via_fmt.name, dtype=dtype, quant=quant, warn=_warn)
        convert(mid, f"{back}/" if src_fmt.is_directory else back, to=src_fmt.name, warn=_warn)
        model_a = read_model(src, warn=_warn)
        out_report = verify_models(model_a, read_model(mid, warn=_warn), atol=atol, rtol=rtol)
        # The way back is lossless; the lossy steps of the way out are what the final copy may show.
        policy = {n: t.steps for t in out_report.tensors for n in (t.name, *t.aliases) if t.status in ("exact", "within")}
        back_report = verify_models(model_a, read_model(back, warn=_warn), policy=policy, atol=atol, rtol=rtol)
        if as_json:
            doc = {"ok": out_report.ok and back_report.ok, "via": via_fmt.name, "intermediate": out_report.to_dict(),
                   "final": back_report.to_dict()}
            sys.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
        elif not quiet:
            _print_report(out_report, f"{src} → {via_fmt.name}")
            _print_report(back_report, f"{src} → {via_fmt.name} → {src_fmt.name}")
        for label, rep in (("via " + via_fmt.name, out_report), ("back", back_report)):
            if not rep.ok:
                raise VerificationError(f"round trip through {via_fmt.name} failed ({label}): {rep.failure_line()}", path=src)
        if not as_json:
            sys.stdout.write(f"lmconv: roundtrip via {via_fmt.name}: out {out_report.summary()}\n")
            sys.stdout.write(f"lmconv: roundtrip via {via_fmt.name}: back {back_report.summary()}\n")
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)

