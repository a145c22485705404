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

from ..errors import PluginClashError
from .app import _err, _human, _Progress, _state, _warn, app


def convert_cmd(
    src: Annotated[str, typer.Argument(help="Source: a file, a sharded index, or a Hugging Face model folder.")],
    dst: Annotated[str, typer.Argument(help="Target: its extension picks the format; a folder (or trailing /) means an HF folder.")],
    to: Annotated[Optional[str], typer.Option("--to", help="Output format name (see `lmconv formats`); overrides the extension.")] = None,
    dtype: Annotated[Optional[str], typer.Option("--dtype", help="Cast floating tensors: f32, f16 or bf16.")] = None,
    quant: Annotated[Optional[str], typer.Option("--quant", help="Formats that store blocks (GGUF): q8_0, q4_0, q4_k_m … (see `lmconv plugins`).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace DST if it exists.")] = False,
    config: Annotated[Optional[str], typer.Option("--config", help="config.json to use instead of the one beside SRC.")] = None,
    no_companions: Annotated[bool, typer.Option("--no-companions", help="Do not write config/tokenizer files beside a lone weights file.")] = False,
    verify: Annotated[bool, typer.Option("--verify", help="Read DST back and verify it against SRC.")] = False,
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

    start = time.perf_counter()
    try:
        result = convert(
            src, dst, to=to, dtype=dtype, quant=quant, force=force, config=config, companions=not no_companions,
            extra=extra, progress=lambda n: bar.advance(n) if bar else None, warn=_warn, on_model=on_model,
        )
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - start
    if not quiet:
        size = sum(_path_size(p) for p in result.outputs)
        names = ", ".join(str(p) for p in result.outputs)
        _err(f"lmconv: wrote {names} ({_human(size)}, {len(result.model)} tensors, {result.source_format} → {result.target_format}) in {elapsed:.1f}s")
    if verify:
        report = verify_conversion(result, quiet=quiet)
        if not report.ok:
            raise VerificationError(f"verification failed: {report.summary()} (the file was kept)", path=result.outputs[0])


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
