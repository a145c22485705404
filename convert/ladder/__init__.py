"""A quant ladder: one source, several quantisation types, one output each, in one pass.

``lmconv model/ out/ --quant q8_0,q6_k,q4_k_m`` (:func:`convert_ladder`) reads the model once and
runs one writer per type, each in its own thread, over the same shared tensors (:mod:`.shared`): a
source tensor is read, and dequantised or widened to f32, once; every writer quantises from that
array with its own row-wise quantisers on the shared compute pool. Nothing a writer computes depends
on another writer or on timing, so each output is byte for byte what a separate
``lmconv model/ out/NAME-TYPE.gguf --quant TYPE`` writes.

Outputs are ``<model name>-<TYPE>.<ext>`` in the folder DST (:func:`ladder_paths`), staged in one
staging folder there and renamed into place together once every writer has finished: a failure
leaves none of them, and an existing one is replaced only with ``force``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import dtypes as dt
from ..atomic import Staging, describe_os_error
from ..errors import InputError, LmconvError, OutputError, UsageError
from ..formats import Format, Plan, WriteOptions
from ..ir import Model, Tensor
from ..pipeline import ConversionResult, guard_non_finite, read_model
from ..registry import get_registry
from ..streaming import SHARED_PIECES
from .shared import Aborted, SharedPieces, SharedSources

__all__ = ["LadderResult", "Rung", "convert_ladder", "ladder_format", "ladder_paths", "model_name", "parse_quants"]

MIN_BUDGET = 64 << 20  # bytes of source tensors the cache may hold before a writer ahead waits


@dataclass
class Rung:
    """One output of a ladder: its quantisation type (as asked) and final path."""

    quant: str
    path: Path
    nbytes: int = 0  # tensor bytes it will hold (known once planned)


@dataclass
class LadderResult:
    source: Path
    source_format: str
    target_format: str
    rungs: list[Rung]
    results: list[ConversionResult]  # one per rung, in order (empty for a dry run)
    warnings: list[str] = field(default_factory=list)
    plans: list[Plan] = field(default_factory=list)  # with dry_run: what each output would hold
    reads: dict[str, int] = field(default_factory=dict)  # source tensor → times read (1 each, unless re-read)
    cache_peak: int = 0  # most bytes of source tensors held at once
    pieces: tuple[int, int] = (0, 0)  # pieces of tensors several outputs share: (computed, taken again)


def parse_quants(text: str | Sequence[str]) -> list[str]:
    """``"q8_0,q6_k"`` (or a list) → the quantisation names, each known to the registry, none twice."""
    items = text.split(",") if isinstance(text, str) else list(text)
    names = [q.strip().lower() for q in items if q.strip()]
    if not names:
        raise UsageError("--quant lists no quantisation type")
    reg = get_registry()
    seen: set[str] = set()
    for q in names:
        reg.quant_policy(q)  # unknown names fail here, before anything is read
        if q in seen:
            raise UsageError(f"--quant lists {q} twice")
        seen.add(q)
    return names


def ladder_format(to: str | None = None) -> Format:
    """The format a ladder writes: ``to``, else the one writable single-file format that stores blocks."""
    reg = get_registry()
    if to:
        fmt = reg.format(to)
    else:
        fits = [f for f in reg.formats.values() if f.can_write and f.stores_quantized and not f.is_directory]
        if len(fits) != 1:
            names = ", ".join(sorted(f.name for f in fits)) or "none is installed"
            raise UsageError(f"a quant ladder needs a format that stores quantised blocks; pick one with --to ({names})")
        fmt = fits[0]
    if not (fmt.can_write and fmt.stores_quantized) or fmt.is_directory or not fmt.extensions:
        raise UsageError(f"format {fmt.name} cannot hold a quant ladder (it does not store quantised blocks in files)")
    return fmt


def model_name(src: str | os.PathLike[str]) -> str:
    """The stem of a ladder's file names: SRC's base name without its extension (a folder's name; a
    hub id's name without ``@revision``), less a trailing ``-F32``/``-F16``/``-Q8_0``-style type tag."""
    text = os.fspath(src).rstrip("/\\")
    base = os.path.basename(text) or "model"
    base = base.split("@", 1)[0] if "/" in text and not Path(text).exists() else base
    reg = get_registry()
    exts = sorted({e for f in reg.formats.values() for e in f.extensions}, key=len, reverse=True)
    for ext in exts:
        if base.lower().endswith(ext) and len(base) > len(ext):
            base = base[: -len(ext)]
            break
    stem, sep, tag = base.rpartition("-")
    if sep and stem and tag.lower() in set(reg.quant_names()) | {"f32", "f16", "bf16"}:
        base = stem
    return base or "model"


def ladder_paths(src: str | os.PathLike[str], dst: str | os.PathLike[str], quants: Sequence[str], fmt: Format,
                 name: str | None = None) -> list[Path]:
    """The output of each rung: ``DST/<name>-<TYPE><ext>`` (TYPE upper-case, as llama.cpp's files are named)."""
    stem = name or model_name(src)
    return [Path(dst) / f"{stem}-{q.upper()}{fmt.extensions[0]}" for q in quants]


def _deduplicated(warn: Callable[[str], None], into: list[str]) -> Callable[[str], None]:
    """One warning once, whichever writer says it (every writer plans the same tensors)."""
    lock = threading.Lock()

    def say(msg: str) -> None:
        with lock:
            if msg in into:
                return
            into.append(msg)
        warn(msg)

    return say


def _widen_rule(model: Model, plans: Sequence[Plan]) -> Callable[[Tensor], bool]:
    """Which tensors are held as f32 (dequantised or widened once for every writer).

    Blocks, unless some output stores that very type (a writer then copies them as they are). A
    16-bit or 8-bit float only when every float the outputs store is f32: a writer quantises from
    f32 and widens exactly, but a direct cast bf16 → f16 keeps no NaN payload where one through f32
    does, so a ladder with a 16-bit float output leaves such sources as they are."""
    stored = {t.dtype.lower() for p in plans for t in p.tensors}
    narrow_float_outputs = bool(stored & {n.lower() for n in dt.names("float")} - {"f32"})

    def rule(t: Tensor) -> bool:
        d = t.dtype
        if d.is_quantized:
            return d.name.lower() not in stored
        return d.is_float and d.type_size < 4 and not narrow_float_outputs

    return rule


def convert_ladder(
    src: str | Path,
    dst: str | Path,
    quants: str | Sequence[str],
    *,
    to: str | None = None,
    dtype: str | None = None,
    name: str | None = None,
    force: bool = False,
    config: str | Path | None = None,
    tokenizer: str | Path | None = None,
    dry_run: bool = False,
    extra: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] = lambda rung, n: None,
    warn: Callable[[str], None] = lambda m: None,
    on_model: Callable[[Model, list[Rung]], None] = lambda m, r: None,  # once read and planned
    rungs_done: Callable[[int], None] = lambda rung: None,
) -> LadderResult:
    """Write one output per quantisation type of ``quants`` into the folder ``dst`` from one read of
    ``src`` (see the module docstring). ``progress(rung, bytes)`` counts each output's bytes as they
    are written. Raises :class:`LmconvError` subclasses for every user error, before writing when it can."""
    warnings: list[str] = []
    say = _deduplicated(warn, warnings)
    names = parse_quants(quants)
    fmt = ladder_format(to)
    cast_to = None
    if dtype:
        try:
            cast_to = dt.get(dtype)
        except KeyError:
            raise UsageError(f"unknown --dtype {dtype!r}; choose f32, f16 or bf16") from None
    src_path, folder = Path(src), Path(dst)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder}: a quant ladder writes one file per type into a folder; DST is a file")
    rungs = [Rung(q, p) for q, p in zip(names, ladder_paths(src, folder, names, fmt, name))]
    options = [WriteOptions(dtype=cast_to, quant=r.quant, extra=dict(extra or {}), warn=say,
                            progress=lambda n, i=i: progress(i, n)) for i, r in enumerate(rungs)]
    if not force and not dry_run:
        for r, o in zip(rungs, options):
            existing = [p for p in fmt.output_paths(r.path, o) if p.exists()]
            if existing:
                raise OutputError("already exists; pass --force to replace it", path=existing[0])
    if not folder.exists() and not dry_run and not folder.parent.is_dir():
        raise OutputError("the folder to write into does not exist", path=folder.parent)

    for r in rungs:
        if src_path.exists() and (r.path.resolve() == src_path.resolve() or _same_file(r.path, src_path)):
            raise OutputError("is the source itself; write the ladder to another folder", path=r.path)
    model = read_model(src_path, config=config, tokenizer=tokenizer, warn=say, extra=extra)
    for enc in model.metadata.get("encodings", []):
        say(f"re-quantising {enc['tensors']} weights decoded from {enc['encoding']} ({enc['detail']}) → "
            f"{','.join(names)} compounds quantisation error")
    prepared = fmt.prepare(model, options[0])
    for o in options[1:]:
        fmt.prepare(model, o)  # each type's own checks (the model the writers share is the first's)
    prepared = guard_non_finite(prepared, strict=bool(options[0].extra.get("strict")), warn=say)
    plans = [fmt.plan(prepared, r.path, o) for r, o in zip(rungs, options)]  # every type planned before any is written
    for r, plan in zip(rungs, plans):
        r.nbytes = sum(t.nbytes for t in plan.tensors)
    on_model(model, rungs)
    result = LadderResult(src_path, model.format, fmt.name, rungs, [], warnings, plans)
    if dry_run:
        return result

    budget = max(MIN_BUDGET, max((_held_bytes(t) for t in prepared), default=0))
    sources = SharedSources(len(rungs), budget)
    shared = sources.share(prepared, _widen_rule(prepared, plans))
    takers: dict[tuple[str, tuple[int, ...], str], int] = {}
    for plan in plans:
        for pt in plan.tensors:
            key = (pt.name, tuple(pt.shape), pt.dtype)
            takers[key] = takers.get(key, 0) + 1
    pieces = SharedPieces(takers)
    created = not folder.exists()
    if created:
        try:
            folder.mkdir()
        except OSError as exc:
            raise OutputError(f"cannot create the folder: {describe_os_error(exc)}", path=folder) from None
    try:
        with Staging(rungs[0].path, force=force) as staging:
            produced = _write_all(fmt, shared, rungs, options, staging, sources, pieces, src_path, rungs_done)
            try:
                outputs = staging.commit([p for ps in produced for p in ps])
            except OSError as exc:
                raise OutputError(f"cannot move the results into place: {describe_os_error(exc)}", path=folder) from None
    except BaseException:
        if created:
            try:
                folder.rmdir()  # only when empty: nothing of ours is left in it
            except OSError:
                pass
        raise
    finally:
        sources.close()
        pieces.close()
    by_name = {p.name: p for p in outputs}
    result.results = [ConversionResult(src_path, model.format, fmt.name, [by_name[p.name] for p in ps], prepared,
                                       warnings) for ps in produced]
    result.reads = {t.name: sources.reads.get(i, 0) for i, t in enumerate(prepared)}
    result.cache_peak = sources.peak_bytes
    result.pieces = (pieces.computed, pieces.reused)
    return result


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _held_bytes(t: Tensor) -> int:
    """What the cache holds of ``t``: f32 for a tensor it widens, else the tensor as it is."""
    if t.dtype.is_quantized or (t.dtype.is_float and t.dtype.type_size < 4):
        return 4 * t.numel
    return t.nbytes


