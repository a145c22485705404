"""Two LoRA adapters compared by what they do: for each weight, ``scale · B @ A`` in float64.

Two files of one adapter may hold different factors for the same change: a format with one alpha
for the whole adapter folds each pair's own scale into ``B`` (one float32 rounding), a layout rule
permutes ``B``'s rows, a fused weight stacks the ``A``s. So pairs are compared by the change each
makes to its weight, against a bound derived from those roundings: with ``|B|`` and ``|A|`` A's
factors, ``|dA - dB| <= (e_A + e_B + 2^-23) · scale · (|B| @ |A|)``, where ``e`` is twice the unit
roundoff of a side's factor type (0 for float32 and wider: a float32 pair either is the very same
or was folded, which the ``2^-23`` covers). Whole tensors (``modules_to_save``) must be equal.
"""

from __future__ import annotations

import math

import numpy as np

from ..adapters import Adapter, LoraPair, adapter_view, base_names
from ..bounds import SLACK
from ..errors import UsageError
from ..ir import Model, Tensor
from ..transforms import dequantize_tensor
from .compare import TensorResult
from .config import ConfigDiff
from .report import Report
from .tokenizer import TokenizerDiff

STEP = "lora:delta"
FOLD = 2.0**-23  # a scale folded into B: one float32 rounding of B, and of the scale


def _unit(t: Tensor) -> float | None:
    """Twice the unit roundoff of a factor's type (0 at float32 and wider; None for block types)."""
    d = t.dtype
    if d.is_quantized:
        return None
    if not d.is_float or d.type_size >= 4:
        return 0.0
    import ml_dtypes

    return float(ml_dtypes.finfo(d.numpy).eps) if d.numpy is not None else None  # eps = 2 · unit roundoff


def _f64(t: Tensor) -> np.ndarray:
    return np.asarray(dequantize_tensor(t).load(), dtype=np.float64)


def _delta(p: LoraPair) -> tuple[np.ndarray, np.ndarray]:
    """``scale · B @ A`` and ``scale · |B| @ |A|``, in float64."""
    b, a = _f64(p.b), _f64(p.a)
    s = abs(p.scale)
    return p.scale * np.matmul(b, a), s * np.matmul(np.abs(b), np.abs(a))


def _stats(name: str, da: np.ndarray, db: np.ndarray, tol: np.ndarray | None, pa: LoraPair | None,
           pb: LoraPair | None) -> TensorResult:
    diff = np.abs(db - da)
    exact = bool(np.array_equal(da, db))
    na, nd = float(np.linalg.norm(da)), float(np.linalg.norm(db - da))
    nb = float(np.linalg.norm(db))
    r = TensorResult(name, "exact" if exact else "within", True, shape_a=list(da.shape), shape_b=list(db.shape),
                     dtype_a=pa.b.dtype.name if pa else None, dtype_b=pb.b.dtype.name if pb else None,
                     steps=[] if exact else [STEP], layout="hf", bitwise=exact, exact=exact,
                     max_abs_diff=float(diff.max()) if diff.size else 0.0, rmse=float(math.sqrt(np.mean(diff**2)))
                     if diff.size else 0.0, rel_err=nd / na if na else (0.0 if nd == 0 else math.inf),
                     cosine=float(np.vdot(da, db) / (na * nb)) if na and nb else None,
                     snr_db=None if exact or nd == 0 else (10 * math.log10(na**2 / nd**2) if na else None),
                     detail=f"rank {pa.rank if pa else '-'} → {pb.rank if pb else '-'}, "
                            f"scale {pa.scale if pa else 0:.6g} → {pb.scale if pb else 0:.6g}")
    if exact:
        return r
    if tol is None:
        r.status, r.ok, r.detail = "no_bound", False, r.detail + "; quantised factors: pass --atol/--rtol"
        return r
    tol = tol * SLACK
    r.bound = "(e_A + e_B + 2^-23)·scale·(|B|@|A|)"
    r.rel_bound = float(np.linalg.norm(tol) / na) if na else None
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(diff == 0, 0.0, diff / tol)
    over = diff > tol
    r.n_exceeding = int(over.sum())
    r.max_ratio = float(ratio.max()) if ratio.size and np.isfinite(ratio.max()) else None
    if r.n_exceeding:
        r.status, r.ok = "exceeds", False
        r.worst_index = [int(i) for i in np.unravel_index(int(np.argmax(ratio)), ratio.shape)]
    return r


