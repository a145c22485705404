"""One pair of tensors compared element by element, in float64, in row chunks.

Bitwise equality, max |diff|, RMSE, relative error ``||a-b|| / ||a||``, cosine similarity, SNR, and
against a bound: how many elements exceed it and by how much. A quantised tensor is compared in the
layout its file stores (blocks run where they were quantised): the other side is brought into that
layout by the same exact layout rule the reader undid.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..transforms import dequantize_tensor
from ..bounds import SLACK, Bound, sum_bounds
from ..errors import LmconvError
from ..ir import Model, Tensor
from ..registry import get_registry
from ..rule_engine import one_to_one
from .steps import Steps, bound_for, stored
from .values import num, ratio

CHUNK_ELEMENTS = 1 << 22  # statistics run over row chunks of about this many elements (float64 temporaries)


@dataclass
class TensorResult:
    name: str
    status: str  # exact | within | differs | exceeds | nonfinite | shape | missing_in_a | missing_in_b | no_bound
    ok: bool
    aliases: list[str] = field(default_factory=list)
    shape_a: list[int] | None = None
    shape_b: list[int] | None = None
    dtype_a: str | None = None
    dtype_b: str | None = None
    steps: list[str] = field(default_factory=list)
    bound: str | None = None
    layout: str | None = None
    bitwise: bool | None = None
    exact: bool | None = None
    max_abs_diff: float | None = None
    rmse: float | None = None
    rel_err: float | None = None
    rel_bound: float | None = None
    cosine: float | None = None
    snr_db: float | None = None
    max_ratio: float | None = None
    n_exceeding: int = 0
    n_nonfinite_mismatch: int = 0
    worst_index: list[int] | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {k: (num(v) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def architecture(model: Model) -> Any | None:
    """The model's family, when a plugin knows it."""
    return get_registry().architecture_for(model.config)


def name_table(model: Model) -> tuple[dict[str, Tensor], set[str], tuple[str, ...]]:
    """name (and alias) → tensor; implied tie names; buffer-name suffixes of the architecture."""
    table: dict[str, Tensor] = {}
    for t in model:
        table[t.name] = t
    for t in model:
        for a in t.aliases:
            table.setdefault(a, t)
    implied: set[str] = set()
    arch = architecture(model)
    skip: tuple[str, ...] = tuple(arch.hf_skip) if arch is not None else ()
    out, emb = (arch.hf_output, arch.hf_embedding) if arch is not None else (None, None)
    tied = model.config.get("tie_word_embeddings")
    if out and emb and out not in table and emb in table and (True if tied is None else bool(tied)):
        table[out] = table[emb]
        implied.add(out)
    return table, implied, skip


def _stored_layout_fn(model: Model, t: Tensor) -> Callable[[np.ndarray], np.ndarray] | None:
    """HF layout → the layout ``t``'s file stores it in, by the one-to-one rule its reader undid."""
    d = t.derivation
    if d is None or d.outputs != 1 or len(d.inputs) != 1:
        return None
    rule, cfg = d.rule, model.config
    return lambda x: rule.forward([x], cfg)[0]


def _stored_parts_fn(model: Model, t: Tensor) -> tuple[Callable[[np.ndarray], list[np.ndarray]], tuple[Tensor, ...]] | None:
    """HF layout → the several tensors ``t``'s file stores it as (a fused HF tensor a reader made
    from two stored ones), by the rule its reader undid; with those stored tensors."""
    d = t.derivation
    if d is None or d.outputs != 1 or len(d.inputs) < 2:
        return None
    rule, cfg = d.rule, model.config
    return (lambda x: list(rule.forward([x], cfg))), d.inputs


def _merge(accs: Sequence[_Acc], sizes: Sequence[int]) -> _Acc:
    """One accumulator for several compared parts, positions counted through the parts in order."""
    out, base = _Acc(), 0
    for acc, size in zip(accs, sizes):
        for f in ("n", "sum_d2", "sum_a2", "sum_b2", "dot", "exceed", "sum_t2", "nonfinite_bad"):
            setattr(out, f, getattr(out, f) + getattr(acc, f))
        if acc.max_d_at >= 0 and (acc.max_d > out.max_d or out.max_d_at < 0):
            out.max_d, out.max_d_at = acc.max_d, base + acc.max_d_at
        if acc.ratio_at >= 0 and acc.max_ratio > out.max_ratio:
            out.max_ratio, out.ratio_at = acc.max_ratio, base + acc.ratio_at
        if acc.first_bad >= 0 and out.first_bad < 0:
            out.first_bad = base + acc.first_bad
        base += size
    return out


