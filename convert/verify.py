"""Verification: read two models and prove that the numbers survived (or say where they did not).

:func:`verify_models` pairs the tensors of two IR models by canonical (HF) name —
aliases count, so a tied embedding in one model and two equal tensors in the
other are the same thing — and compares each pair one at a time, in float64:
bitwise equality, max |diff|, RMSE, relative error ``||a-b|| / ||a||``, cosine
similarity and SNR. It also reports tensors missing on either side, shape and
dtype changes, config keys that differ and tokenizer differences, and (on
request) runs both models forward and compares their logits.

What counts as "close enough" depends on what happened to each tensor: a
lossless hop must be bit-exact; a cast or a quantisation must stay inside an
element-wise bound derived from the target type (see :data:`BOUNDS` and
docs/verification.md). The steps are read from the second model (its stored
dtype, or ``Tensor.history``) or given by the caller; ``atol``/``rtol`` replace
the derived bounds altogether.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import dtypes as _dt
from .dtypes import DType
from .errors import InputError, LmconvError, MissingDependencyError, UsageError
from .ir import Model, Tensor

REPORT_SCHEMA = "lmconv-verify-report/1"
CHUNK_ELEMENTS = 1 << 22  # statistics run over row chunks of about this many elements (float64 temporaries)
# Both sides of a bound are computed in float64, but the quantisers and dequantisers work in float32
# (1/d, x*id, d*q each round once): a relative slack of 2^-10 covers those roundings many times over.
SLACK = 1.0 + 2.0**-10
F16_HALF_ULP_MIN = 2.0**-25  # half the spacing of f16 subnormals: what a block scale stored as f16 can lose


# =========================================================================== bounds
@dataclass(frozen=True)
class Bound:
    """An element-wise error bound: ``|a_i - b_i| <= SLACK * tol_i`` with

    ``tol_i = rel*|a_i| + sum(coef * max|a| over the block of i) + abs``, for each ``(block, coef)``
    in ``blocks``; blocks run along the last axis of the layout the data was quantised in (GGUF's).
    ``a`` is the reference (the first model)."""

    step: str
    rel: float = 0.0
    blocks: tuple[tuple[int, float], ...] = ()
    abs: float = 0.0
    why: str = ""

    def tolerance(self, a_abs: np.ndarray) -> np.ndarray:
        """``a_abs``: |a| as a 2-D float64 array (rows, last axis); returns tol of the same shape."""
        tol = np.full(a_abs.shape, self.abs, dtype=np.float64)
        if self.rel:
            tol += self.rel * a_abs
        for size, coef in self.blocks:
            if coef:
                tol += coef * _block_absmax(a_abs, size)
        return tol

    def describe(self) -> str:
        parts = []
        if self.rel:
            parts.append(f"{_fmt(self.rel)}·|a|")
        for size, coef in self.blocks:
            parts.append(f"{_fmt(coef)}·max|a|/{size}")
        if self.abs:
            parts.append(_fmt(self.abs))
        return " + ".join(parts) or "0"


def _block_absmax(a_abs: np.ndarray, block: int) -> np.ndarray:
    rows, n = a_abs.shape
    pad = (-n) % block
    padded = np.pad(a_abs, ((0, 0), (0, pad))) if pad else a_abs
    m = padded.reshape(rows, -1, block).max(axis=-1)
    return np.repeat(m, block, axis=1)[:, :n]


def _finfo(dtype: DType) -> Any:
    import ml_dtypes

    return ml_dtypes.finfo(dtype.numpy)


def cast_bound(dtype: DType) -> Bound:
    """Round-to-nearest-even into ``dtype``: relative error <= u = eps/2 for normal numbers, and at
    most half the subnormal spacing below them."""
    fi = _finfo(dtype)
    u = float(fi.eps) / 2
    sub = float(fi.smallest_subnormal) / 2
    return Bound(f"cast:{dtype.name}", rel=u, abs=sub,
                 why=f"round to nearest: u = 2^{int(math.log2(u))}, subnormal half-spacing 2^{int(math.log2(sub))}")


def _quant(step: str, block: int, coef: float, *, super_coef: float = 0.0, scale_levels: int, why: str) -> Bound:
    # K-quants: ``block`` is the sub-block (16 or 32 elements); the super-block has 256.
    blocks = ((block, coef),) + (((256, super_coef),) if super_coef else ())
    return Bound(f"quant:{step}", blocks=blocks, abs=scale_levels * F16_HALF_ULP_MIN, why=why)


U16 = 2.0**-11  # unit roundoff of f16, in which every block scale (d, dmin, m) is stored

QUANT_BOUNDS: dict[str, Bound] = {
    b.step: b for b in (
        _quant("q8_0", 32, 1 / 254 + U16, scale_levels=127,
               why="d = max|x|/127, q = round(x/d) in [-127,127]: |err| <= d/2 + 127·|d - f16(d)|"),
        _quant("q4_0", 32, 1 / 8 + U16, scale_levels=8,
               why="d = x_max/-8, q = trunc(x/d + 8.5) clipped to 0..15: |err| <= d (x/d in [7.5, 8] clamps to 7) + 8·|d - f16(d)|"),
        _quant("q4_1", 32, 1 / 15 + 3 * U16, scale_levels=16,
               why="d = (max-min)/15 <= 2M/15, round to nearest: |err| <= d/2 + 15·|Δd| + |Δmin|"),
        _quant("q5_0", 32, 1 / 16 + U16, scale_levels=16,
               why="d = x_max/-16, levels -16..15: |err| <= d (top clamp) + 16·|Δd|"),
        _quant("q5_1", 32, 1 / 31 + 3 * U16, scale_levels=32,
               why="d = (max-min)/31, round to nearest: |err| <= d/2 + 31·|Δd| + |Δmin|"),
        _quant("q2_K", 16, 1.0, super_coef=1 / 4, scale_levels=3 * 15 + 15,
               why="levels 0..3 over the 16-block range (<= 2m), scale search down to range/2.5: 1.5 steps = m; "
                   "4-bit scales/mins: 3·max_scale/30 + max_min/30, zeroed sub-blocks 2m_j + M/30 <= M/4"),
        _quant("q3_K", 16, 1 / 2, super_coef=1 / 32, scale_levels=4 * 32,
               why="levels -4..3, step m/4: 2 steps = m/2; 6-bit signed scales (step max_scale/32): "
                   "4 levels · max_scale/64 ≈ M/64, zeroed sub-blocks m_j < M/57"),
        _quant("q4_K", 32, 4 / 15, super_coef=1 / 21, scale_levels=15 * 63 + 63,
               why="levels 0..15 over the 32-block range (<= 2m): 2 steps = 4m/15; 6-bit scales and mins: "
                   "15·max_scale/126 + max_min/126 ≈ M/40, zeroed sub-blocks 2m_j + M/126 <= M/22"),
        _quant("q5_K", 32, 4 / 31, super_coef=1 / 21, scale_levels=31 * 63 + 63,
               why="levels 0..31 over the 32-block range: 2 steps = 4m/31; 6-bit scales and mins as q4_K"),
        _quant("q6_K", 16, 1 / 16, super_coef=1 / 128, scale_levels=32 * 128,
               why="levels -32..31, step m/32 (search 31.1..32.9): 2 steps = m/16; 8-bit scales: "
                   "32·max_scale/256 ≈ M/249, zeroed sub-blocks m_j < M/242"),
    )
}
CAST_BOUNDS: dict[str, Bound] = {
    b.step: b for b in (cast_bound(_dt.get(n)) for n in ("f32", "f16", "bf16", "f8_e4m3", "f8_e5m2"))
}
#: every known bound by step name ("cast:f16", "quant:q8_0"); tests may patch entries
BOUNDS: dict[str, Bound] = {**CAST_BOUNDS, **QUANT_BOUNDS}


def override_bound(atol: float, rtol: float) -> Bound:
    return Bound("override", rel=float(rtol), abs=float(atol), why="--atol/--rtol")


# =========================================================================== policy
Steps = tuple[str, ...]
Policy = str | Mapping[str, Any] | Callable[[str], Any] | None
LOSSLESS_WORDS = ("lossless", "exact", "none", "")


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


def _policy_for(policy: Policy, names: Sequence[str]) -> Steps | None:
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


def _stored(t: Tensor) -> Tensor:
    """The tensor as its file holds it (GGUF readers keep that as ``undo``)."""
    return t.undo if t.undo is not None else t


def _value_dtype(t: Tensor) -> DType:
    d = _stored(t).dtype
    return _dt.F32 if d.is_quantized else d


def lossy_tags(t: Tensor) -> set[str]:
    """The lossy steps a tensor shows: its history and, for a block type, its stored type."""
    tags: set[str] = set()
    for h in t.history:
        kind, _, what = h.partition(":")
        try:
            name = _dt.get(what).name if what else what
        except KeyError:
            name = what
        if kind in ("quant", "dequant"):
            tags.add(f"quant:{name}")
        elif kind == "cast":
            tags.add(f"cast:{name}")
    st = _stored(t)
    if st.dtype.is_quantized:
        tags.add(f"quant:{st.dtype.name}")
    return tags


def represents(wide: DType, narrow: DType) -> bool:
    """True when every value of ``narrow`` is exactly a value of ``wide``."""
    if wide == narrow:
        return True
    if not (wide.is_float and narrow.is_float):
        return False
    fw, fn = _finfo(wide), _finfo(narrow)
    return (int(fw.nmant) >= int(fn.nmant) and int(fw.maxexp) >= int(fn.maxexp)
            and int(fw.minexp) - int(fw.nmant) <= int(fn.minexp) - int(fn.nmant))


def auto_steps(ta: Tensor, tb: Tensor) -> Steps:
    """What happened between ``ta`` and ``tb``, read from ``tb``: new block types and narrowing casts."""
    qa = {s for s in lossy_tags(ta) if s.startswith("quant:")}
    tags_b = lossy_tags(tb)
    steps = sorted(s for s in tags_b if s.startswith("quant:") and s not in qa)
    a_val = _value_dtype(ta)
    if a_val.is_float:
        casts = {s.split(":", 1)[1] for s in tags_b if s.startswith("cast:")}
        for d in (tb.dtype, _stored(tb).dtype):
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


# =========================================================================== results
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
        return {k: (_num(v) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


@dataclass
class ConfigDiff:
    ok: bool = True
    changed: dict[str, dict[str, Any]] = field(default_factory=dict)
    only_in_a: list[str] = field(default_factory=list)
    only_in_b: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "changed": _jsonable(self.changed), "only_in_a": self.only_in_a,
                "only_in_b": self.only_in_b, "notes": self.notes}


@dataclass
class TokenizerDiff:
    ok: bool = True
    compared: str = "none"  # identical-files | gguf-fields | tokenizer.json | files | none
    differences: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, what: str, detail: str) -> None:
        self.ok = False
        self.differences.append({"field": what, "detail": detail})

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "compared": self.compared, "differences": self.differences, "notes": self.notes}


@dataclass
class Report:
    a: dict[str, Any]
    b: dict[str, Any]
    tensors: list[TensorResult]
    config: ConfigDiff
    tokenizer: TokenizerDiff
    tolerance: dict[str, Any]
    logits: dict[str, Any] | None = None
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.tensors) and self.config.ok and self.tokenizer.ok

    def failures(self) -> list[str]:
        """One phrase per problem, tensors first (in model order)."""
        out = [_failure_text(t) for t in self.tensors if not t.ok]
        if not self.config.ok:
            keys = list(self.config.changed)
            k = keys[0]
            ch = self.config.changed[k]
            more = f" and {len(keys) - 1} more key(s)" if len(keys) > 1 else ""
            out.append(f"config {k!r} differs: {_short(ch.get('a'))} vs {_short(ch.get('b'))}{more}")
        if not self.tokenizer.ok:
            d = self.tokenizer.differences[0]
            more = f" and {len(self.tokenizer.differences) - 1} more" if len(self.tokenizer.differences) > 1 else ""
            out.append(f"tokenizer {d['field']} differs: {d['detail']}{more}")
        return out

    @property
    def first_failure(self) -> str | None:
        f = self.failures()
        return f[0] if f else None

    def failure_line(self) -> str | None:
        """The first problem, named, and how many more there are (None when all is well)."""
        fails = self.failures()
        if not fails:
            return None
        more = f" (+{len(fails) - 1} more problem{'s' if len(fails) > 2 else ''})" if len(fails) > 1 else ""
        return f"{fails[0]}{more}"

    def summary(self) -> str:
        """One line: "OK: …" with the worst tensor, or "N problem(s): <the first one, named>"."""
        fails = self.failures()
        compared = [t for t in self.tensors if t.status not in ("missing_in_a", "missing_in_b", "skipped")]
        n_exact = sum(1 for t in compared if t.status == "exact")
        n_within = sum(1 for t in compared if t.status == "within")
        if fails:
            more = f" (+{len(fails) - 1} more)" if len(fails) > 1 else ""
            return f"{len(fails)} problem{'s' if len(fails) > 1 else ''}: {fails[0]}{more}"
        text = f"OK: {len(compared)} tensors ({n_exact} exact, {n_within} within bounds"
        lossy = [t for t in compared if t.status == "within" and t.max_ratio is not None]
        if lossy:
            worst = max(lossy, key=lambda t: t.max_ratio or 0.0)
            worst_rel = max(lossy, key=lambda t: t.rel_err or 0.0)
            text += (f"; worst {_ratio(worst.max_ratio)} of its bound at {worst.name} [{'+'.join(worst.steps) or 'override'}]"
                     f"; max rel err {_fmt(worst_rel.rel_err)}")
        text += ")"
        if not (self.config.only_in_a or self.config.only_in_b or self.config.notes):
            text += "; config equal"
        elif self.config.notes and not (self.config.only_in_a or self.config.only_in_b):
            text += "; config not compared"
        else:
            text += "; config compatible (keys only on one side)"
        text += "; tokenizer " + ("equal" if self.tokenizer.compared != "none" else "not compared")
        if self.logits:
            lg = self.logits
            text += (f"; logits rel {_fmt(lg['rel_max_diff'])}, KL {_fmt(lg['kl_mean'])}, "
                     f"top-1 {100 * lg['top1_agreement']:.0f}%")
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": REPORT_SCHEMA,
            "ok": self.ok,
            "summary": self.summary(),
            "first_failure": self.first_failure,
            "a": self.a,
            "b": self.b,
            "tolerance": self.tolerance,
            "tensors": [t.to_dict() for t in self.tensors],
            "skipped": self.skipped,
            "notes": self.notes,
            "config": self.config.to_dict(),
            "tokenizer": self.tokenizer.to_dict(),
            "logits": _jsonable(self.logits) if self.logits is not None else None,
        }

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON text (schemas/verify-report.schema.json); infinities and NaN become null."""
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False, allow_nan=False)


