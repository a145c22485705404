"""``lmconv convert SRC DST`` (also plain ``lmconv SRC DST``), with the options plugins declare.

The core's own options are the parameters of :func:`convert_cmd`. Each installed plugin's
:class:`lmconv.options.Option` becomes one more parameter of the command typer sees (built by
:func:`install_convert_command` from the registry), so ``lmconv convert --help`` lists it with the
plugin that declared it; the value, parsed to its type, reaches readers and writers in
``options.extra[dest]``.
"""

from __future__ import annotations

import inspect
import os
import time
from typing import Annotated, Any, Optional

import typer

from ..errors import PluginClashError, UsageError
from .app import _err, _human, _Progress, _state, _warn, app


def convert_cmd(
    src: Annotated[str, typer.Argument(help="Source: a file, a sharded index, or a Hugging Face model folder.")],
    dst: Annotated[str, typer.Argument(help="Target: its extension picks the format; a folder (or trailing /) means an HF folder.")],
    to: Annotated[Optional[str], typer.Option("--to", help="Output format name (see `lmconv formats`); overrides the extension.")] = None,
    dtype: Annotated[Optional[str], typer.Option("--dtype", help="Cast floating tensors: f32, f16 or bf16.")] = None,
    quant: Annotated[Optional[str], typer.Option("--quant", help="Formats that store blocks (GGUF): q8_0, q4_0, q4_k_m … (see `lmconv plugins`). "
                                                   "A comma list (q8_0,q6_k,q4_k_m) with DST a folder is a quant ladder: one read of SRC, "
                                                   "one file per type, named <model name>-<TYPE>.gguf (the model name is SRC's base name).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace DST if it exists.")] = False,
    config: Annotated[Optional[str], typer.Option("--config", help="config.json to use instead of the one beside SRC.")] = None,
    tokenizer: Annotated[Optional[str], typer.Option("--tokenizer", help="Tokenizer files (a folder, or tokenizer.json …) to use instead of those beside SRC.")] = None,
    no_companions: Annotated[bool, typer.Option("--no-companions", help="Do not write config/tokenizer files beside a lone weights file.")] = False,
    verify: Annotated[bool, typer.Option("--verify", help="Read DST back and verify it against SRC.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what would be written (tensors, types, sizes, files) and write nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="With --dry-run: print the plan as JSON (schemas/plan.schema.json).")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Refuse NaN/Inf weights instead of warning.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar, no summary.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
    plugin_options: dict[str, Any] | None = None,
) -> None:
    from ..errors import VerificationError
    from ..pipeline import convert
    from ..verify import verify_conversion

    _state["quiet"] = quiet
    extra = {k: v for k, v in (plugin_options or {}).items() if v not in (None, False, [])}
    if strict:
        extra["strict"] = True
    bar: _Progress | None = None

    def on_model(model: Any) -> None:
        nonlocal bar
        bar = _Progress(model.nbytes, f"{os.path.basename(src.rstrip('/')) or src} → {os.path.basename(dst.rstrip('/'))}", not quiet)

    if as_json and not dry_run:
        raise UsageError("--json goes with --dry-run")
    if quant and "," in quant:  # a quant ladder: one output per type into the folder DST (lmconv.ladder)
        from .ladder_command import run_ladder

        run_ladder(src, dst, quant, to=to, dtype=dtype, force=force, config=config, tokenizer=tokenizer, verify=verify,
                   dry_run=dry_run, as_json=as_json, quiet=quiet, extra=extra)
        return
    start = time.perf_counter()
    try:
        result = convert(
            src, dst, to=to, dtype=dtype, quant=quant, force=force, config=config, tokenizer=tokenizer,
            companions=not no_companions, dry_run=dry_run, extra=extra,
            progress=lambda n: bar.advance(n) if bar else None, warn=_warn,
            on_model=on_model if not dry_run else (lambda m: None),
        )
    finally:
        if bar is not None:
            bar.close()
    if result.plan is not None:
        _print_plan(result.plan, as_json)
        return
    elapsed = time.perf_counter() - start
    if not quiet:
        size = sum(_path_size(p) for p in result.outputs)
        names = ", ".join(str(p) for p in result.outputs)
        _err(f"lmconv: wrote {names} ({_human(size)}, {len(result.model)} tensors, {result.source_format} → {result.target_format}) in {elapsed:.1f}s")
    if verify:
        report = verify_conversion(result, quiet=quiet)
        if not report.ok:
            raise VerificationError(f"verification failed: {report.summary()} (the file was kept)", path=result.outputs[0])


def _print_plan(plan: Any, as_json: bool) -> None:
    """The plan of a --dry-run: one row per tensor as it would be stored, then totals and files."""
    import json
    import sys

    doc = plan.to_dict()
    if as_json:
        sys.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        return
    rows = [("name", "shape", "type", "bytes")]
    for t in doc["tensors"]:
        alias = f" (= {', '.join(t['aliases'])})" if t["aliases"] else ""
        rows.append((t["name"] + alias, "×".join(map(str, t["shape"])) or "scalar", t["dtype"], f"{t['bytes']:,}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    out = []
    for i, r in enumerate(rows):
        out.append(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]:>{widths[3]}}".rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    tot = doc["totals"]
    out.append(f"{tot['tensors']} tensors, {tot['parameters']:,} parameters, {_human(tot['bytes'])} of tensor data")
    out.append(f"{doc['format']}: " + ", ".join(doc["outputs"]))
    if doc["companions"]:
        out.append("beside it: " + ", ".join(doc["companions"]))
    out += [f"note: {n}" for n in doc["notes"]]
    out.append("dry run: nothing was written")
    sys.stdout.write("\n".join(out) + "\n")


def _path_size(path: Any) -> int:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)
    return os.path.getsize(path)


def _parameter(opt: Any) -> inspect.Parameter:
    """The typer parameter of one plugin option."""
    help_text = f"{opt.help} [plugin: {', '.join(opt.plugins)}]"
    kw: dict[str, Any] = {"help": help_text}
    if opt.metavar:
        kw["metavar"] = opt.metavar
    if opt.type is bool:
        annotation: Any = Annotated[bool, typer.Option(opt.flag, **kw)]
        default: Any = False
    elif opt.type is list:
        annotation = Annotated[Optional[list[str]], typer.Option(opt.flag, **kw)]
        default = list(opt.default) if opt.default else None
    else:
        annotation = Annotated[Optional[opt.type], typer.Option(opt.flag, **kw)]  # type: ignore[name-defined]
        default = opt.default  # shown in --help; Option.value parses it like a typed value
    return inspect.Parameter(opt.dest, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def install_convert_command(*, with_plugin_options: bool) -> None:
    """(Re)register ``convert`` on the app, with the installed plugins' options when asked: loading
    the plugins is the price, paid only when the command runs or ``convert --help`` is asked for."""
    options: list[Any] = []
    if with_plugin_options:
        from ..registry import get_registry

        options = sorted(get_registry().options.values(), key=lambda o: o.flag)
    base = inspect.signature(convert_cmd, eval_str=True)
    core = [p for p in base.parameters.values() if p.name != "plugin_options"]
    taken = {p.name for p in core} | {"plugin_options"}
    for o in options:
        if o.dest in taken:
            raise PluginClashError(f"option {o.flag} of plugin {', '.join(o.plugins)} delivers its value as {o.dest!r}, "
                                   "a name lmconv convert uses itself; disable the plugin with LMCONV_DISABLE_PLUGINS")

    def command(**kwargs: Any) -> None:
        values = {o.dest: o.value(kwargs.pop(o.dest, None)) for o in options}
        convert_cmd(**kwargs, plugin_options=values)

    command.__signature__ = base.replace(parameters=core + [_parameter(o) for o in options])  # type: ignore[attr-defined]
    command.__doc__ = convert_cmd.__doc__
    app.registered_commands[:] = [c for c in app.registered_commands if c.name != "convert"]
    app.command("convert", help="Convert SRC to DST (the default command: `lmconv SRC DST` means "
                                "`lmconv convert SRC DST`).")(command)
