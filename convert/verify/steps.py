"""Which lossy steps lie between two tensors, and the bound each step allows.

A step is a string ``kind:what``: ``cast:f16`` (a cast, bound from the float type), ``quant:q4_K``
(a block quantisation, bound stated by the quantiser plugin of that type), ``shift:1.0`` (a lossy
layout rule, bound stated by the core's rule). Steps are read from the second model (its stored
dtype and ``Tensor.history``) or given by the user as a policy.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .. import dtypes as _dt
from ..bounds import Bound, cast_bound, declared, shift_bound
from ..dtypes import DType
from ..errors import UsageError
from ..ir import Tensor
from ..registry import get_registry

Steps = tuple[str, ...]
Policy = str | Mapping[str, Any] | Callable[[str], Any] | None
LOSSLESS_WORDS = ("lossless", "exact", "none", "")


def bound_for(step: str) -> Bound | None:
    """The documented bound of one step, or None when nobody documents one."""
    found = declared(step)
    if found is not None:
        return found
    kind, _, what = step.partition(":")
    if kind == "cast":
        try:
            d = _dt.get(what)
        except KeyError:
            return None
        return cast_bound(d) if d.is_float else None
    if kind == "quant":
        q = get_registry().quantizers.get(what.lower())
        return q.bound if q is not None else None
    if kind == "shift":  # the core's own rule: its bound is known even before a rule was made
        try:
            return shift_bound(float(what))
        except ValueError:
            return None
    return None


def parse_steps(spec: Any) -> Steps | None:
    """``"q8_0"``, ``"f16"``, ``"cast:f16+quant:q8_0"``, a list of those, or ``"lossless"`` → steps;
    ``None``/``"auto"`` → None (detect from the model)."""
    if spec is None:
        return None
    if isinstance(spec, str):
        text = spec.strip()
        if text.lower() == "auto":
            return None
        if text.lower() in LOSSLESS_WORDS:
            return ()
        items: Iterable[str] = re.split(r"[+,\s]+", text)
    else:
        items = spec
    out = []
    for item in items:
        item = str(item).strip()
        if not item or item.lower() in LOSSLESS_WORDS:
            continue
        kind, _, name = item.rpartition(":")
        if kind and kind not in ("cast", "quant", "dequant"):  # a layout rule's step ("shift:1.0", a plugin's)
            if bound_for(item) is None:
                raise UsageError(f"unknown step {item!r} in the verification policy: no rule declares its bound")
            out.append(item)
            continue
        try:
            d = _dt.get(name)
        except KeyError:
            raise UsageError(f"unknown step {item!r} in the verification policy; use a dtype (f16, bf16) or a "
                             f"block type (q8_0, q4_K), or 'lossless'") from None
        if d.is_quantized:
            out.append(f"quant:{d.name}")
        elif d.is_float:
            out.append(f"cast:{d.name}")
        else:
            raise UsageError(f"step {item!r}: {d.name} is not a float or block type")
        if kind and kind not in ("cast", "quant", "dequant"):
            raise UsageError(f"unknown step kind {kind!r} in {item!r}")
    return tuple(dict.fromkeys(out))


def policy_for(policy: Policy, names: Sequence[str]) -> Steps | None:
    """The steps a user's policy gives for a tensor known by ``names`` (None: detect them)."""
    if policy is None:
        return None
    if isinstance(policy, str):
        return parse_steps(policy)
    if isinstance(policy, Mapping):
        for n in names:
            if n in policy:
                return parse_steps(policy[n]) if policy[n] is not None else None
        return None
    if callable(policy):
        for n in names:
            got = policy(n)
            if got is not None:
                return parse_steps(got)
        return None
    raise UsageError(f"verification policy must be a string, a mapping or a function, not {type(policy).__name__}")


def stored(t: Tensor) -> Tensor:
    """The tensor as its file holds it (readers keep that as ``undo``)."""
    return t.undo if t.undo is not None else t


def value_dtype(t: Tensor) -> DType:
    d = stored(t).dtype
    return _dt.F32 if d.is_quantized else d


def lossy_tags(t: Tensor) -> set[str]:
    """The lossy steps a tensor shows: its history and, for a block type, its stored type."""
    tags: set[str] = set()
    for h in t.history:
        kind, _, what = h.partition(":")
        try:
            name = _dt.get(what).name if what and kind in ("quant", "dequant", "cast") else what
        except KeyError:
            name = what
        if kind in ("quant", "dequant"):
            tags.add(f"quant:{name}")
        elif kind == "cast":
            tags.add(f"cast:{name}")
        elif what:
            tags.add(h)  # a lossy layout rule's step
    st = stored(t)
    if st.dtype.is_quantized:
        tags.add(f"quant:{st.dtype.name}")
    return tags


def represents(wide: DType, narrow: DType) -> bool:
    """True when every value of ``narrow`` is exactly a value of ``wide``."""
    import ml_dtypes

    if wide == narrow:
        return True
    if not (wide.is_float and narrow.is_float):
        return False
    fw, fn = ml_dtypes.finfo(wide.numpy), ml_dtypes.finfo(narrow.numpy)
    return (int(fw.nmant) >= int(fn.nmant) and int(fw.maxexp) >= int(fn.maxexp)
            and int(fw.minexp) - int(fw.nmant) <= int(fn.minexp) - int(fn.nmant))


def auto_steps(ta: Tensor, tb: Tensor) -> Steps:
    """What happened between ``ta`` and ``tb``, read from ``tb``: new block types, narrowing casts,
    lossy layout rules."""
    tags_a = lossy_tags(ta)
    tags_b = lossy_tags(tb)
    steps = sorted(s for s in tags_b if not s.startswith("cast:") and s not in tags_a)
    a_val = value_dtype(ta)
    if a_val.is_float:
        casts = {s.split(":", 1)[1] for s in tags_b if s.startswith("cast:")}
        for d in (tb.dtype, stored(tb).dtype):
            if d.is_float:
                casts.add(d.name)
        for name in sorted(casts):
            try:
                d = _dt.get(name)
            except KeyError:
                continue
            if d.is_float and not represents(d, a_val):
                steps.append(f"cast:{d.name}")
    return tuple(dict.fromkeys(steps))
