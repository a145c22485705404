"""Applying layout rules (:mod:`lmconv.rules`) to lazy tensors, both ways.

Tensors are grouped into rule instances by matching their names against the rules' patterns
(``{bid}``, ``{xid}``; the first matching rule takes a tensor). Each instance's outputs are new
lazy tensors, computed when loaded. The inverse marks what it makes with a
:class:`lmconv.ir.Derivation`, and the forward direction puts the stored tensors back untouched
when it meets exactly what an inverse made.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .dtypes import F32, DType
from .errors import InputError
from .ir import Derivation, Tensor
from .rules import Arrays, Config, Generated, Rename, Rule, Shape, Stack
from .transforms import dequantize_tensor

_PLACEHOLDER = re.compile(r"\{(bid|xid)\}")


def _regex(pattern: str) -> re.Pattern[str]:
    out, pos = [], 0
    for m in _PLACEHOLDER.finditer(pattern):
        out.append(re.escape(pattern[pos:m.start()]))
        out.append(f"(?P<{m.group(1)}>0|[1-9][0-9]*)")
        pos = m.end()
    out.append(re.escape(pattern[pos:]))
    return re.compile("".join(out))


def _fill(pattern: str, values: Mapping[str, int]) -> str:
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), pattern)


@dataclass
class _Instance:
    rule: Rule
    key: tuple[tuple[str, int], ...]
    first: int
    slots: list[dict[int | None, Tensor]]


def _placeholders(patterns: Iterable[str]) -> set[str]:
    return {m.group(1) for p in patterns for m in _PLACEHOLDER.finditer(p)}


def _match(rules: Sequence[Rule], tensors: Sequence[Tensor], forward: bool) -> tuple[list[_Instance], list[Tensor]]:
    """Group tensors into rule instances (first matching rule wins); the rest are returned unmatched."""
    compiled = []
    for rule in rules:
        ins, outs = (rule.sources, rule.targets) if forward else (rule.targets, rule.sources)
        collected = _placeholders(ins) - _placeholders(outs)
        compiled.append((rule, [_regex(p) for p in ins], collected))
    instances: dict[tuple[int, tuple[tuple[str, int], ...]], _Instance] = {}
    unmatched: list[Tensor] = []
    for pos, t in enumerate(tensors):
        for ri, (rule, regexes, collected) in enumerate(compiled):
            hit = next(((si, m) for si, rx in enumerate(regexes) if (m := rx.fullmatch(t.name))), None)
            if hit is None:
                continue
            si, m = hit
            groups = {k: int(v) for k, v in m.groupdict().items()}
            key = tuple(sorted((k, v) for k, v in groups.items() if k not in collected))
            sub = next((v for k, v in groups.items() if k in collected), None)
            inst = instances.get((ri, key))
            if inst is None:
                inst = instances[(ri, key)] = _Instance(rule, key, pos, [{} for _ in regexes])
            if sub in inst.slots[si]:
                raise InputError(f"tensor {t.name!r} appears twice", path=t.origin or None)
            inst.slots[si][sub] = t
            break
        else:
            unmatched.append(t)
    return sorted(instances.values(), key=lambda i: i.first), unmatched


def _inputs_of(inst: _Instance, count: int | None, forward: bool) -> list[Tensor]:
    rule = inst.rule
    pats = rule.sources if forward else rule.targets
    flat: list[Tensor] = []
    values = dict(inst.key)
    for pattern, slot in zip(pats, inst.slots):
        if not slot:
            raise InputError(f"tensor {_fill(pattern, {**values, 'xid': 0})!r} is missing: "
                             f"{', '.join(t.name for s in inst.slots for t in s.values())} need it")
        if None in slot:
            flat.append(slot[None])
            continue
        n = len(slot)
        if sorted(slot) != list(range(n)):
            gap = next(i for i in range(n + 1) if i not in slot)
            raise InputError(f"tensor {_fill(pattern, {**values, 'xid': gap})!r} is missing (experts must be 0..{n - 1})")
        if count is not None and n != count:
            raise InputError(f"{_fill(pattern, {**values, 'xid': 0})!r}: the model has {n} experts but the config says {count}")
        flat.extend(slot[i] for i in range(n))
    return flat


def _common_dtype(tensors: Sequence[Tensor], rule: Rule) -> DType:
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) == 1:
        (d,) = dtypes
        if d.is_quantized and not rule.blocks_ok:
            return F32
        if rule.float_math and d.is_float and d.type_size < 4:
            return F32
        return d
    if any(d.is_quantized for d in dtypes) or rule.float_math:
        return F32
    return max(dtypes, key=lambda d: d.type_size)


def _as(t: Tensor, dtype: DType) -> Tensor:
    """``t`` as ``dtype`` for a rule's functions: dequantised or cast (lazily)."""
    if t.dtype == dtype:
        return t
    if t.dtype.is_quantized:
        t = dequantize_tensor(t)
    return t.cast(dtype) if t.dtype != dtype else t


def _shortcut(inputs: list[Tensor], rule: Rule) -> tuple[Tensor, ...] | None:
    """The stored tensors back, when ``inputs`` are exactly what ``rule``'s inverse made of them."""
    first = inputs[0].derivation if inputs else None
    if first is None or first.rule.key != rule.key or first.outputs != len(inputs):
        return None
    for i, t in enumerate(inputs):
        d = t.derivation
        if d is None or d.rule.key != rule.key or d.group is not first.group or d.index != i:
            return None
    return first.inputs