def _pair_result(name: str, pa: LoraPair | None, pb: LoraPair | None, override: tuple[float, float] | None) -> TensorResult:
    if pa is None or pb is None:
        p = pa or pb
        assert p is not None
        return TensorResult(name, "missing_in_b" if pb is None else "missing_in_a", False, shape_a=list(p.shape) if pa else None,
                            shape_b=list(p.shape) if pb else None, detail="a LoRA on one side only")
    if pa.shape != pb.shape:
        return TensorResult(name, "shape", False, shape_a=list(pa.shape), shape_b=list(pb.shape),
                            detail="the two adapters change weights of different shapes")
    da, mag = _delta(pa)
    db, _ = _delta(pb)
    units = [_unit(pa.a), _unit(pa.b), _unit(pb.a), _unit(pb.b)]
    if override is not None:
        tol = override[0] + override[1] * np.abs(da)
    elif any(u is None for u in units):
        tol = None
    else:
        tol = (max(units[0], units[1]) + max(units[2], units[3]) + FOLD) * mag  # type: ignore[type-var]
    return _stats(name, da, db, tol, pa, pb)


def _full_result(name: str, ta: Tensor | None, tb: Tensor | None) -> TensorResult:
    if ta is None or tb is None:
        t = ta or tb
        assert t is not None
        return TensorResult(name, "missing_in_b" if tb is None else "missing_in_a", False,
                            shape_a=list(t.shape) if ta else None, shape_b=list(t.shape) if tb else None,
                            detail="a whole tensor (modules_to_save) on one side only")
    a, b = _f64(ta), _f64(tb)
    if a.shape != b.shape:
        return TensorResult(name, "shape", False, shape_a=list(a.shape), shape_b=list(b.shape))
    exact = bool(np.array_equal(a, b))
    return TensorResult(name, "exact" if exact else "differs", exact, shape_a=list(a.shape), shape_b=list(b.shape),
                        dtype_a=ta.dtype.name, dtype_b=tb.dtype.name, layout="hf", bitwise=exact, exact=exact,
                        max_abs_diff=float(np.max(np.abs(a - b))) if a.size else 0.0, detail="whole tensor")


def _resolved(view: Adapter, model: Model) -> None:
    if view.summary.get("unresolved"):
        raise UsageError("the adapter keeps its file's own tensor names: give --base (the base model) to compare it",
                         path=model.source or None)


def verify_adapters(a: Model, b: Model, *, atol: float | None = None, rtol: float | None = None) -> Report:
    """Compare adapter ``b`` against adapter ``a`` (see the module docstring)."""
    va, vb = adapter_view(a), adapter_view(b)
    _resolved(va, a)
    _resolved(vb, b)
    override = (atol or 0.0, rtol or 0.0) if (atol is not None or rtol is not None) else None
    results = [_pair_result(n, va.pairs.get(n), vb.pairs.get(n), override) for n in dict.fromkeys([*va.pairs, *vb.pairs])]
    skipped = []
    for n in dict.fromkeys([*va.full, *vb.full]):
        ta, tb = va.full.get(n), vb.full.get(n)
        if ta is None or tb is None:  # one side only: a copy of the base's tensor is no change
            view = va if ta is not None else vb
            if view.base is not None and n in base_names(view.base):
                ta, tb = (ta, base_names(view.base)[n]) if ta is not None else (base_names(view.base)[n], tb)
            elif (view.detail.get("whole") or {}).get(n) == "base_layer":
                skipped.append(n)
                continue
        results.append(_full_result(n, ta, tb))
    config = ConfigDiff(notes=["adapters are compared by the change each makes to its weight (scale · B @ A)"])
    fam_a, fam_b = a.config.get("architectures"), b.config.get("architectures")
    if fam_a and fam_b and fam_a != fam_b:
        config.ok = False
        config.changed["architectures"] = {"a": fam_a, "b": fam_b}
    tolerance = {"mode": "override" if override else "auto", "atol": atol, "rtol": rtol, "slack": SLACK, "policy": None}
    describe = lambda m: {"path": m.source, "format": m.format, "architecture": m.architecture,  # noqa: E731
                          "tensors": len(m.tensors)}
    report = Report(a=describe(a), b=describe(b), tensors=results, config=config,
                    tokenizer=TokenizerDiff(compared="none"), tolerance=tolerance, skipped=skipped)
    if skipped:
        report.notes.append(f"{', '.join(skipped)}: the base's own tensor, saved beside a LoRA of it, on one side "
                            "only (give --base to compare it with the base)")
    report.notes.append(f"LoRA adapters: {len(va.pairs)} and {len(vb.pairs)} pairs, alpha {va.summary.get('alpha')} "
                        f"and {vb.summary.get('alpha')}, rank {va.summary.get('rank')} and {vb.summary.get('rank')}")
    return report
