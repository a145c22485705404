"""Tensor layout rules: how N tensors of one layout become M tensors of another, and back.

A family says, per target format, how its Hugging Face state dict is laid out there, as a list of
rules. A rule names its source tensors (HF names) and its target tensors as patterns in which
``{bid}`` stands for a block (layer) index and ``{xid}`` for an expert index, and it has a forward
function and its inverse:

* 1→1: :class:`Rename`, :class:`Transpose`, :class:`RowPermute` (e.g. the rotary Q/K permutation),
  :class:`Shift` (add a constant: lossy in floating point, so it declares a bound);
* N→1: :class:`Stack` (experts ``{xid}`` stacked into one 3-D tensor), :class:`Concat` (separate
  Q/K/V fused into one); 1→N: :class:`Split` (a fused tensor cut into its parts);
* 0→1: :class:`Generated` (a tensor computed from the config on the way in, folded back into the
  config on the way out, e.g. a table of rotary frequency factors);
* anything else: :class:`Map`, with functions of your own.

Every rule is exact (its inverse gives back the very bits) unless it names a lossy ``step``, whose
bound :mod:`lmconv.bounds` states. :mod:`lmconv.rule_engine` applies a list of rules to lazy
tensors: nothing is computed until a writer loads a tensor. A rule that only moves whole rows
(``blocks_ok``) works on quantised block bytes as they are; others see floats. When a reader made
tensors with a rule's inverse, writing them back with the same rule returns the stored tensors
untouched (:class:`lmconv.ir.Derivation`), so a GGUF → HF → GGUF round trip keeps its blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .bounds import Bound, declare, shift_bound
from .errors import InputError

Arrays = list[np.ndarray]
Shape = tuple[int, ...]
Config = Mapping[str, Any]
IntOf = Callable[[Config], int]


def config_int(key: str, *fallbacks: str) -> IntOf:
    """A function of the config: the first of ``key, *fallbacks`` that is set, as an int."""

    def get(config: Config) -> int:
        for k in (key, *fallbacks):
            v = config.get(k)
            if v is not None:
                return int(v)
        raise InputError(f"the config lacks {key}")

    return get


# =========================================================================== rules
@dataclass(frozen=True)
class Rule:
    """Base of every rule: the identity from ``sources`` to ``targets`` (see the module docstring).

    ``step`` names the lossy step for verification ("shift:1.0"), None when the rule is exact;
    ``bound`` is what that step may change (declared to :mod:`lmconv.bounds` when the rule is made,
    so that verification checks every element against it).
    ``blocks_ok`` says the functions only move whole rows (never look inside one), so they may be
    given quantised block bytes; ``float_math`` says they compute (in at least float32).
    """

    sources: tuple[str, ...]
    targets: tuple[str, ...]
    step: str | None = field(default=None, kw_only=True)
    blocks_ok: bool = field(default=True, kw_only=True)
    float_math: bool = field(default=False, kw_only=True)
    bound: Bound | None = field(default=None, kw_only=True, compare=False)

    @property
    def kind(self) -> str:
        return type(self).__name__.lower()

    @property
    def key(self) -> str:
        """Identifies the rule across readers and writers (for :class:`lmconv.ir.Derivation`)."""
        return f"{self.kind}:{','.join(self.sources)}>{','.join(self.targets)}"

    @property
    def exact(self) -> bool:
        return self.step is None

    def forward(self, arrays: Arrays, config: Config) -> Arrays:
        return list(arrays)

    def inverse(self, arrays: Arrays, config: Config) -> Arrays:
        return list(arrays)

    def forward_shapes(self, shapes: list[Shape], config: Config) -> list[Shape]:
        return list(shapes)

    def inverse_shapes(self, shapes: list[Shape], config: Config) -> list[Shape]:
        return list(shapes)


def _set(obj: Rule, sources: Sequence[str], targets: Sequence[str], **fields: Any) -> None:
    """Fill a frozen rule's fields (the subclasses' own ``__init__`` take friendlier arguments)."""
    values = {"sources": tuple(sources), "targets": tuple(targets), "step": None, "blocks_ok": True,
              "float_math": False, "bound": None, **fields}
    for k, v in values.items():
        object.__setattr__(obj, k, v)
    if values["step"] is not None:
        if values["bound"] is None or values["bound"].step != values["step"]:
            raise ValueError(f"a lossy rule ({values['step']}) must state its bound, a Bound of that step")
        declare(values["bound"])


@dataclass(frozen=True, init=False)
class Rename(Rule):
    """One tensor under another name, bits untouched."""

    def __init__(self, source: str, target: str) -> None:
        _set(self, (source,), (target,))


@dataclass(frozen=True, init=False)
class Transpose(Rule):
    """A 2-D tensor transposed (a Conv1D-style ``[in, out]`` weight against ``[out, in]``)."""

    def __init__(self, source: str, target: str) -> None:
        _set(self, (source,), (target,), blocks_ok=False)

    def forward(self, arrays: Arrays, config: Config) -> Arrays:
        return [np.ascontiguousarray(arrays[0].T)]

    inverse = forward

    def forward_shapes(self, shapes: list[Shape], config: Config) -> list[Shape]:
        return [tuple(reversed(shapes[0]))]

    inverse_shapes = forward_shapes


def rope_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF → llama.cpp rotary layout: within each head, interleave the two halves of the rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def rope_unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """The exact inverse of :func:`rope_permute`."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@dataclass(frozen=True, init=False)
class RowPermute(Rule):
    """The rotary row permutation of Q or K weights and biases, over ``heads(config)`` heads."""

    heads: IntOf = field(default=lambda c: 1, compare=False)

    def __init__(self, source: str, target: str, heads: IntOf) -> None:
        _set(self, (source,), (target,), heads=heads)

    def forward(self, arrays: Arrays, config: Config) -> Arrays:
        return [rope_permute(arrays[0], self.heads(config))]

    def inverse(self, arrays: Arrays, config: Config) -> Arrays:
        return [rope_unpermute(arrays[0], self.heads(config))]


