"""The neutral model every format is read into and written out of.

Reading a file yields descriptors, not data: a :class:`Tensor` knows its name,
shape and dtype and how to produce its array, and :meth:`Tensor.load` runs that
recipe for one tensor only. Transforms (a cast, a transpose, a quantisation) wrap
the recipe in another one, so nothing is computed until a writer asks for that
tensor, and nothing stays in memory after the writer is done with it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import dtypes as _dt
from .dtypes import DType
from .errors import InputError
from .parallel import map_rows

Loader = Callable[[], np.ndarray]


@dataclass(frozen=True, eq=False)
class Derivation:
    """How a reader made a tensor out of the tensors its file stores: output ``index`` of the
    ``outputs`` that the inverse of layout rule ``rule`` computed from ``inputs``.

    ``group`` is one token per application of that inverse, so that a writer can tell that N
    tensors came out of the same application, in order, and put the stored ``inputs`` back as
    they were instead of recomputing them (see :func:`lmconv.rules.apply_forward`).
    """

    rule: Any  # the lmconv.rules.Rule whose inverse made it
    inputs: tuple[Tensor, ...]
    index: int
    outputs: int
    group: object

    def with_inputs(self, inputs: tuple[Tensor, ...]) -> Derivation:
        return Derivation(self.rule, inputs, self.index, self.outputs, self.group)


class Tensor:
    """A lazily loaded tensor: name, shape (row-major), dtype and a recipe for its data.

    ``aliases`` are further names of the *same* tensor (tied weights): one tensor,
    several names, never two copies. ``history`` records the lossy steps applied
    (``"cast:f16"``, ``"quant:q8_0"``) so verification can pick the right tolerance.
    """

    __slots__ = ("name", "shape", "dtype", "_loader", "aliases", "history", "origin", "derivation", "_release", "_rows")

    def __init__(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype: DType,
        loader: Loader,
        *,
        aliases: tuple[str, ...] = (),
        history: tuple[str, ...] = (),
        origin: str = "",
        derivation: Derivation | None = None,
        release: Callable[[], None] | None = None,
        rows: tuple[Callable[[np.ndarray], np.ndarray], Tensor] | None = None,
    ) -> None:
        self.name = name
        self.shape = tuple(int(d) for d in shape)
        self.dtype = dtype
        self._loader = loader
        self.aliases = tuple(aliases)
        self.history = tuple(history)
        self.origin = origin  # the file it comes from, for error messages
        # Set when a reader made this tensor from the tensors its file stores by an exact layout
        # rule (un-permute, unstack experts, split a fused tensor): a writer that would apply the
        # rule again takes the stored tensors as they are (lmconv.rules), so GGUF → HF names → GGUF
        # keeps quantised blocks untouched.
        self.derivation = derivation
        # Called by a writer once it is done with this tensor's array: memory-mapped
        # readers drop the pages from this process (the page cache keeps them), so
        # RSS stays bounded by the tensors in flight, not by the size of the model.
        self._release = release
        # ``(fn, parent)`` when this tensor is ``fn(parent.load())`` for a row-wise ``fn`` (see
        # :meth:`map`): writers then compute and write it in chunks of rows (lmconv.streaming).
        self._rows = rows

    @property
    def undo(self) -> Tensor | None:
        """The tensor as its file stores it, when this one is an exact one-to-one re-layout of it
        (renamed, un-permuted, transposed); None otherwise."""
        d = self.derivation
        if d is not None and d.outputs == 1 and len(d.inputs) == 1:
            return d.inputs[0]
        return None

    @property
    def nbytes(self) -> int:
        return self.dtype.nbytes(self.shape)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def load(self) -> np.ndarray:
        """Materialise this tensor (and only this one); checks the recipe kept its promise."""
        arr = self._loader()
        want = self.dtype.storage_shape(self.shape)
        want_dtype = self.dtype.numpy if self.dtype.numpy is not None else np.dtype(np.uint8)
        if tuple(arr.shape) != want or arr.dtype != want_dtype:
            if arr.size == int(np.prod(want, dtype=np.int64)) and arr.dtype == want_dtype:
                arr = arr.reshape(want)
            else:
                raise InputError(
                    f"tensor {self.name!r} holds {arr.dtype}{list(arr.shape)} but was declared {self.dtype}{list(self.shape)}",
                    path=self.origin or None,
                )
        return arr

    def release(self) -> None:
        """Tell the source this tensor's data is no longer needed (see ``__init__``)."""
        if self._release is not None:
            self._release()

    def replace(self, **changes: Any) -> Tensor:
        """A copy with some attributes changed (the loader keeps pointing at the same source)."""
        kw = {
            "name": self.name, "shape": self.shape, "dtype": self.dtype, "loader": self._loader,
            "aliases": self.aliases, "history": self.history, "origin": self.origin, "derivation": self.derivation,
            "release": self._release,
            # a new loader, shape or dtype is another recipe: the row-wise one no longer describes it
            "rows": None if {"loader", "shape", "dtype"} & set(changes) else self._rows,
        }
        kw.update(changes)
        return Tensor(kw.pop("name"), kw.pop("shape"), kw.pop("dtype"), kw.pop("loader"), **kw)

    def row_source(self) -> tuple[Callable[[np.ndarray], np.ndarray], Tensor] | None:
        """``(fn, source)`` with ``self == fn(source.load())`` and ``fn`` row-wise, or None.

        Chains of row-wise maps (dequantise, then cast) are composed into one function of the
        first source that is not itself a row-wise map.
        """
        if self._rows is None:
            return None
        fn, parent = self._rows
        inner = parent.row_source()
        if inner is None:
            return fn, parent
        fn0, src = inner
        return (lambda a: fn(fn0(a))), src

    def wrap_source(self, wrap: Callable[[Loader], Loader]) -> Tensor:
        """This tensor with ``wrap`` around the loader of its data's source: for a row-wise map,
        around the source's (so it stays row-wise); otherwise around its own."""
        if self._rows is not None:
            fn, parent = self._rows
            new = parent.wrap_source(wrap).map(fn, shape=self.shape, dtype=self.dtype, rows=True)
            new.name, new.aliases, new.history = self.name, self.aliases, self.history
            new.origin, new.derivation = self.origin, self.derivation
            return new
        return self.replace(loader=wrap(self._loader))

    def map(
        self,
        fn: Callable[[np.ndarray], np.ndarray],
        *,
        shape: tuple[int, ...] | None = None,
        dtype: DType | None = None,
        name: str | None = None,
        note: str | None = None,
        rows: bool = False,
    ) -> Tensor:
        """A lazy transform: a new tensor whose data is ``fn(self.load())``, computed on demand.

        ``rows=True`` promises that ``fn`` works row by row (every row of the last axis becomes one
        row of the result, independently: casts, block quantisers): a large tensor is then
        computed in chunks of rows on all cores (see :func:`lmconv.parallel.map_rows`).
        """
        parent = self
        out_shape = self.shape if shape is None else tuple(shape)
        out_dtype = dtype or self.dtype
        if rows:
            np_out = out_dtype.numpy if out_dtype.numpy is not None else np.dtype(np.uint8)

            def loader() -> np.ndarray:
                return map_rows(fn, parent.load(), out_dtype.storage_shape(out_shape), np_out)

        else:
            loader = lambda: fn(parent.load())
        new = self.replace(
            name=name or self.name,
            shape=out_shape,
            dtype=out_dtype,
            loader=loader,
            history=self.history + ((note,) if note else ()),
            derivation=None,
            release=parent.release,
        )
        if rows:
            new._rows = (fn, parent)
        return new

    def cast(self, dtype: DType) -> Tensor:
        """Cast a floating tensor to another float dtype (round-to-nearest-even); others unchanged."""
        if dtype == self.dtype or not self.dtype.is_float or not dtype.is_float:
            return self
        np_dtype = dtype.numpy
        # Narrowing is lossy, widening is exact: only the lossy step enters the history.
        lossy = dtype.type_size < self.dtype.type_size or (dtype.name == "bf16" and self.dtype.name == "f16")
        return self.map(_cast_to(np_dtype), dtype=dtype, note=f"cast:{dtype.name}" if lossy else None, rows=True)

    def __repr__(self) -> str:
        alias = f" aka {', '.join(self.aliases)}" if self.aliases else ""
        return f"Tensor({self.name!r}, {list(self.shape)}, {self.dtype}{alias})"