def _failure_text(t: TensorResult) -> str:
    n = f"tensor {t.name!r}"
    if t.status == "missing_in_b":
        return f"{n} is missing in B"
    if t.status == "missing_in_a":
        return f"{n} is missing in A"
    if t.status == "shape":
        return f"{n} changed shape {t.shape_a} → {t.shape_b}"
    if t.status == "nonfinite":
        return f"{n} has {t.n_nonfinite_mismatch} NaN/Inf value(s) that do not match"
    if t.status == "no_bound":
        return f"{n}: {t.detail}"
    at = f" at {t.worst_index}" if t.worst_index is not None else ""
    if t.status == "differs":
        if t.exact:
            return f"{n} differs in its bits ({t.detail or 'signed zeros or NaN payloads'}) where a lossless copy was expected"
        return (f"{n} differs where a lossless copy was expected: max|diff| {_fmt(t.max_abs_diff)}{at}, "
                f"{t.n_exceeding} element(s) changed")
    what = "+".join(t.steps) if t.steps else "the given"
    return (f"{n} exceeds its {what} bound: max|diff| {_fmt(t.max_abs_diff)}{at} is {_fmt(t.max_ratio)}× the bound "
            f"({t.n_exceeding} element(s) over; rel err {_fmt(t.rel_err)}, bound {_fmt(t.rel_bound)})")