@dataclass(frozen=True, init=False)
class Shift(Rule):
    """``target = source + delta`` (an RMSNorm weight a runtime stores as 1 + w).

    Computed in float32, so not exact: each way rounds once (see :func:`shift_bound`)."""

    delta: float = 0.0

    def __init__(self, source: str, target: str, delta: float) -> None:
        bound = shift_bound(delta)
        _set(self, (source,), (target,), blocks_ok=False, float_math=True, step=bound.step, bound=bound,
             delta=float(delta))

    def forward(self, arrays: Arrays, config: Config) -> Arrays:
        return [(arrays[0].astype(np.float32) + np.float32(self.delta)).astype(np.float32)]

    def inverse(self, arrays: Arrays, config: Config) -> Arrays:
        return [(arrays[0].astype(np.float32) - np.float32(self.delta)).astype(np.float32)]


@dataclass(frozen=True, init=False)
class Stack(Rule):
    """Experts ``0..n-1`` (the ``{xid}`` in ``source``) stacked into one tensor along a new axis 0.

    ``count(config)`` is the number of experts; the inverse cuts the stack back into them."""

    count: IntOf | None = field(default=None, compare=False)

    def __init__(self, source: str, target: str, count: IntOf | None = None) -> None:
        if "{xid}" not in source or "{xid}" in target:
            raise ValueError("Stack needs {xid} in its source pattern and not in its target")
        _set(self, (source,), (target,), count=count)

    def forward(self, arrays: Arrays, config: Config) -> Arrays:
        return [np.stack(arrays)]

    def inverse(self, arrays: Arrays, config: Config) -> Arrays:
        return list(arrays[0])

    def forward_shapes(self, shapes: list[Shape], config: Config) -> list[Shape]:
        return [(len(shapes), *shapes[0])]

    def inverse_shapes(self, shapes: list[Shape], config: Config) -> list[Shape]:
        return [tuple(shapes[0][1:])] * shapes[0][0]


@dataclass(frozen=True, init=False)
class Concat(Rule):
    """Several tensors joined along axis 0 (separate Q, K, V → one fused QKV); the inverse splits
    them at ``sizes(config)`` rows."""

    sizes: Callable[[Config], Sequence[int]] = field(default=lambda c: (), compare=False)

    def __init__(self, sources: Sequence[str], target: str, sizes: Callable[[Config], Sequence[int]]) -> None:
        _set(self, sources, (target,), sizes=sizes)

    def forward(self, arrays: Arrays, config: Config) -> Arrays:
        return [np.concatenate(arrays, axis=0)]

    def inverse(self, arrays: Arrays, config: Config) -> Arrays:
        return _split_rows(arrays[0], self.sizes(config))

    def forward_shapes(self, shapes: list[Shape], config: Config) -> list[Shape]:
        return [(sum(s[0] for s in shapes), *shapes[0][1:])]

    def inverse_shapes(self, shapes: list[Shape], config: Config) -> list[Shape]:
        return [(n, *shapes[0][1:]) for n in _checked_sizes(self.sizes(config), shapes[0], self.targets[0])]