def _outputs(inst: _Instance, inputs: list[Tensor], config: Config, forward: bool) -> list[Tensor]:
    rule = inst.rule
    values = dict(inst.key)
    out_pats = rule.targets if forward else rule.sources
    shapes_fn = rule.forward_shapes if forward else rule.inverse_shapes
    fn = rule.forward if forward else rule.inverse
    if forward:
        stored = _shortcut(inputs, rule)
        if stored is not None:
            names = _out_names(out_pats, values, len(stored))
            if len(names) == len(stored):
                return [s.replace(name=n, aliases=()) for s, n in zip(stored, names)]
    dtype = _common_dtype(inputs, rule)
    srcs = [_as(t, dtype) for t in inputs]
    shapes = shapes_fn([t.shape for t in inputs], config)
    names = _out_names(out_pats, values, len(shapes))
    if len(names) != len(shapes):
        raise InputError(f"rule {rule.kind} makes {len(shapes)} tensors for {len(names)} names")
    history = tuple(dict.fromkeys(h for t in srcs for h in t.history)) + ((rule.step,) if rule.step else ())
    origin = inputs[0].origin if inputs else ""
    group = object()
    out = []
    for k, (name, shape) in enumerate(zip(names, shapes)):
        if len(srcs) == 1 and len(names) == 1 and type(rule) is Rename:
            t = srcs[0].replace(name=name, aliases=())
        else:
            t = Tensor(name, shape, dtype, _loader(fn, srcs, config, k, dtype, shape, name), history=history,
                       origin=origin, release=_release_all(srcs))
        if not forward:
            t.derivation = Derivation(rule, tuple(inputs), k, len(names), group)
        out.append(t)
    return out


def _out_names(patterns: Sequence[str], values: Mapping[str, int], n: int) -> list[str]:
    """Output names; a pattern with a collected placeholder ({xid}) expands to the remaining outputs."""
    fixed = [p for p in patterns if not (_placeholders([p]) - set(values))]
    if len(fixed) == len(patterns):
        return [_fill(p, values) for p in patterns]
    if len(patterns) != 1:
        raise ValueError("a rule may expand only one output pattern over experts")
    return [_fill(patterns[0], {**values, "xid": i}) for i in range(n)]


def _loader(fn: Callable[[Arrays, Config], Arrays], srcs: list[Tensor], config: Config, k: int, dtype: DType,
            shape: Shape, name: str) -> Callable[[], np.ndarray]:
    want = dtype.numpy if dtype.numpy is not None else np.dtype(np.uint8)

    def load() -> np.ndarray:
        arrays = [s.load() for s in srcs]
        if dtype.is_quantized:  # row moves on block bytes: give the functions rows of bytes
            arrays = [a.reshape(*s.shape[:-1], -1) for a, s in zip(arrays, srcs)]
        got = fn(arrays, config)[k]
        return np.asarray(got).astype(want, copy=False)

    return load


def _release_all(srcs: list[Tensor]) -> Callable[[], None]:
    def release() -> None:
        for s in srcs:
            s.release()

    return release


def apply_forward(rules: Sequence[Rule], tensors: Sequence[Tensor], config: Config) -> tuple[list[Tensor], list[Tensor]]:
    """Source tensors → target tensors (lazy), plus the source tensors no rule took."""
    instances, unmatched = _match(rules, tensors, forward=True)
    out: list[Tensor] = []
    for inst in instances:
        count = inst.rule.count(config) if isinstance(inst.rule, Stack) and inst.rule.count else None
        out += _outputs(inst, _inputs_of(inst, count, True), config, True)
    for rule in rules:
        if isinstance(rule, Generated):
            arr = rule.make(config)
            if arr is not None:
                arr = np.ascontiguousarray(arr, dtype=np.float32)
                out.append(Tensor(rule.targets[0], tuple(arr.shape), F32, lambda a=arr: a))
    return out, unmatched


def apply_inverse(rules: Sequence[Rule], tensors: Sequence[Tensor], config: Config
                  ) -> tuple[list[Tensor], list[Tensor], dict[str, Any]]:
    """Target tensors → source tensors (lazy), the target tensors no rule took, and the config keys
    that generated tensors fold back into."""
    generated = {r.targets[0]: r for r in rules if isinstance(r, Generated)}
    folded: dict[str, Any] = {}
    rest = []
    for t in tensors:
        rule = generated.get(t.name)
        if rule is None:
            rest.append(t)
            continue
        values = t.load() if not t.dtype.is_quantized else _as(t, F32).load()
        folded.update(rule.fold(np.asarray(values, dtype=np.float32), {**config, **folded}))
        t.release()
    instances, unmatched = _match([r for r in rules if not isinstance(r, Generated)], rest, forward=False)
    out: list[Tensor] = []
    for inst in instances:
        out += _outputs(inst, _inputs_of(inst, None, False), config, False)
    return out, unmatched, folded


def one_to_one(rules: Sequence[Rule], name: str) -> Rule | None:
    """The one-to-one rule that takes the source tensor ``name``, if one does."""
    for rule in rules:
        if len(rule.sources) == 1 and len(rule.targets) == 1 and _regex(rule.sources[0]).fullmatch(name):
            if not (_placeholders(rule.sources) - _placeholders(rule.targets)):
                return rule
    return None


def coverage(rules: Sequence[Rule], names: Sequence[str]) -> tuple[list[str], float]:
    """How well ``names`` (source tensor names) fit ``rules``: the names no rule takes, and the share
    of the rules' source patterns that some name fills (a family recognised by the layout that fits best)."""
    patterns = [(rx, p) for rule in rules for p in rule.sources for rx in [_regex(p)]]
    used: set[str] = set()
    left = []
    for name in names:
        hit = next((p for rx, p in patterns if rx.fullmatch(name)), None)
        if hit is None:
            left.append(name)
        else:
            used.add(hit)
    return left, (len(used) / len(patterns) if patterns else 0.0)
