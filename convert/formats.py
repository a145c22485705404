"""What a format plugin provides, and the options a conversion hands to it.

A format is an object with a name, extensions, a ``sniff`` that looks at magic
bytes, and ``read``/``write``. Subclass :class:`Format` and override what you need:
the defaults make a format that refuses to read or write, so a read-only or
write-only plugin only implements its half.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .dtypes import DType
from .errors import UsageError
from .ir import Model
from .transforms import cast_model, dequantize_model


@dataclass
class WriteOptions:
    """Everything a writer may need to know about the user's request.

    ``dtype`` casts floating tensors; ``quant`` names a quantiser or preset (only
    formats with ``stores_quantized`` accept it); ``extra`` carries the values of the
    options plugins declared (:mod:`lmconv.options`), by ``dest`` name and already parsed
    (``max_shard_size`` in bytes …), plus ``strict``. ``progress`` is called with the
    bytes of each tensor written.
    """

    dtype: DType | None = None
    quant: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    progress: Callable[[int], None] = lambda n: None
    warn: Callable[[str], None] = lambda msg: None


FOR_VERIFY = "lmconv.written_for_verify"
"""``model.metadata`` key of what a writer tells ``--verify`` about tensors it wrote (see
:func:`record_for_verify`)."""


def record_for_verify(model: Any, path: str | Path, names: Iterable[str], *, steps: Iterable[str] = (),
                      requantize: tuple[str, Any] | None = None) -> None:
    """Tell verification what the writer did to the tensor known by ``names`` in the output ``path``
    that the model as written does not show.

    ``steps``: lossy steps of the writer's own (``imatrix:q6_K``: a weighted search whose bound has
    an allowance of its own), added to those read from the model and the stored type.
    ``requantize``: ``(quantizer, imatrix)`` when the tensor was quantised as
    ``quantizer(values, imatrix=imatrix)`` (one row of importance weights, or one per stacked expert)
    where no error bound holds (ggml's weighted fits of the asymmetric types): verification then
    checks that the stored blocks are exactly what quantising the source gives.

    Keyed by the output's file name, which a staged write keeps, so the rungs of a quant ladder
    sharing one model each keep theirs."""
    steps = list(steps)
    if not steps and requantize is None:
        return
    per_file = model.metadata.setdefault(FOR_VERIFY, {}).setdefault(Path(path).name, {})
    for n in names:
        entry = per_file.setdefault(n, {})
        if steps:
            entry["steps"] = steps
        if requantize is not None:
            entry["requantize"] = requantize


def recorded_for_verify(model: Any, path: str | Path) -> dict[str, dict[str, Any]]:
    """What :func:`record_for_verify` recorded for the output ``path``: tensor name →
    ``{"steps": [...], "requantize": (quantizer, imatrix)}`` (either key may be absent)."""
    return dict((model.metadata.get(FOR_VERIFY) or {}).get(Path(path).name, {}))


@dataclass(frozen=True)
class PlannedTensor:
    """One tensor as a writer would store it: its name there, shape, type and bytes."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    aliases: tuple[str, ...] = ()


@dataclass
class Plan:
    """What writing would produce (``lmconv convert --dry-run``): files, tensors, and notes."""

    format: str
    outputs: list[str]
    tensors: list[PlannedTensor]
    notes: list[str] = field(default_factory=list)
    companions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format, "outputs": self.outputs, "companions": self.companions, "notes": self.notes,
            "tensors": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype, "bytes": t.nbytes,
                         "aliases": list(t.aliases)} for t in self.tensors],
            "totals": {"tensors": len(self.tensors), "parameters": sum(_numel(t.shape) for t in self.tensors),
                       "bytes": sum(t.nbytes for t in self.tensors)},
        }


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


@dataclass
class ReadOptions:
    """What a reader may need: a config or tokenizer found elsewhere, warnings out."""

    config_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    warn: Callable[[str], None] = lambda msg: None


class Format:
    """Base class of a format plugin; see docs/writing-a-plugin.md."""

    #: unique short name, used by ``--to`` and ``lmconv formats``
    name: str = ""
    #: file name endings this format claims, lower-case, with the dot (".safetensors")
    extensions: tuple[str, ...] = ()
    #: one line for ``lmconv formats``
    description: str = ""
    #: True when the target is a directory (an HF model folder) rather than a file
    is_directory: bool = False
    #: can this format hold quantised block types as they are?
    stores_quantized: bool = False
    #: can it hold a LoRA adapter (a model of low-rank factor pairs, :mod:`lmconv.adapters`)? Only
    #: these are given one; ``adapters_only`` when it holds nothing else (no model)
    stores_adapters: bool = False
    adapters_only: bool = False
    #: plain dtypes it can store (names); None means every plain dtype
    stores_dtypes: frozenset[str] | None = None
    can_read: bool = True
    can_write: bool = True
    #: formats are asked to ``sniff`` an input in this order (then in plugin load order): a format
    #: that claims broadly (any folder with a config.json) sets a high number so specific ones go first
    sniff_order: int = 0

    def sniff(self, path: Path) -> bool:
        """True when ``path`` is in this format, judged by content (magic bytes) where possible."""
        return False

    def resolve(self, spec: str) -> Path | None:
        """A local path for a source given by name rather than path (a hub id such as
        ``org/model@revision``), fetching it if need be; None when ``spec`` is not this format's kind
        of name. Asked only when ``spec`` is no existing path."""
        return None

    def read(self, path: Path, options: ReadOptions) -> Model:
        """Return a Model whose tensors are lazy; raise an LmconvError subclass for bad input."""
        raise UsageError(f"format {self.name} cannot be read", path=path)

    def prepare(self, model: Model, options: WriteOptions) -> Model:
        """Apply the requested casts before writing. The default: cast floats to ``options.dtype``,
        refuse ``--quant``, dequantise block types to f32 (or to ``options.dtype``)."""
        if options.quant and not self.stores_quantized:
            raise UsageError(
                f"--quant {options.quant} needs a target that stores quantised blocks (GGUF); "
                f"{self.name} does not: use --dtype f16|bf16|f32 instead"
            )
        model = dequantize_model(model, options.dtype)
        if options.dtype is not None:
            model = cast_model(model, options.dtype)
        return model

    def write(self, model: Model, path: Path, options: WriteOptions) -> list[Path]:
        """Write ``model`` to ``path`` (a fresh path in a staging folder) and return every file
        or folder created there, in order; the pipeline moves them into place atomically."""
        raise UsageError(f"format {self.name} cannot be written", path=path)

    def plan(self, model: Model, path: Path, options: WriteOptions) -> Plan:
        """What :meth:`write` would write, without writing (``--dry-run``): by default the prepared
        model's tensors under their own names. A format that renames or retypes them says how."""
        tensors = [PlannedTensor(t.name, t.shape, t.dtype.name, t.nbytes, t.aliases) for t in model]
        return Plan(self.name, [str(p) for p in self.output_paths(path, options)], tensors)

    def output_paths(self, path: Path, options: WriteOptions) -> list[Path]:
        """Paths a write to ``path`` would create, when known in advance (for --force checks)."""
        return [path]

    def __repr__(self) -> str:
        return f"<Format {self.name}>"