@dataclass(frozen=True, init=False)
class Split(Rule):
    """One tensor cut along axis 0 at ``sizes(config)`` rows (a fused QKV → Q, K, V); the inverse joins."""

    sizes: Callable[[Config], Sequence[int]] = field(default=lambda c: (), compare=False)

    def __init__(self, source: str, targets: Sequence[str], sizes: Callable[[Config], Sequence[int]]) -> None:
        _set(self, (source,), targets, sizes=sizes)

    def forward(self, arrays: Arrays, config: Config) -> Arrays:
        return _split_rows(arrays[0], self.sizes(config))

    def inverse(self, arrays: Arrays, config: Config) -> Arrays:
        return [np.concatenate(arrays, axis=0)]

    def forward_shapes(self, shapes: list[Shape], config: Config) -> list[Shape]:
        return [(n, *shapes[0][1:]) for n in _checked_sizes(self.sizes(config), shapes[0], self.sources[0])]

    def inverse_shapes(self, shapes: list[Shape], config: Config) -> list[Shape]:
        return [(sum(s[0] for s in shapes), *shapes[0][1:])]


def _checked_sizes(sizes: Sequence[int], shape: Shape, name: str) -> list[int]:
    sizes = [int(s) for s in sizes]
    if not shape or sum(sizes) != shape[0] or any(s <= 0 for s in sizes):
        raise InputError(f"tensor {name!r} has {shape[0] if shape else 0} rows, which the config splits as {sizes}")
    return sizes


def _split_rows(a: np.ndarray, sizes: Sequence[int]) -> Arrays:
    cuts = np.cumsum([int(s) for s in sizes])[:-1]
    return [np.ascontiguousarray(p) for p in np.split(a, cuts, axis=0)]


@dataclass(frozen=True, init=False)
class Generated(Rule):
    """A tensor the target needs that the source does not store: ``make(config)`` computes it
    (or returns None when this config needs none); on the way back ``fold(array, config)`` returns
    the config keys it stands for (raising :class:`InputError` when the tensor contradicts them)."""

    make: Callable[[Config], np.ndarray | None] = field(default=lambda c: None, compare=False)
    fold: Callable[[np.ndarray, Config], dict[str, Any]] = field(default=lambda a, c: {}, compare=False)

    def __init__(self, target: str, make: Callable[[Config], np.ndarray | None],
                 fold: Callable[[np.ndarray, Config], dict[str, Any]]) -> None:
        _set(self, (), (target,), blocks_ok=False, float_math=True, make=make, fold=fold)


@dataclass(frozen=True, init=False)
class Map(Rule):
    """A rule with functions of your own: ``forward(arrays, config)``/``inverse`` and their shape
    functions (identity when omitted). Say ``blocks_ok=True`` only if they move whole rows. A lossy
    map gives its ``bound`` (a :class:`lmconv.bounds.Bound` whose ``step`` names it, e.g. "mylog:1");
    an exact one gives none."""

    fns: tuple[Any, ...] = field(default=(), compare=False)

    def __init__(self, sources: Sequence[str], targets: Sequence[str], forward: Callable[[Arrays, Config], Arrays],
                 inverse: Callable[[Arrays, Config], Arrays], *,
                 forward_shapes: Callable[[list[Shape], Config], list[Shape]] | None = None,
                 inverse_shapes: Callable[[list[Shape], Config], list[Shape]] | None = None,
                 name: str = "map", bound: Bound | None = None, blocks_ok: bool = False,
                 float_math: bool = False) -> None:
        _set(self, sources, targets, step=bound.step if bound is not None else None, bound=bound, blocks_ok=blocks_ok,
             float_math=float_math, fns=(name, forward, inverse, forward_shapes, inverse_shapes))

    @property
    def kind(self) -> str:
        return str(self.fns[0])

    def forward(self, arrays: Arrays, config: Config) -> Arrays:
        return list(self.fns[1](arrays, config))

    def inverse(self, arrays: Arrays, config: Config) -> Arrays:
        return list(self.fns[2](arrays, config))

    def forward_shapes(self, shapes: list[Shape], config: Config) -> list[Shape]:
        fn = self.fns[3]
        return list(shapes) if fn is None else [tuple(s) for s in fn(shapes, config)]

    def inverse_shapes(self, shapes: list[Shape], config: Config) -> list[Shape]:
        fn = self.fns[4]
        return list(shapes) if fn is None else [tuple(s) for s in fn(shapes, config)]
