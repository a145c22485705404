"""A family's layout rules, applied to LoRA factors instead of the weights they change.

``W = B @ A`` (with ``A [..., r, in]``, ``B [..., out, r]``), so a rule that moves whole rows of ``W``
moves the same rows of ``B`` and leaves ``A`` alone, and the factors of the target's weight are
again a pair, exactly (nothing is multiplied out):

* one-to-one row moves (a rename, the rotary Q/K permutation, a row-moving ``Map``): applied to ``B``;
* a transpose: ``W.T = A.T @ B.T``, so ``A`` and ``B`` swap roles;
* several weights fused into one (``Concat``, or any row-moving rule with several inputs): the ``A``s
  are stacked (rank ``r1 + r2 + …``) and each ``B`` sits in its own block of columns, zeros elsewhere;
  a weight the adapter leaves alone gets a zero block;
* one weight cut into several (``Split``): each part takes its rows of ``B`` and the whole ``A``;
* experts stacked into one 3-D weight (``Stack``): the ``A``s and the ``B``s are stacked (padded with
  zeros to the largest rank); the way back unstacks both;
* generated tensors (rotary tables) have no counterpart: an adapter never carries one;
* anything that computes with the values (``Shift``, a ``Map`` that is not row-moving): no low-rank
  counterpart, refused in one line that says to merge instead.

Scales: each pair has its own (``alpha / r`` or ``alpha / sqrt(r)``). A target that scales every pair
by ``alpha / rank`` with one ``alpha`` (``target``) gets each ``B`` multiplied by what makes that true
(in float64, rounded once to float32); a pair already scaled so is left bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .adapters import MERGE_INSTEAD, LoraPair, pair_scale
from .dtypes import F32
from .errors import InputError
from .ir import Tensor
from .rule_engine import _fill, _match, _out_names
from .rules import Config, Generated, Rename, Rule, Stack, Transpose
from .transforms import dequantize_tensor

#: rank → (alpha, rank-stabilised) of the target's scale for a pair of that rank
Target = Callable[[int], tuple[float, bool]]
ShapeOf = Callable[[str], "tuple[int, ...] | None"]


# =========================================================================== lazy factor tensors
def _f32(t: Tensor) -> Tensor:
    t = dequantize_tensor(t)
    return t.cast(F32) if t.dtype != F32 else t


def _scaled(t: Tensor, c: float) -> Tensor:
    """``t · c`` computed in float64 and rounded once to float32 (``t`` itself when ``c`` is 1)."""
    if c == 1.0:
        return t
    return dequantize_tensor(t).map(lambda x: (x.astype(np.float64) * c).astype(np.float32), dtype=F32)


def _lazy(name: str, shape: tuple[int, ...], parts: Sequence[Tensor], make: Callable[[list[np.ndarray]], np.ndarray],
          dtype: Any = F32) -> Tensor:
    def load() -> np.ndarray:
        return np.ascontiguousarray(make([p.load() for p in parts]), dtype=dtype.numpy)

    def release() -> None:
        for p in parts:
            p.release()

    origin = parts[0].origin if parts else ""
    return Tensor(name, shape, dtype, load, origin=origin, release=release)


def _zeros(shape: tuple[int, ...]) -> Tensor:
    return _lazy("zeros", shape, [], lambda _: np.zeros(shape, np.float32))


def _transposed(t: Tensor) -> Tensor:
    """The last two axes swapped."""
    src = _f32(t) if t.dtype.is_quantized else t
    shape = (*t.shape[:-2], t.shape[-1], t.shape[-2])
    return _lazy(t.name, shape, [src], lambda a: np.swapaxes(a[0], -1, -2), src.dtype)


def _columns(b: Tensor, width: int, offset: int) -> Tensor:
    """``b [..., rows, r]`` placed at column ``offset`` of a zero ``[..., rows, width]``."""
    if b.shape[-1] == width:
        return b
    src = _f32(b)
    shape = (*b.shape[:-1], width)

    def make(a: list[np.ndarray]) -> np.ndarray:
        out = np.zeros(shape, np.float32)
        out[..., offset:offset + b.shape[-1]] = a[0]
        return out

    return _lazy(b.name, shape, [src], make)


def _rows(a: Tensor, height: int) -> Tensor:
    """``a [..., r, in]`` padded with zero rows to ``[..., height, in]``."""
    if a.shape[-2] == height:
        return a
    shape = (*a.shape[:-2], height, a.shape[-1])

    def make(x: list[np.ndarray]) -> np.ndarray:
        out = np.zeros(shape, np.float32)
        out[..., : a.shape[-2], :] = x[0]
        return out

    return _lazy(a.name, shape, [_f32(a)], make)


def _same_dtype(ts: Sequence[Tensor]) -> list[Tensor]:
    if len({t.dtype for t in ts}) == 1 and not ts[0].dtype.is_quantized:
        return list(ts)
    return [_f32(t) for t in ts]


def rescale(p: LoraPair, alpha: float, rslora: bool) -> LoraPair:
    """The same change as ``p``, stated with another alpha (and kind of scale): ``B`` multiplied by the
    ratio of the two scales (in float64, rounded once; untouched when they agree to float32, as an
    alpha read back from a float32 key does)."""
    want = pair_scale(alpha, rslora, p.rank)
    c = p.scale / want if want else 0.0
    if abs(c - 1.0) <= 2.0**-23:  # what storing an alpha in float32 changes: the same scale
        c = 1.0
    return LoraPair(p.name, p.a, _scaled(p.b, c), alpha, rslora)


# =========================================================================== applying the rules
def map_pairs(rules: Sequence[Rule], pairs: Sequence[LoraPair], config: Config, *, forward: bool,
              target: Target | None = None, shape_of: ShapeOf | None = None, family: str = "",
              origin: str | None = None, leave_out: Callable[[str], None] | None = None) -> list[LoraPair]:
    """``pairs`` named in the rules' sources (``forward``) or targets, → pairs named in the other side.

    ``target`` fixes the scale every output pair must have (see the module docstring); without it an
    output keeps its input's alpha. ``shape_of`` gives the shape of a weight the adapter leaves alone
    that a fused target needs zeros for. A pair no rule takes is refused, or, with ``leave_out``,
    reported to it and left out (a weight the base has but the target's model does not hold)."""
    rules = [r for r in rules if not isinstance(r, Generated)]
    by_name = {p.name: p for p in pairs}
    probes = [Tensor(p.name, p.shape, p.b.dtype, _never) for p in pairs]
    instances, unmatched = _match(rules, probes, forward)
    if unmatched and leave_out is None:
        raise InputError(f"the adapter changes {unmatched[0].name!r}, which is no weight of a {family} model "
                         "(an unknown target module)", path=origin)
    for t in unmatched:
        leave_out(t.name)  # type: ignore[misc]
    out: list[LoraPair] = []
    for inst in instances:
        out += _map_instance(inst, by_name, config, forward, target, shape_of, family, origin)
    return out


def _never() -> np.ndarray:
    raise AssertionError("a probe tensor is never loaded")


def _folded(p: LoraPair, rank: int, target: Target | None, like: LoraPair) -> tuple[Tensor, float, bool]:
    """``p``'s B scaled so that it works at ``rank`` with the target's (or ``like``'s) alpha."""
    alpha, rs = target(rank) if target is not None else (like.alpha, like.rslora)
    want = pair_scale(alpha, rs, rank)
    c = p.scale / want if want else 0.0
    return _scaled(p.b, 1.0 if abs(c - 1.0) <= 2.0**-40 else c), alpha, rs  # float64 noise is no change


def _map_instance(inst: Any, by_name: dict[str, LoraPair], config: Config, forward: bool, target: Target | None,
                  shape_of: ShapeOf | None, family: str, origin: str | None) -> list[LoraPair]:
    rule: Rule = inst.rule
    values = dict(inst.key)
    in_pats = rule.sources if forward else rule.targets
    out_pats = rule.targets if forward else rule.sources
    fn = rule.forward if forward else rule.inverse
    first = next(t for slot in inst.slots for t in slot.values())
    if isinstance(rule, Stack):
        return _stack(rule, inst, by_name, config, forward, target, shape_of, family, origin)
    if not rule.blocks_ok and not isinstance(rule, Transpose):
        raise InputError(f"the adapter changes {first.name!r}, which a {family} model stores through a {rule.kind} "
                         f"rule: that has no low-rank counterpart; {MERGE_INSTEAD}", path=origin)
    if any(set(slot) - {None} for slot in inst.slots):
        raise InputError(f"the adapter changes {first.name!r}, which a {family} rule gathers over experts in a way "
                         f"LoRA factors cannot follow; {MERGE_INSTEAD}", path=origin)
    ins: list[LoraPair | None] = [by_name[slot[None].name] if None in slot else None for slot in inst.slots]
    paired = [p for p in ins if p is not None]
    if len(paired[0].a.shape) > 2 and type(rule) is not Rename:
        raise InputError(f"the adapter changes {first.name!r}, a {len(paired[0].a.shape)}-D weight a {family} rule "
                         f"({rule.kind}) re-lays out; {MERGE_INSTEAD}", path=origin)
    names = _out_names(out_pats, values, len(out_pats))
    if isinstance(rule, Transpose):  # W.T = A.T @ B.T
        p = paired[0]
        t = LoraPair(names[0], _transposed(p.b), _transposed(p.a), p.alpha, p.rslora)
        b, alpha, rs = _folded(t, t.rank, target, t)
        return [LoraPair(names[0], t.a, b, alpha, rs)]
    if len(ins) == 1:
        p = paired[0]
        b, alpha, rs = _folded(p, p.rank, target, p)
        a, bs = p.a, [b]
    else:  # several weights into one: stacked A, each B in its own block of columns
        rank = sum(p.rank for p in paired)
        alpha, rs = target(rank) if target is not None else (paired[0].alpha, paired[0].rslora)
        a_parts, bs, col = [], [], 0
        for pat, p in zip(in_pats, ins):
            if p is None:
                name = _fill(pat, values)
                shape = shape_of(name) if shape_of is not None else None
                if shape is None:
                    raise InputError(f"the adapter changes {first.name!r} but not {name!r}, which a {family} model "
                                     f"keeps in the same tensor; {MERGE_INSTEAD}", path=origin)
                bs.append(_zeros((*shape[:-1], rank)))
                continue
            folded, _, _ = _folded(p, rank, lambda r: (alpha, rs), p)
            bs.append(_columns(folded, rank, col))
            a_parts.append(_f32(p.a))
            col += p.rank
        a = _lazy(paired[0].a.name, (rank, paired[0].a.shape[-1]), a_parts, lambda xs: np.concatenate(xs, axis=0))
    bs = _same_dtype(bs)
    shapes = (rule.forward_shapes if forward else rule.inverse_shapes)([b.shape for b in bs], config)
    if len(shapes) != len(names):
        raise InputError(f"rule {rule.kind} makes {len(shapes)} tensors for {len(names)} names", path=origin)
    out = []
    for k, (name, shape) in enumerate(zip(names, shapes)):
        if len(bs) == 1 and len(names) == 1 and type(rule) is Rename:
            b = bs[0]
        else:
            b = _lazy(name, tuple(shape), bs, lambda xs, k=k: fn(xs, config)[k], bs[0].dtype)
        out.append(LoraPair(name, a, b, alpha, rs))
    return out


def _stack(rule: Stack, inst: Any, by_name: dict[str, LoraPair], config: Config, forward: bool, target: Target | None,
           shape_of: ShapeOf | None, family: str, origin: str | None) -> list[LoraPair]:
    values = dict(inst.key)
    if not forward:  # one stacked pair → one pair per expert
        p = by_name[inst.slots[0][None].name]
        n = p.b.shape[0]
        if len(p.a.shape) != 3 or p.a.shape[0] != n:
            raise InputError(f"{p.name!r}: stacked LoRA factors {list(p.a.shape)} and {list(p.b.shape)} do not hold "
                             "one pair per expert", path=origin)
        names = _out_names(rule.sources, values, n)
        b_all, a_all = p.b, p.a
        out = []
        for e, name in enumerate(names):
            a = _lazy(name, tuple(a_all.shape[1:]), [a_all], lambda x, e=e: x[0][e], a_all.dtype)
            b = _lazy(name, tuple(b_all.shape[1:]), [b_all], lambda x, e=e: x[0][e], b_all.dtype)
            out.append(LoraPair(name, a, b, p.alpha, p.rslora))
        return out
    slot = inst.slots[0]
    count = rule.count(config) if rule.count is not None else max(slot) + 1
    experts = [by_name[slot[e].name] if e in slot else None for e in range(count)]
    extra = sorted(set(slot) - set(range(count)))
    if extra:
        raise InputError(f"the adapter changes expert {extra[0]} but the model has {count} experts", path=origin)
    paired = [p for p in experts if p is not None]
    rank = max(p.rank for p in paired)
    alpha, rs = target(rank) if target is not None else (paired[0].alpha, paired[0].rslora)
    a_list, b_list = [], []
    for e, p in enumerate(experts):
        if p is None:
            name = _fill(rule.sources[0], {**values, "xid": e})
            shape = shape_of(name) if shape_of is not None else None
            if shape is None:
                raise InputError(f"the adapter changes some experts but not {name!r}; {MERGE_INSTEAD}", path=origin)
            a_list.append(_zeros((rank, shape[-1])))
            b_list.append(_zeros((*shape[:-1], rank)))
            continue
        folded, _, _ = _folded(p, rank, lambda r: (alpha, rs), p)
        a_list.append(_rows(p.a, rank))
        b_list.append(_columns(folded, rank, 0))
    a_list, b_list = _same_dtype(a_list), _same_dtype(b_list)
    name = _out_names(rule.targets, values, 1)[0]
    a = _lazy(name, (count, *a_list[0].shape), a_list, np.stack, a_list[0].dtype)
    b = _lazy(name, (count, *b_list[0].shape), b_list, np.stack, b_list[0].dtype)
    return [LoraPair(name, a, b, alpha, rs)]