def _write_all(fmt: Format, model: Model, rungs: list[Rung], options: list[WriteOptions], staging: Staging,
               sources: SharedSources, pieces: SharedPieces, src_path: Path,
               rungs_done: Callable[[int], None]) -> list[list[Path]]:
    """Every writer in its own thread; the first failure stops the others and is raised here."""
    produced: list[list[Path] | None] = [None] * len(rungs)
    errors: list[tuple[int, BaseException]] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        try:
            SHARED_PIECES.set(pieces)  # this thread's context: its writer's pieces go through the memo
            with sources.writer(i):
                produced[i] = fmt.write(model, staging.path_for(rungs[i].path), options[i])
            rungs_done(i)
        except BaseException as exc:  # noqa: BLE001 (handed to the main thread, which raises it)
            with lock:
                errors.append((i, exc))
            sources.fail(exc)

    threads = [threading.Thread(target=run, args=(i,), name=f"lmconv-ladder-{r.quant}", daemon=True)
               for i, r in enumerate(rungs)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.2)  # short joins: Ctrl-C reaches the main thread
    except BaseException as exc:
        sources.fail(exc)
        for t in threads:
            t.join()
        raise
    if errors:
        first = next((e for _, e in errors if not isinstance(e, Aborted)), errors[0][1])
        if isinstance(first, LmconvError):
            raise first
        if isinstance(first, OSError):
            if not first.filename or str(first.filename).startswith(str(staging.dir)):
                raise OutputError(f"cannot write: {describe_os_error(first)}", path=rungs[0].path.parent) from None
            raise InputError(f"cannot read: {describe_os_error(first)}", path=first.filename or src_path) from None
        raise first
    return [p or [] for p in produced]