# =========================================================================== helpers
def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    if x == 0:
        return "0"
    return f"{x:.3g}" if 1e-3 <= abs(x) < 1e4 else f"{x:.2e}"


def _ratio(x: float | None) -> str:
    """A fraction of a bound, never rounded up to 1 when it is below."""
    if x is None:
        return "-"
    return f"{math.floor(x * 1000) / 1000:.3f}" if x < 1 else _fmt(x)


def _num(x: float | None) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return float(x)


def _short(v: Any) -> str:
    s = json.dumps(v, ensure_ascii=False, default=str)
    return s if len(s) <= 60 else s[:57] + "..."


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return _num(float(v))
    if isinstance(v, (str, int, bool)) or v is None:
        return v
    return str(v)


def _architecture(model: Model) -> Any | None:
    from .registry import get_registry

    try:
        return get_registry().architecture_for(model.architecture)
    except LmconvError:
        return None


def _is_tied(model: Model) -> bool:
    v = model.config.get("tie_word_embeddings")
    return True if v is None else bool(v)


def _name_table(model: Model) -> tuple[dict[str, Tensor], set[str], tuple[str, ...]]:
    """name (and alias) → tensor; implied tie names; buffer-name suffixes of the architecture."""
    table: dict[str, Tensor] = {}
    for t in model:
        table[t.name] = t
    for t in model:
        for a in t.aliases:
            table.setdefault(a, t)
    implied: set[str] = set()
    arch = _architecture(model)
    skip: tuple[str, ...] = tuple(getattr(arch, "hf_skip", ()) or ())
    out, emb = getattr(arch, "hf_output", None), getattr(arch, "hf_embedding", None)
    if out and emb and out not in table and emb in table and _is_tied(model):
        table[out] = table[emb]
        implied.add(out)
    return table, implied, skip


