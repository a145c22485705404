"""sniff → read → prepare (casts, quantisation policy) → write into staging → rename.

The one place that strings the plugins together; the CLI and the Python API both
call :func:`convert` and :func:`read_model`.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import dtypes as dt
from .adapters import output_format as adapter_output_format
from .atomic import Staging, describe_os_error
from .companions import attach_companions, attach_tokenizer, companion_files, write_companions
from .encodings import decode_encodings
from .errors import InputError, LmconvError, OutputError, UsageError
from .formats import Format, Plan, ReadOptions, WriteOptions
from .ir import Model, Tensor
from .registry import get_registry
from .streaming import all_finite
from .transforms import dequantize_tensor


def detect_format(path: Path) -> Format:
    """Which registered format reads ``path``: by content first, by extension second."""
    reg = get_registry()
    readers = sorted((f for f in reg.formats.values() if f.can_read), key=lambda f: f.sniff_order)
    for fmt in readers:
        try:
            if fmt.sniff(path):
                return fmt
        except OSError:
            continue
    if not path.exists():
        raise InputError("no such file or directory", path=path)
    if path.is_file():
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise InputError(f"cannot read: {exc.strerror}", path=path) from None
        if size == 0:
            raise InputError("is empty (0 bytes)", path=path)
    by_ext = [f for f in readers if any(path.name.lower().endswith(e) for e in f.extensions)]
    if by_ext:
        # The extension claims a format but the content does not match its magic.
        raise InputError(f"does not look like a {by_ext[0].name} file (bad magic bytes or truncated)", path=path)
    known = sorted({e for f in readers for e in f.extensions})
    raise InputError(f"unknown file type; lmconv reads {', '.join(known)} and Hugging Face model folders", path=path)


def resolve_source(src: str | Path) -> Path:
    """``src`` as a local path: itself when it exists, else what a format resolves the name to (a hub id)."""
    path = Path(src)
    if path.exists() or os.path.lexists(path):
        return path
    for fmt in sorted(get_registry().formats.values(), key=lambda f: f.sniff_order):
        found = fmt.resolve(os.fspath(src))
        if found is not None:
            return found
    return path


def choose_output_format(dst: str | Path, to: str | None = None) -> Format:
    """The format to write: ``--to`` wins; a trailing slash or a folder means an HF folder; else the extension."""
    reg = get_registry()
    if to:
        fmt = reg.format(to)
        if not fmt.can_write:
            raise UsageError(f"format {fmt.name} can be read but not written")
        return fmt
    text = os.fspath(dst)
    path = Path(text)
    if text.endswith(("/", os.sep)) or path.is_dir():
        dirs = [f for f in reg.formats.values() if f.is_directory and f.can_write]
        if not dirs:
            raise UsageError("no registered format writes model folders")
        return reg.formats.get("hf", dirs[0])
    name = path.name.lower()
    matches = [f for f in reg.formats.values() if f.can_write and any(name.endswith(e) for e in f.extensions)]
    if not matches:
        known = sorted({e for f in reg.formats.values() if f.can_write for e in f.extensions})
        raise UsageError(f"{path}: cannot tell the output format from the extension; use one of {', '.join(known)}, a folder ending in /, or --to FORMAT")
    return max(matches, key=lambda f: max(len(e) for e in f.extensions if name.endswith(e)))


def read_model(
    src: str | Path,
    *,
    config: str | Path | None = None,
    tokenizer: str | Path | None = None,
    warn: Callable[[str], None] = lambda m: None,
    extra: dict[str, Any] | None = None,
) -> Model:
    """Read any supported source into the IR (lazy tensors), with its companion files; ``config`` and
    ``tokenizer`` point at a config.json and at tokenizer files (a folder, or one tokenizer file)
    to use instead of what lies beside the source. A source that is no path may be a name a format
    resolves (a Hugging Face hub id, ``org/model@revision``)."""
    path = resolve_source(src)
    fmt = detect_format(path)
    opts = ReadOptions(config_path=Path(config) if config else None, extra=dict(extra or {}), warn=warn)
    try:
        model = fmt.read(path, opts)
    except LmconvError:
        raise
    except OSError as exc:
        raise InputError(f"cannot read: {describe_os_error(exc)}", path=path) from None
    model.format = model.format or fmt.name
    model.source = model.source or str(path)
    if not fmt.is_directory and path.exists() and not getattr(fmt, "self_describing", False):
        attach_companions(model, path.parent if path.is_file() else path, config_path=opts.config_path)
    elif opts.config_path is not None:
        attach_companions(model, path, config_path=opts.config_path)
    if tokenizer is not None:
        attach_tokenizer(model, Path(tokenizer))
    model = decode_encodings(model, warn)
    if not model.config:
        recognize(model, warn)
    return model


def recognize(model: Model, warn: Callable[[str], None]) -> None:
    """A model without a config: the family its tensors show, if any. When they give every key the
    family needs, that is the config (said in a warning); else the finding is kept for the writers
    that need a family to say what is missing (``model.metadata["recognized"]``)."""
    found = get_registry().recognize(model)
    if not found:
        return
    best = found[0]
    if not best.missing:
        model.config = dict(best.config)
        warn(f"{best.describe()}; its config comes from the tensors' shapes (no config.json)")
        return
    model.metadata["recognized"] = {"family": best.family, "description": best.describe(),
                                    "missing": list(best.missing), "config": best.config}


def guard_non_finite(model: Model, *, strict: bool, warn: Callable[[str], None]) -> Model:
    """Check each floating tensor for NaN/Inf as it is loaded for writing (no second pass).

    Weights with NaN or Inf still convert (some checkpoints carry them on purpose, e.g. masks),
    with a warning naming the tensor; ``--strict`` refuses instead, before anything is renamed
    into place.
    """
    def report(t: Tensor, arr: np.ndarray) -> None:
        report_counts(t, int(np.isnan(arr).sum()), int(np.isinf(arr).sum()))

    def report_counts(t: Tensor, n_nan: int, n_inf: int) -> None:
        msg = f"tensor {t.name!r} holds {n_nan} NaN and {n_inf} Inf values"
        if strict:
            raise InputError(f"{msg}; --strict refuses to convert it", path=t.origin or model.source or None)
        warn(msg)

    def checked_rows(t: Tensor, fn: Callable[[np.ndarray], np.ndarray], source: Tensor) -> Tensor:
        """Floats computed row by row from a source that is not (blocks, a stored encoding): each
        chunk of rows is checked as it is computed, so the tensor still streams, and the counts are
        reported once every row has been seen."""
        src_shape = source.dtype.storage_shape(source.shape)
        total = int(np.prod(src_shape[:-1], dtype=np.int64)) if len(src_shape) > 1 else 1
        lock = threading.Lock()
        seen = {"rows": 0, "nan": 0, "inf": 0}

        def check(chunk: np.ndarray) -> np.ndarray:
            out = fn(chunk)
            n_rows = int(np.prod(chunk.shape[:-1], dtype=np.int64)) if chunk.ndim > 1 else 1
            bad = not all_finite(out)
            with lock:
                if bad:
                    seen["nan"] += int(np.isnan(out).sum())
                    seen["inf"] += int(np.isinf(out).sum())
                seen["rows"] += n_rows
                done = seen["rows"] >= total
                counts = (seen["nan"], seen["inf"])
                if done:
                    seen.update(rows=0, nan=0, inf=0)
            if done and (counts[0] or counts[1]):
                report_counts(t, *counts)
            return out

        new = source.map(check, shape=t.shape, dtype=t.dtype, rows=True)
        new.name, new.aliases, new.history, new.origin, new.derivation = t.name, t.aliases, t.history, t.origin, t.derivation
        return new

    def wrap(t: Tensor) -> Tensor:
        d = t.derivation
        if d is not None:
            # A writer may take the tensors as they were read (GGUF → GGUF skips the layout round
            # trip): that path must be checked too.
            t = t.replace(derivation=d.with_inputs(tuple(wrap(i) for i in d.inputs)))
        if t.dtype.is_quantized and strict:
            # Blocks are copied as blocks, so their values are never seen; --strict dequantises a copy
            # to look (the cost of asking for it). Without --strict, quantised tensors are not checked.
            def checked_blocks(inner: Callable[[], np.ndarray]) -> Callable[[], np.ndarray]:
                def load() -> np.ndarray:
                    blocks = inner()
                    values = dequantize_tensor(t.replace(loader=lambda: blocks)).load()
                    if not all_finite(values):
                        report(t, values)
                    return blocks

                return load

            return t.replace(loader=checked_blocks(t._loader))
        if not t.dtype.is_float:
            return t
        rs = t.row_source()
        # A cast or quantisation of a float source is checked on its source, so that the check
        # stays inside the row-chunked work (and counts what the file holds, before any cast).
        at_source = rs is not None and rs[1].dtype.is_float
        if rs is not None and not at_source:
            return checked_rows(t, *rs)

        def checked(inner: Callable[[], np.ndarray]) -> Callable[[], np.ndarray]:
            def load() -> np.ndarray:
                arr = inner()
                if not all_finite(arr):
                    report(t, arr)
                return arr

            return load

        return t.wrap_source(checked) if at_source else t.replace(loader=checked(t._loader))

    return model.with_tensors([wrap(t) for t in model])


@dataclass
class ConversionResult:
    source: Path
    source_format: str
    target_format: str
    outputs: list[Path]
    model: Model  # the model as written (lazy tensors with their history)
    warnings: list[str] = field(default_factory=list)
    plan: Plan | None = None  # with dry_run: what would have been written (and nothing was)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def convert(
    src: str | Path,
    dst: str | Path,
    *,
    to: str | None = None,
    dtype: str | None = None,
    quant: str | None = None,
    force: bool = False,
    config: str | Path | None = None,
    tokenizer: str | Path | None = None,
    companions: bool = True,
    dry_run: bool = False,
    extra: dict[str, Any] | None = None,
    progress: Callable[[int], None] = lambda n: None,
    warn: Callable[[str], None] = lambda m: None,
    on_model: Callable[[Model], None] = lambda m: None,
    transform: Callable[[Model], Model] | None = None,
) -> ConversionResult:
    """Convert ``src`` to ``dst``. Raises :class:`LmconvError` subclasses for every user error.

    ``dry_run`` reads and plans everything (names, layouts, types, companions) and writes nothing:
    the result's ``plan`` says what would have been written. ``transform`` turns the model read from
    ``src`` into the one to write (``lmconv merge`` applies an adapter this way)."""
    warnings: list[str] = []

    def _warn(msg: str) -> None:
        warnings.append(msg)
        warn(msg)

    src_path, dst_text = Path(src), os.fspath(dst)
    dst_path = Path(dst_text)
    fmt_out = choose_output_format(dst_text, to)
    cast_to = None
    if dtype:
        try:
            cast_to = dt.get(dtype)
        except KeyError:
            raise UsageError(f"unknown --dtype {dtype!r}; choose f32, f16 or bf16") from None
        if not cast_to.is_float:
            raise UsageError(f"--dtype {dtype} is not a floating type; for block types use --quant")
    if quant:
        get_registry().quant_policy(quant)  # unknown names fail before any work
    wopts = WriteOptions(dtype=cast_to, quant=quant, extra=dict(extra or {}), progress=progress, warn=_warn)

    if _same_file(src_path, dst_path) or src_path.resolve() == dst_path.resolve():
        raise OutputError("is the source itself; write to another path", path=dst_path)
    existing = [p for p in fmt_out.output_paths(dst_path, wopts) if p.exists()] if not force else []
    if existing and not dry_run:
        raise OutputError("already exists; pass --force to replace it", path=existing[0])

    model = read_model(src_path, config=config, tokenizer=tokenizer, warn=_warn, extra=extra)
    if transform is not None:
        model = transform(model)
    fmt_out = adapter_output_format(model, fmt_out, explicit=bool(to))  # an adapter goes where adapters can
    on_model(model)
    if quant:  # weights an encoding decoded were quantised already: say so, as for block types
        for enc in model.metadata.get("encodings", []):
            _warn(f"re-quantising {enc['tensors']} weights decoded from {enc['encoding']} ({enc['detail']}) → {quant} "
                  f"compounds quantisation error")
    prepared = guard_non_finite(fmt_out.prepare(model, wopts), strict=bool(wopts.extra.get("strict")), warn=_warn)
    if dry_run:
        plan = fmt_out.plan(prepared, dst_path, wopts)
        plan.notes += [f"{p} already exists: the conversion would need --force" for p in existing]
        if companions and not fmt_out.is_directory and not getattr(fmt_out, "self_describing", False):
            plan.companions = sorted(companion_files(prepared))
        return ConversionResult(src_path, model.format, fmt_out.name, [], prepared, warnings, plan)
    with Staging(dst_path, force=force) as staging:
        staged_target = staging.path_for(dst_path)
        try:
            produced = fmt_out.write(prepared, staged_target, wopts)
            if companions and not fmt_out.is_directory and not getattr(fmt_out, "self_describing", False):
                produced += write_companions(prepared, staging.dir, staging.parent, force=force)  # type: ignore[arg-type]
        except LmconvError:
            raise
        except OSError as exc:
            if not exc.filename or str(exc.filename).startswith(str(staging.dir)):
                raise OutputError(f"cannot write: {describe_os_error(exc)}", path=dst_path) from None
            raise InputError(f"cannot read: {describe_os_error(exc)}", path=exc.filename or src_path) from None
        try:
            outputs = staging.commit(produced)
        except OSError as exc:
            raise OutputError(f"cannot move the result into place: {describe_os_error(exc)}", path=dst_path) from None
    return ConversionResult(src_path, model.format, fmt_out.name, outputs, prepared, warnings)