def _block_layout_fn(model: Model, name: str) -> tuple[Callable[[np.ndarray], np.ndarray], str] | None:
    """HF layout → the layout in which a format that stores blocks would have quantised ``name``
    (by the family's one-to-one rule there), and that format's name."""
    arch = architecture(model)
    if arch is None:
        return None
    reg = get_registry()
    for target, layout in arch.layouts().items():
        fmt = reg.formats.get(target)
        if fmt is None or not fmt.stores_quantized:
            continue
        try:
            rule = one_to_one(layout.rules(model.config), name)
        except LmconvError:
            return None
        if rule is not None:
            cfg = model.config
            return (lambda x: rule.forward([x], cfg)[0]), target
    return None


def _values(t: Tensor) -> np.ndarray:
    """The values as stored (block types dequantised to f32, every other dtype untouched)."""
    return dequantize_tensor(t).load() if t.dtype.is_quantized else t.load()


def _release(*ts: Tensor | None) -> None:
    for t in ts:
        if t is not None:
            t.release()


@dataclass
class _Acc:
    n: int = 0
    sum_d2: float = 0.0
    sum_a2: float = 0.0
    sum_b2: float = 0.0
    dot: float = 0.0
    max_d: float = 0.0
    max_d_at: int = -1
    max_ratio: float = 0.0
    ratio_at: int = -1
    exceed: int = 0
    sum_t2: float = 0.0
    nonfinite_bad: int = 0
    first_bad: int = -1