def _cast_to(np_dtype: np.dtype) -> Callable[[np.ndarray], np.ndarray]:
    """An IEEE round-to-nearest-even cast. A value beyond the target's range becomes ±inf, which is
    that rounding's defined result; numpy's RuntimeWarning about it would go to stderr from a
    worker thread, past ``--quiet`` and the one-line error contract, so it is silenced here."""

    def cast(a: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):
            return a.astype(np_dtype)

    return cast


def tensor_from_array(name: str, array: np.ndarray, **kw: Any) -> Tensor:
    """Wrap an in-memory array (tests, small derived tensors) as an IR tensor."""
    return Tensor(name, tuple(array.shape), _dt.from_numpy(array.dtype), lambda: array, **kw)


@dataclass
class Tokenizer:
    """A tokenizer in two interchangeable spellings.

    ``files`` are the original Hugging Face files, verbatim, when the source had them
    (tokenizer.json, tokenizer_config.json, tokenizer.model, …). ``fields`` are the runtime-level
    description, one key per fact: ``model`` (the tokenizer algorithm), ``pre`` (the pre-tokenizer),
    ``tokens``, ``token_type``, ``scores``, ``merges``, ``bos_token_id`` and the other special ids,
    ``add_bos_token``, ``chat_template`` … These are the facts GGUF stores under ``tokenizer.ggml.*``
    (the GGUF plugin adds and strips that prefix), because that is the one vocabulary-level
    description already shared between runtimes. Either spelling is built from the other on
    demand by a tokenizer bridge that a plugin registers (see :mod:`lmconv.tokenizer_files`).
    """

    files: dict[str, bytes] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.files or self.fields)


