"""``lmconv merge BASE ADAPTER DST``: a LoRA adapter merged into its base model, written in any format.

The adapter (a PEFT folder or a GGUF adapter) is read and checked against BASE; BASE is then converted
to DST by the ordinary pipeline, with each weight the adapter changes computed as ``W + scale · B @ A``
when the writer loads it (:func:`lmconv.adapters.merge_into`): one tensor at a time, as every conversion.
"""

from __future__ import annotations

import os
import time
from typing import Annotated, Any, Optional

import typer

from .app import _err, _human, _Progress, _state, _warn, app


@app.command("merge", help="Merge a LoRA adapter (PEFT folder or GGUF adapter) into its base model and write the result "
                           "in any format: lmconv merge BASE ADAPTER DST [--quant q8_0 …].")
def merge_cmd(
    base: Annotated[str, typer.Argument(help="The base model: an HF folder, a weights file with its config, or a GGUF.")],
    adapter: Annotated[str, typer.Argument(help="The LoRA adapter: a PEFT folder (adapter_config.json + adapter_model.*) "
                                                "or a GGUF adapter.")],
    dst: Annotated[str, typer.Argument(help="Target: its extension picks the format; a folder (or trailing /) means an HF folder.")],
    to: Annotated[Optional[str], typer.Option("--to", help="Output format name (see `lmconv formats`); overrides the extension.")] = None,
    dtype: Annotated[Optional[str], typer.Option("--dtype", help="Cast floating tensors: f32, f16 or bf16.")] = None,
    quant: Annotated[Optional[str], typer.Option("--quant", help="Formats that store blocks (GGUF): q8_0, q4_0, q4_k_m …")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace DST if it exists.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what would be written and write nothing.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Refuse NaN/Inf weights instead of warning.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar, no summary.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    from ..adapters import is_adapter, merge_into
    from ..errors import UsageError
    from ..pipeline import convert, read_model
    from .convert_command import _path_size, _print_plan

    _state["quiet"] = quiet
    lora = read_model(adapter, warn=_warn, extra={"base": base})
    if not is_adapter(lora):
        raise UsageError("is not a LoRA adapter (a PEFT folder or a GGUF with general.type = adapter)", path=adapter)
    bar: _Progress | None = None

    def on_model(model: Any) -> None:
        nonlocal bar
        bar = _Progress(model.nbytes, f"{os.path.basename(base.rstrip('/'))} + "
                                      f"{os.path.basename(adapter.rstrip('/'))} → {os.path.basename(dst.rstrip('/'))}",
                        not quiet and not dry_run)

    start = time.perf_counter()
    try:
        result = convert(base, dst, to=to, dtype=dtype, quant=quant, force=force, dry_run=dry_run,
                         extra={"strict": True} if strict else None, warn=_warn, on_model=on_model,
                         progress=lambda n: bar.advance(n) if bar else None,
                         transform=lambda model: merge_into(model, lora, _warn))
    finally:
        if bar is not None:
            bar.close()
    if result.plan is not None:
        _print_plan(result.plan, False)
        return
    if not quiet:
        size = sum(_path_size(p) for p in result.outputs)
        names = ", ".join(str(p) for p in result.outputs)
        _err(f"lmconv: wrote {names} ({_human(size)}, {len(result.model)} tensors, {result.source_format} + LoRA → "
             f"{result.target_format}) in {time.perf_counter() - start:.1f}s")