def _compare_arrays(a: np.ndarray, b: np.ndarray, bound: Bound | None) -> _Acc:
    acc = _Acc()
    shape = a.shape
    last = shape[-1] if a.ndim else 1
    a2 = a.reshape(-1, last) if a.size else a.reshape(0, max(last, 1))
    b2 = b.reshape(-1, last) if b.size else b.reshape(0, max(last, 1))
    rows = a2.shape[0]
    step = max(1, CHUNK_ELEMENTS // max(last, 1))
    for r0 in range(0, rows, step):
        ca = a2[r0:r0 + step].astype(np.float64)
        cb = b2[r0:r0 + step].astype(np.float64)
        base = r0 * last
        fa, fb = np.isfinite(ca), np.isfinite(cb)
        ok = fa & fb
        if not ok.all():
            same_nf = ~fa & ~fb & ((ca == cb) | (np.isnan(ca) & np.isnan(cb)))
            bad = ~ok & ~same_nf
            nbad = int(bad.sum())
            if nbad:
                acc.nonfinite_bad += nbad
                if acc.first_bad < 0:
                    acc.first_bad = base + int(np.flatnonzero(bad.ravel())[0])
            ca = np.where(ok, ca, 0.0)
            cb = np.where(ok, cb, 0.0)
        d = cb - ca
        ad = np.abs(d)
        acc.n += ca.size
        acc.sum_d2 += float(np.dot(d.ravel(), d.ravel()))
        acc.sum_a2 += float(np.dot(ca.ravel(), ca.ravel()))
        acc.sum_b2 += float(np.dot(cb.ravel(), cb.ravel()))
        acc.dot += float(np.dot(ca.ravel(), cb.ravel()))
        if ad.size:
            i = int(np.argmax(ad))
            if ad.flat[i] > acc.max_d or acc.max_d_at < 0:
                acc.max_d, acc.max_d_at = float(ad.flat[i]), base + i
        if bound is None:
            nz = int(np.count_nonzero(ad))
            acc.exceed += nz
            if nz:
                acc.max_ratio = math.inf
                if acc.ratio_at < 0:
                    acc.ratio_at = base + int(np.flatnonzero(ad.ravel())[0])
        else:
            tol = bound.tolerance(np.abs(ca)) * SLACK
            acc.sum_t2 += float(np.dot(tol.ravel(), tol.ravel()))
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(ad == 0, 0.0, ad / tol)
            over = ad > tol
            acc.exceed += int(over.sum())
            if ratio.size:
                i = int(np.argmax(ratio))
                if ratio.flat[i] > acc.max_ratio:
                    acc.max_ratio, acc.ratio_at = float(ratio.flat[i]), base + i
    return acc


def compare_tensors(
    ta: Tensor, tb: Tensor, *, steps: Steps, model_a: Model, model_b: Model, override: Bound | None = None,
    name: str | None = None, aliases: Sequence[str] = (), requant: tuple[str, np.ndarray] | None = None,
) -> TensorResult:
    """Compare one pair (loads both, one pair only). ``steps`` are the lossy steps from A to B.

    ``requant``: ``(quantizer, importance weights)`` when the writer says B was quantised that way
    where no bound holds (:func:`lmconv.formats.record_for_verify`): if B's blocks are exactly
    A, in B's stored layout, quantised so, the tensor passes as "requantized" whatever its error."""
    name = name or ta.name
    sa, sb = stored(ta), stored(tb)
    res = TensorResult(name=name, status="exact", ok=True, aliases=list(aliases), shape_a=list(ta.shape),
                       shape_b=list(tb.shape), dtype_a=sa.dtype.name, dtype_b=sb.dtype.name, steps=list(steps))
    if tuple(ta.shape) != tuple(tb.shape):
        res.status, res.ok = "shape", False
        return res
    bound: Bound | None
    if override is not None:
        bound = override
    elif steps:
        found = {s: bound_for(s) for s in steps}
        missing = [s for s, b in found.items() if b is None]
        if missing:
            res.status, res.ok = "no_bound", False
            res.detail = f"no documented bound for {', '.join(missing)}; pass --atol/--rtol"
            return res
        bound = sum_bounds([b for b in found.values() if b is not None])
    else:
        bound = None
    res.bound = bound.describe() if bound is not None else "exact"

    same_blocks = False
    quant_steps = any(s.startswith("quant:") for s in steps) or sb.dtype.is_quantized
    layout = "hf"
    parts = _stored_parts_fn(model_b, tb) if quant_steps and sb is tb else None
    try:
        if parts is not None and _compare_parts(ta, parts, bound, res, model_b.format):
            return res
        if sb is not tb and (sb.dtype.is_quantized or quant_steps):
            # B as its file stores it; A brought into that layout, so that blocks run where they were quantised.
            b = _values(sb)
            if ta.undo is not None and ta.undo.name == sb.name and ta.undo.shape == sb.shape:
                a = _values(ta.undo)
            else:
                fn = _stored_layout_fn(model_b, tb)
                a = _values(ta)
                a = fn(a) if fn is not None else a
            if a.shape != b.shape:  # unknown layout relation: fall back to the HF layouts
                a, b = _values(ta), _values(tb)
            else:
                layout = model_b.format
        elif quant_steps and not tb.dtype.is_quantized and (found := _block_layout_fn(model_b, name)) is not None:
            # Quantised on the way (a round trip through GGUF): blocks ran along that format's layout.
            fn, layout = found
            a, b = fn(_values(ta)), fn(_values(tb))
        else:
            a, b = _values(ta), _values(tb)
        res.layout = layout
        same_blocks = (requant is not None and sb is not tb and sb.dtype.name == requant[0] and a.shape == b.shape
                       and _requantizes(a, sb, *requant))
        # Bitwise: the stored bits, when both sides store the same type.
        if sa.dtype == sb.dtype and sa.shape == sb.shape and sa.dtype.is_quantized:
            res.bitwise = bool(np.array_equal(sa.load(), sb.load()))
        elif a.dtype == b.dtype:
            res.bitwise = bool(np.array_equal(np.ascontiguousarray(a).view(np.uint8), np.ascontiguousarray(b).view(np.uint8)))
        else:
            res.bitwise = False
        acc = _compare_arrays(a, b, bound)
        shape = a.shape
    finally:
        _release(ta, tb, sa if sa is not ta else None, sb if sb is not tb else None)
    _finish(res, acc, bound, shape, layout, sa.dtype == sb.dtype)
    if same_blocks and res.status == "exceeds":
        res.status, res.ok = "requantized", True
        res.detail = (f"beyond the {sb.dtype.name} bound ({ratio(res.max_ratio)}), but the stored blocks are "
                      f"exactly the source quantised with its importance weights: no bound holds for "
                      f"{sb.dtype.name} with a matrix (docs/verification.md)")
    return res


def _requantizes(a: np.ndarray, sb: Tensor, quantizer: str, weights: np.ndarray) -> bool:
    """Whether ``sb``'s stored blocks equal ``quantizer(a, imatrix=weights)`` (one row of weights,
    or one per stacked expert along ``a``'s first axis)."""
    q = get_registry().quantizers.get(quantizer.lower())
    if q is None or q.quantize is None:
        return False
    af = np.ascontiguousarray(a, dtype=np.float32)
    w = np.asarray(weights, dtype=np.float32)
    if w.ndim == 1:
        blocks = np.asarray(q.quantize(af, imatrix=w))
    else:
        if af.ndim < 3 or af.shape[0] != w.shape[0]:
            return False
        blocks = np.stack([np.asarray(q.quantize(af[e], imatrix=w[e])) for e in range(w.shape[0])])
    stored_blocks = np.ascontiguousarray(sb.load())
    return blocks.nbytes == stored_blocks.nbytes and bool(
        np.array_equal(np.ascontiguousarray(blocks).view(np.uint8).reshape(-1), stored_blocks.view(np.uint8).reshape(-1)))


def _compare_parts(ta: Tensor, parts: tuple[Callable[[np.ndarray], list[np.ndarray]], tuple[Tensor, ...]],
                   bound: Bound | None, res: TensorResult, fmt: str) -> bool:
    """Compare A, split into the tensors B's file stores, part by part (each quantised where it was);
    False when the split does not give those tensors' shapes (then the HF layouts are compared)."""
    fn, inputs = parts
    a_parts = fn(_values(ta))
    if len(a_parts) != len(inputs) or any(tuple(a.shape) != tuple(i.shape) for a, i in zip(a_parts, inputs)):
        return False
    accs, sizes, bitwise = [], [], True
    for a, stored_t in zip(a_parts, inputs):
        b = _values(stored_t)
        bitwise = bitwise and a.dtype == b.dtype and bool(np.array_equal(a, b))
        accs.append(_compare_arrays(a, b, bound))
        sizes.append(a.size)
        stored_t.release()
    res.layout, res.bitwise = fmt, bitwise
    _finish(res, _merge(accs, sizes), bound, (sum(sizes),), fmt, False)
    if res.detail:
        res.detail = f"index through {fmt}'s {len(inputs)} stored tensors, in order"
    return True


def _finish(res: TensorResult, acc: _Acc, bound: Bound | None, shape: tuple[int, ...], layout: str,
            same_dtype: bool) -> None:
    """Fill ``res`` from the accumulated figures."""

    res.n_nonfinite_mismatch = acc.nonfinite_bad
    res.exact = acc.nonfinite_bad == 0 and acc.sum_d2 == 0.0 and acc.max_d == 0.0
    res.max_abs_diff = acc.max_d
    res.rmse = math.sqrt(acc.sum_d2 / acc.n) if acc.n else 0.0
    res.rel_err = (math.sqrt(acc.sum_d2 / acc.sum_a2) if acc.sum_a2 > 0 else (0.0 if acc.sum_d2 == 0 else math.inf))
    na, nb = math.sqrt(acc.sum_a2), math.sqrt(acc.sum_b2)
    res.cosine = 1.0 if na == 0 and nb == 0 else (0.0 if na == 0 or nb == 0 else max(-1.0, min(1.0, acc.dot / (na * nb))))
    if acc.sum_d2 == 0:
        res.snr_db = math.inf
    elif acc.sum_a2 == 0:
        res.snr_db = -math.inf
    else:
        res.snr_db = 10.0 * math.log10(acc.sum_a2 / acc.sum_d2)
    if bound is not None:
        res.rel_bound = math.sqrt(acc.sum_t2 / acc.sum_a2) if acc.sum_a2 > 0 else (0.0 if acc.sum_t2 == 0 else math.inf)
    else:
        res.rel_bound = 0.0
    res.max_ratio = acc.max_ratio
    res.n_exceeding = acc.exceed
    at = acc.ratio_at if acc.ratio_at >= 0 else acc.max_d_at
    if (acc.exceed or acc.max_d > 0) and at >= 0 and shape:
        res.worst_index = [int(i) for i in np.unravel_index(at, shape)]
        if layout != "hf" and res.worst_index is not None:
            res.detail = f"index in {layout}'s stored layout"
    if acc.nonfinite_bad:
        res.status, res.ok = "nonfinite", False
        if acc.first_bad >= 0 and shape:
            res.worst_index = [int(i) for i in np.unravel_index(acc.first_bad, shape)]
    elif bound is None:
        if not res.exact:
            res.status, res.ok = "differs", False
        elif same_dtype and res.bitwise is False:
            res.status, res.ok = "differs", False
            res.detail = "same values, different bits (signed zeros or NaN payloads)"
        else:
            res.status = "exact"
    else:
        if acc.exceed:
            res.status, res.ok = "exceeds", False
        else:
            res.status = "exact" if res.exact else "within"