def _values(t: Tensor) -> np.ndarray:
    if t.dtype.is_quantized:
        from .transforms import dequantize_tensor

        return dequantize_tensor(t).load()
    return t.load()


def _stored_layout_fn(model: Model, name: str) -> Callable[[np.ndarray], np.ndarray] | None:
    """HF layout → the layout GGUF stores ``name`` in (identity when the family has no transform)."""
    arch = _architecture(model)
    if arch is None or not hasattr(arch, "to_gguf_layout"):
        return None
    fn = arch.to_gguf_layout(name, model.config)
    if fn is None:
        return lambda x: x
    cfg = model.config
    return lambda x: fn(x, cfg)


def _release(*ts: Tensor | None) -> None:
    for t in ts:
        if t is not None:
            try:
                t.release()
            except Exception:  # noqa: BLE001 - releasing pages is best effort
                pass


# =========================================================================== tensor comparison
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
    name: str | None = None, aliases: Sequence[str] = (),
) -> TensorResult:
    """Compare one pair (loads both, one pair only). ``steps`` are the lossy steps from A to B."""
    name = name or ta.name
    sa, sb = _stored(ta), _stored(tb)
    res = TensorResult(name=name, status="exact", ok=True, aliases=list(aliases), shape_a=list(ta.shape),
                       shape_b=list(tb.shape), dtype_a=sa.dtype.name, dtype_b=sb.dtype.name, steps=list(steps))
    if tuple(ta.shape) != tuple(tb.shape):
        res.status, res.ok = "shape", False
        return res
    bound: Bound | None
    if override is not None:
        bound = override
    elif steps:
        missing = [s for s in steps if s not in BOUNDS]
        if missing:
            res.status, res.ok = "no_bound", False
            res.detail = f"no documented bound for {', '.join(missing)}; pass --atol/--rtol"
            return res
        parts = [BOUNDS[s] for s in steps]
        bound = parts[0] if len(parts) == 1 else _sum_bounds(parts)
    else:
        bound = None
    res.bound = bound.describe() if bound is not None else "exact"

    quant_steps = any(s.startswith("quant:") for s in steps) or sb.dtype.is_quantized
    layout = "hf"
    try:
        if sb is not tb and (sb.dtype.is_quantized or quant_steps):
            # B as its file stores it; A brought into that layout, so that blocks run where they were quantised.
            b = _values(sb)
            if ta.undo is not None and ta.undo.name == sb.name and ta.undo.shape == sb.shape:
                a = _values(ta.undo)
            else:
                fn = _stored_layout_fn(model_b, name)
                a = _values(ta)
                a = fn(a) if fn is not None else a
            if a.shape != b.shape:  # unknown layout relation: fall back to the HF layouts
                a, b = _values(ta), _values(tb)
            else:
                layout = "gguf"
        elif quant_steps and not tb.dtype.is_quantized and (
                fn := _stored_layout_fn(model_b, name) or _stored_layout_fn(model_a, name)) is not None:
            # Quantised on the way (e.g. a round trip through GGUF): blocks ran along GGUF's layout.
            a, b = fn(_values(ta)), fn(_values(tb))
            layout = "gguf"
        else:
            a, b = _values(ta), _values(tb)
        res.layout = layout
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
        if layout == "gguf" and res.worst_index is not None:
            res.detail = "index in GGUF's stored layout"
    if acc.nonfinite_bad:
        res.status, res.ok = "nonfinite", False
        if acc.first_bad >= 0 and shape:
            res.worst_index = [int(i) for i in np.unravel_index(acc.first_bad, shape)]
    elif bound is None:
        if not res.exact:
            res.status, res.ok = "differs", False
        elif sa.dtype == sb.dtype and res.bitwise is False:
            res.status, res.ok = "differs", False
            res.detail = "same values, different bits (signed zeros or NaN payloads)"
        else:
            res.status = "exact"
    else:
        if acc.exceed:
            res.status, res.ok = "exceeds", False
        else:
            res.status = "exact" if res.exact else "within"
    return res