@dataclass
class Model:
    """config + tokenizer + metadata + ordered tensors. Canonical names are HF state-dict names."""

    tensors: dict[str, Tensor] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    tokenizer: Tokenizer = field(default_factory=Tokenizer)
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    format: str = ""
    # Extra non-config files of an HF directory kept verbatim (generation_config.json, …).
    extra_files: dict[str, bytes] = field(default_factory=dict)
    # The file the config came from (config.json, --config, or the weights file that embeds it), so that
    # an error about a config value names that file; empty means ``source``.
    config_source: str = ""

    @property
    def architecture(self) -> str | None:
        archs = self.config.get("architectures")
        if isinstance(archs, list) and archs and isinstance(archs[0], str):
            return archs[0]
        return None

    def add(self, tensor: Tensor) -> None:
        if tensor.name in self.tensors or tensor.name in self.aliases():
            raise InputError(f"duplicate tensor name {tensor.name!r}", path=tensor.origin or self.source or None)
        self.tensors[tensor.name] = tensor

    def aliases(self) -> dict[str, str]:
        """alias name → name of the tensor it shares storage with."""
        return {a: t.name for t in self.tensors.values() for a in t.aliases}

    def __iter__(self) -> Iterator[Tensor]:
        return iter(self.tensors.values())

    def __len__(self) -> int:
        return len(self.tensors)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    def with_tensors(self, tensors: list[Tensor]) -> Model:
        """The same model (config, tokenizer, metadata) over another list of tensors."""
        return Model(
            tensors={t.name: t for t in tensors}, config=self.config, tokenizer=self.tokenizer,
            metadata=self.metadata, source=self.source, format=self.format, extra_files=self.extra_files,
            config_source=self.config_source,
        )


def group_ties(names_and_keys: list[tuple[str, object]]) -> dict[str, list[str]]:
    """Group names whose storage key (e.g. data pointer + shape + strides) is equal: first name → others."""
    first: dict[object, str] = {}
    groups: dict[str, list[str]] = {}
    for name, key in names_and_keys:
        if key in first:
            groups[first[key]].append(name)
        else:
            first[key] = name
            groups[name] = []
    return groups