def _sum_bounds(parts: list[Bound]) -> Bound:
    """Several steps one after the other: the errors add (triangle inequality); a later step sees
    values up to (1 + Σrel) larger, hence the common factor."""
    grow = 1.0 + sum(p.rel for p in parts)
    return Bound("+".join(p.step for p in parts), rel=sum(p.rel for p in parts) * grow,
                 blocks=tuple((size, coef * grow) for p in parts for size, coef in p.blocks),
                 abs=sum(p.abs for p in parts) * grow, why="sum of the steps' bounds")


# =========================================================================== config
IGNORED_CONFIG_KEYS = frozenset({"transformers_version", "torch_dtype", "dtype", "_name_or_path"})


def _same_value(x: Any, y: Any) -> bool:
    if isinstance(x, bool) or isinstance(y, bool):
        return x is y or (isinstance(x, bool) and isinstance(y, bool) and x == y)
    if isinstance(x, (int, float)) and isinstance(y, (int, float)):
        if x == y:
            return True
        # GGUF keeps floats as float32: equal after rounding to float32 counts as equal.
        return bool(np.float32(x) == np.float32(y))
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_same_value(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        return len(x) == len(y) and all(_same_value(p, q) for p, q in zip(x, y))
    return x == y


def compare_configs(a: dict[str, Any], b: dict[str, Any]) -> ConfigDiff:
    out = ConfigDiff()
    if not a or not b:
        if a or b:
            out.notes.append(f"config only in {'A' if a else 'B'}; not compared")
        return out
    for k in a:
        if k in IGNORED_CONFIG_KEYS:
            continue
        if k not in b:
            out.only_in_a.append(k)
        elif not _same_value(a[k], b[k]):
            out.changed[k] = {"a": a[k], "b": b[k]}
    out.only_in_b = [k for k in b if k not in a and k not in IGNORED_CONFIG_KEYS]
    out.ok = not out.changed
    return out


# =========================================================================== tokenizer
STRICT_TOKENIZER_FIELDS = ("tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges")


def _bridge() -> Callable[..., dict[str, Any]] | None:
    try:
        from lmconv.plugins.gguf.tokenizer_bridge import hf_to_gguf
    except ImportError:
        return None
    return hf_to_gguf


def tokenizer_fields(model: Model, notes: list[str] | None = None) -> dict[str, Any] | None:
    """GGUF-style ``tokenizer.*`` fields of a model: its own, or built from its HF files by the bridge."""
    tok = model.tokenizer
    if tok.fields:
        return dict(tok.fields)
    if not tok.files:
        return None
    bridge = _bridge()
    if bridge is None:
        return None
    try:
        return dict(bridge(tok.files, model.config))
    except LmconvError as exc:
        if notes is not None:
            notes.append(f"{model.source or 'a model'}: tokenizer files not convertible to GGUF fields ({exc})")
        return None
    except Exception as exc:  # noqa: BLE001 - a bridge bug must not hide the weight comparison
        if notes is not None:
            notes.append(f"tokenizer bridge failed ({type(exc).__name__}: {exc})")
        return None


def _list_diff(what: str, a: list[Any], b: list[Any], out: TokenizerDiff, *, floats: bool = False) -> None:
    if len(a) != len(b):
        out.add(what, f"{len(a)} entries vs {len(b)}")
        return
    if floats:
        aa, bb = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
        bad = np.flatnonzero(~((aa == bb) | (np.isnan(aa) & np.isnan(bb))))
    else:
        bad = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
    if len(bad):
        i = int(bad[0])
        out.add(what, f"{len(bad)} of {len(a)} differ, first at {i}: {_short(a[i])} vs {_short(b[i])}")


def _compare_fields(fa: dict[str, Any], fb: dict[str, Any], out: TokenizerDiff) -> None:
    keys = list(dict.fromkeys([*fa, *fb]))
    for k in keys:
        short = k.removeprefix("tokenizer.")
        strict = k in STRICT_TOKENIZER_FIELDS or k.endswith("_token_id")
        if k not in fa or k not in fb:
            if strict:
                out.add(short, f"only in {'A' if k in fa else 'B'}")
            else:
                out.notes.append(f"{short} only in {'A' if k in fa else 'B'}")
            continue
        va, vb = fa[k], fb[k]
        if isinstance(va, (list, tuple)) and isinstance(vb, (list, tuple)):
            _list_diff(short, list(va), list(vb), out, floats=k.endswith(".scores"))
        elif not _same_value(va, vb):
            out.add(short, f"{_short(va)} vs {_short(vb)}")


def _compare_tokenizer_json(ja: dict[str, Any], jb: dict[str, Any], out: TokenizerDiff) -> None:
    ma, mb = ja.get("model") or {}, jb.get("model") or {}
    if ma.get("type") != mb.get("type"):
        out.add("model", f"{ma.get('type')} vs {mb.get('type')}")
    va, vb = ma.get("vocab"), mb.get("vocab")
    if isinstance(va, dict) and isinstance(vb, dict):
        ia = sorted(va.items(), key=lambda kv: kv[1])
        ib = sorted(vb.items(), key=lambda kv: kv[1])
        _list_diff("tokens", [k for k, _ in ia], [k for k, _ in ib], out)
        if [v for _, v in ia] != [v for _, v in ib]:
            out.add("token ids", "the vocabularies assign different ids")
    elif va != vb:
        _list_diff("tokens", list(va or []), list(vb or []), out)

    def merges(m: dict[str, Any]) -> list[str]:
        return [" ".join(x) if isinstance(x, (list, tuple)) else str(x) for x in m.get("merges") or []]

    _list_diff("merges", merges(ma), merges(mb), out)

    def added(j: dict[str, Any]) -> list[tuple[Any, ...]]:
        return [(t.get("id"), t.get("content"), bool(t.get("special"))) for t in j.get("added_tokens") or []]

    _list_diff("added_tokens", added(ja), added(jb), out)


def compare_tokenizers(a: Model, b: Model) -> TokenizerDiff:
    out = TokenizerDiff()
    ta, tb = a.tokenizer, b.tokenizer
    if not ta or not tb:
        if ta or tb:
            out.notes.append(f"tokenizer only in {'A' if ta else 'B'}; not compared")
        return out
    if ta.files and tb.files and ta.files == tb.files:
        out.compared = "identical-files"
        return out
    fa = tokenizer_fields(a, out.notes)
    fb = tokenizer_fields(b, out.notes)
    if fa is not None and fb is not None:
        out.compared = "gguf-fields"
        _compare_fields(fa, fb, out)
        return out
    if "tokenizer.json" in ta.files and "tokenizer.json" in tb.files:
        try:
            ja, jb = json.loads(ta.files["tokenizer.json"]), json.loads(tb.files["tokenizer.json"])
        except ValueError as exc:
            out.add("tokenizer.json", f"unreadable ({exc})")
            return out
        out.compared = "tokenizer.json"
        _compare_tokenizer_json(ja, jb, out)
        return out
    if ta.files and tb.files:
        out.compared = "files"
        for name in sorted(set(ta.files) | set(tb.files)):
            if name not in ta.files or name not in tb.files:
                out.notes.append(f"{name} only in {'A' if name in ta.files else 'B'}")
            elif ta.files[name] != tb.files[name]:
                out.add(name, "file contents differ")
        return out
    out.notes.append("one side has HF tokenizer files, the other GGUF fields, and the GGUF tokenizer bridge is "
                     "not available: tokenizers not compared")
    return out


# =========================================================================== logits
def default_token_ids(a: Model, b: Model, n: int = 16) -> list[int]:
    vocab = _vocab_size(a, b)
    return [(11 + 7919 * i) % vocab for i in range(n)]


def _vocab_size(*models: Model) -> int:
    sizes = []
    for m in models:
        for name in ("model.embed_tokens.weight", "transformer.wte.weight"):
            t = m.tensors.get(name)
            if t is not None and t.shape:
                sizes.append(t.shape[0])
                break
        else:
            v = m.config.get("vocab_size")
            if isinstance(v, int) and v > 0:
                sizes.append(v)
    if not sizes:
        raise UsageError("cannot tell the vocabulary size to pick token ids; pass --text")
    return min(sizes)


def encode_text(a: Model, b: Model, text: str) -> list[int]:
    """Token ids of ``text`` through the first tokenizer.json found (A's, then B's, then one rebuilt from GGUF fields)."""
    raw = None
    for m in (a, b):
        if "tokenizer.json" in m.tokenizer.files:
            raw = m.tokenizer.files["tokenizer.json"]
            break
    if raw is None:
        for m in (a, b):
            if m.tokenizer.fields:
                try:
                    from .tokenizer_files import tokenizer_files

                    raw = tokenizer_files(m.tokenizer).get("tokenizer.json")
                except (ImportError, LmconvError):
                    raw = None
                if raw:
                    break
    if raw is None:
        raise UsageError("--text needs a tokenizer.json (beside A or B, or rebuilt from GGUF fields)")
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise MissingDependencyError("--text needs the tokenizers package (pip install tokenizers)") from None
    tok = Tokenizer.from_str(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    ids = tok.encode(text).ids
    if not ids:
        raise UsageError("--text encodes to no tokens")
    return list(ids)


def llamacpp_logits(path: str, ids: Sequence[int]) -> np.ndarray:
    try:
        from llama_cpp import Llama
    except ImportError:
        raise MissingDependencyError("--runtime llama.cpp needs llama-cpp-python (pip install 'lmconv[llama]')") from None
    n_ctx = max(64, len(ids) + 8)
    try:
        # type_k/type_v 0 = GGML_TYPE_F32: an f16 KV cache would blur the comparison.
        llm = Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, type_k=0, type_v=0,
                    verbose=False)
    except (ValueError, RuntimeError) as exc:
        raise InputError(f"llama.cpp cannot load it ({' '.join(str(exc).split())[:160]}); a GGUF without a "
                         f"tokenizer or of an architecture llama.cpp lacks cannot run", path=path) from None
    try:
        llm.eval(list(ids))
        return np.array(llm.scores[: len(ids)], dtype=np.float64)
    finally:
        llm.close()


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def logit_stats(la: np.ndarray, lb: np.ndarray) -> dict[str, Any]:
    la, lb = la.astype(np.float64), lb.astype(np.float64)
    if la.shape != lb.shape:
        raise UsageError(f"the two models give logits of different shapes {list(la.shape)} and {list(lb.shape)}")
    diff = np.abs(la - lb)
    pa, pb = _log_softmax(la), _log_softmax(lb)
    kl = np.sum(np.exp(pa) * (pa - pb), axis=-1)
    denom = float(np.max(np.abs(la)))
    return {
        "max_abs_diff": float(diff.max()),
        "rel_max_diff": float(diff.max() / denom) if denom > 0 else (0.0 if diff.max() == 0 else math.inf),
        "kl_mean": float(kl.mean()),
        "kl_max": float(kl.max()),
        "top1_agreement": float(np.mean(la.argmax(-1) == lb.argmax(-1))),
    }


def compare_logits(a: Model, b: Model, *, ids: Sequence[int] | None = None, text: str | None = None,
                   runtime: str = "numpy", dtype: Any = np.float32) -> dict[str, Any]:
    """Run both models on the same ids and compare: max |diff|, max|diff|/max|logit|, KL(A‖B), top-1 agreement."""
    from .forward import forward

    if runtime not in ("numpy", "llama.cpp"):
        raise UsageError(f"--runtime must be numpy or llama.cpp, not {runtime!r}")
    if ids is None:
        ids = encode_text(a, b, text) if text is not None else default_token_ids(a, b)
    ids = [int(i) for i in ids]
    vocab = _vocab_size(a, b)
    if any(i < 0 or i >= vocab for i in ids):
        raise UsageError(f"token ids must lie in 0..{vocab - 1}")
    runtimes = []
    outs = []
    for m in (a, b):
        if runtime == "llama.cpp" and m.format == "gguf":
            outs.append(llamacpp_logits(m.source, ids))
            runtimes.append("llama.cpp")
        else:
            outs.append(forward(m, ids, dtype=dtype))
            runtimes.append("numpy")
    if runtime == "llama.cpp" and "llama.cpp" not in runtimes:
        raise UsageError("--runtime llama.cpp runs GGUF files; neither model is one")
    stats = logit_stats(outs[0], outs[1])
    return {"runtime_a": runtimes[0], "runtime_b": runtimes[1], "dtype": np.dtype(dtype).name,
            "n_tokens": len(ids), "token_ids": ids, **stats}


# =========================================================================== entry points
def _describe(model: Model) -> dict[str, Any]:
    return {"path": model.source, "format": model.format, "architecture": model.architecture,
            "tensors": len(model.tensors)}


def verify_models(
    a: Model,
    b: Model,
    *,
    policy: Policy = None,
    atol: float | None = None,
    rtol: float | None = None,
    assume: Mapping[str, Iterable[str]] | None = None,
    logits: bool = False,
    ids: Sequence[int] | None = None,
    text: str | None = None,
    runtime: str = "numpy",
    logits_dtype: Any = np.float32,
) -> Report:
    """Compare model ``b`` against the reference ``a``; see the module docstring.

    ``policy``: None/"auto" (steps read from B), "lossless", a step spec for every tensor
    ("q8_0", "f16", "cast:f16+quant:q8_0"), a mapping name → spec, or a function name → spec
    (None = auto for that tensor). ``assume``: name → steps known to have been applied, added to
    the detected ones. ``atol``/``rtol`` replace every bound by ``atol + rtol·|a|``.
    """
    override = override_bound(atol or 0.0, rtol or 0.0) if (atol is not None or rtol is not None) else None
    table_a, implied_a, skip_a = _name_table(a)
    table_b, implied_b, skip_b = _name_table(b)
    skip = skip_a + skip_b

    pairs: dict[tuple[int, int], list[str]] = {}
    order: list[tuple[Tensor, Tensor]] = []
    missing: list[TensorResult] = []
    skipped: list[str] = []

    def is_buffer(n: str) -> bool:
        return any(n.endswith(s) for s in skip)

    names_a = list(table_a)
    names_b = [n for n in table_b if n not in table_a]
    for n in names_a + names_b:
        ta, tb = table_a.get(n), table_b.get(n)
        if ta is None or tb is None:
            if is_buffer(n):
                skipped.append(n)
                continue
            t = ta or tb
            assert t is not None
            missing.append(TensorResult(name=n, status="missing_in_b" if tb is None else "missing_in_a", ok=False,
                                        shape_a=list(ta.shape) if ta else None, shape_b=list(tb.shape) if tb else None,
                                        dtype_a=_stored(ta).dtype.name if ta else None,
                                        dtype_b=_stored(tb).dtype.name if tb else None))
            continue
        key = (id(ta), id(tb))
        if key in pairs:
            pairs[key].append(n)
        else:
            pairs[key] = [n]
            order.append((ta, tb))

    results: list[TensorResult] = []
    for ta, tb in order:
        names = pairs[(id(ta), id(tb))]
        name, aliases = names[0], names[1:]
        given = _policy_for(policy, names)
        steps = auto_steps(ta, tb) if given is None else given
        if assume:
            extra: list[str] = []
            for n in names:
                extra += list(parse_steps(list(assume.get(n, ()))) or ())
            steps = tuple(dict.fromkeys([*steps, *extra]))
        results.append(compare_tensors(ta, tb, steps=steps, model_a=a, model_b=b, override=override,
                                       name=name, aliases=aliases))
    # Missing tensors where the model order puts them.
    results += missing

    tolerance: dict[str, Any] = {"mode": "override" if override else ("policy" if policy is not None else "auto"),
                                 "atol": atol, "rtol": rtol, "slack": SLACK,
                                 "policy": policy if isinstance(policy, str) else (None if policy is None else "per-tensor")}
    report = Report(a=_describe(a), b=_describe(b), tensors=results, config=compare_configs(a.config, b.config),
                    tokenizer=compare_tokenizers(a, b), tolerance=tolerance, skipped=skipped)
    if implied_a or implied_b:
        report.notes.append("tied output implied by tie_word_embeddings: " + ", ".join(sorted(implied_a | implied_b)))
    if logits:
        report.logits = compare_logits(a, b, ids=ids, text=text, runtime=runtime, dtype=logits_dtype)
    return report


def verify_paths(a_path: str, b_path: str, **kw: Any) -> Report:
    """Read two paths (any supported format) and :func:`verify_models` them."""
    from .pipeline import read_model

    a = read_model(a_path)
    b = read_model(b_path)
    return verify_models(a, b, **kw)


def _main_output(outputs: Sequence[Any]) -> Any:
    """The path that reads back as the whole model: a shard index when sharded, else the first output."""
    from pathlib import Path

    for p in outputs:
        if str(p).endswith(".index.json"):
            return p
    return outputs[0] if not Path(outputs[0]).name.startswith(("config.json", "tokenizer")) else next(
        (p for p in outputs if not Path(p).name.endswith(".json")), outputs[0])


def verify_conversion(result: Any, quiet: bool = False) -> Report:
    """``lmconv SRC DST --verify``: re-read SRC and DST and compare them with the policy of the
    transforms that were applied (read from DST's stored types and the written model's history)."""
    from .pipeline import read_model

    a = read_model(result.source)
    b = read_model(_main_output(result.outputs))
    written: Model = result.model
    if written.config and a.config != written.config:
        a.config = written.config  # the conversion used --config: that is the reference
    assume: dict[str, list[str]] = {}
    for t in written:
        tags = sorted(s for s in lossy_tags(t) if s.startswith(("cast:", "quant:")))
        if tags:
            for n in (t.name, *t.aliases):
                assume[n] = tags
    # A step the written model recorded is only lossy relative to the source when the source's values
    # do not survive it: auto_steps applies that test to B's stored types; history casts are filtered here.
    table_a, _, _ = _name_table(a)
    for n, tags in list(assume.items()):
        ta = table_a.get(n)
        if ta is None:
            continue
        keep = []
        for s in tags:
            kind, _, what = s.partition(":")
            if kind == "cast" and represents(_dt.get(what), _value_dtype(ta)):
                continue
            if kind == "quant" and _stored(ta).dtype.is_quantized and _stored(ta).dtype.name == what:
                continue
            keep.append(s)
        assume[n] = keep
    report = verify_models(a, b, assume=assume)
    if not quiet:
        sys.stderr.write(f"lmconv: verify: {report.summary()}\n")
        sys.stderr.flush()
    return report
