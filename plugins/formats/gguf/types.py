"""Which GGML type each tensor gets when writing GGUF.

The rules follow llama.cpp's converter: 1-D tensors, norms, biases and a few
small tensors (position embeddings, token types, MoE routers) stay f32 whatever
was asked; a block type whose block does not divide the row length falls back
(K-quants to a 32-block type, then to f16) with a warning. Presets (q4_k_m …)
decide per tensor through their own policy.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import gguf
import numpy as np
from lmconv import dtypes as dt
from lmconv.bounds import declared
from lmconv.dtypes import DType
from lmconv.errors import UsageError
from lmconv.ir import Tensor
from lmconv.quantizers import Preset, Quantizer, TensorChoice
from lmconv.registry import get_registry

from .ggml_types import ggml_type

# llama-quantize's own fallback order for types whose 256-blocks do not fit a row.
ROW_FALLBACK = {"q2_K": "q4_0", "q3_K": "q4_0", "q4_K": "q5_0", "q5_K": "q5_1", "q6_K": "q8_0",
                **{t: "iq4_nl" for t in ("iq1_s", "iq1_m", "iq2_xxs", "iq2_xs", "iq2_s", "iq3_xxs", "iq3_s", "iq4_xs")}}

# The types llama-quantize refuses to write without an importance matrix (tensor_requires_imatrix),
# except into the token embedding and the output; presets check this themselves.
NEEDS_IMATRIX = frozenset({"iq3_xxs", "iq2_xxs", "iq2_xs", "iq2_s", "iq1_m", "iq1_s"})
NEVER_NEEDS_IMATRIX = ("token_embd.weight", "per_layer_token_embd.weight", "output.weight")

FILE_TYPES = {
    "f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0", "q4_0": "MOSTLY_Q4_0",
    "q4_1": "MOSTLY_Q4_1", "q5_0": "MOSTLY_Q5_0", "q5_1": "MOSTLY_Q5_1", "q2_K": "MOSTLY_Q2_K",
    "q3_K": "MOSTLY_Q3_K_M", "q4_K": "MOSTLY_Q4_K_M", "q5_K": "MOSTLY_Q5_K_M", "q6_K": "MOSTLY_Q6_K",
}


# The tensors llama.cpp's converter keeps in f32 whatever type was asked (routers, positions, the
# convolutions of recurrent blocks …), as gguf-py names them.
ALWAYS_F32 = ("FFN_GATE_INP", "FFN_GATE_INP_SHEXP", "POS_EMBD", "TOKEN_TYPES", "SSM_CONV1D", "SHORTCONV_CONV",
              "TIME_MIX_FIRST", "TIME_MIX_W1", "TIME_MIX_W2", "TIME_MIX_DECAY_W1", "TIME_MIX_DECAY_W2",
              "TIME_MIX_LERP_FUSED", "POSNET_NORM1", "POSNET_NORM2", "ALTUP_CORRECT_COEF", "ALTUP_PREDICT_COEF")


@lru_cache(maxsize=1)
def _always_f32() -> re.Pattern[str]:
    names = [gguf.TENSOR_NAMES[getattr(gguf.MODEL_TENSOR, n)] for n in ALWAYS_F32 if hasattr(gguf.MODEL_TENSOR, n)]
    alternatives = "|".join(re.escape(n).replace(re.escape("{bid}"), r"\d+") for n in names)
    return re.compile(rf"(?:{alternatives})\.weight")


def must_stay_f32(name: str, shape: tuple[int, ...]) -> bool:
    """1-D tensors, norms, non-weights and the small tensors llama.cpp keeps in f32."""
    if len(shape) <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return True
    return _always_f32().fullmatch(name) is not None


def fits(dtype: DType, shape: tuple[int, ...]) -> bool:
    return not dtype.is_quantized or (bool(shape) and shape[-1] % dtype.block_size == 0)


def fallback(dtype: DType, shape: tuple[int, ...]) -> DType:
    """The type llama.cpp would use when ``dtype``'s blocks do not divide the row."""
    while not fits(dtype, shape):
        nxt = ROW_FALLBACK.get(dtype.name)
        dtype = dt.get(nxt) if nxt else dt.F16
    return dtype


def default_type(t: Tensor) -> DType:
    """No --dtype/--quant: keep what the source had (lossless), fp8 becomes f32."""
    if ggml_type(t.dtype) is not None:
        return t.dtype
    if t.dtype.is_float:
        return dt.F32  # fp8 has no GGML type; f32 holds it exactly
    raise UsageError(f"tensor {t.name!r} is {t.dtype.name}, which GGUF cannot store (it has no unsigned or bool types)")


def plan_types(
    tensors: list[Tensor],
    *,
    quant: Quantizer | Preset | None,
    cast: DType | None,
    context: dict[str, Any],
    warn: Callable[[str], None],
    for_runtime: bool = True,
) -> dict[str, DType]:
    """A target dtype per GGUF tensor name. ``for_runtime`` (a family llama.cpp runs) widens the
    tensors llama.cpp computes in f32 only; a generic GGUF keeps every dtype as it was."""
    overrides: list[tuple[str, str]] = []
    for item in context.get("tensor_type_overrides") or []:
        if "=" not in item:
            raise UsageError(f"--tensor-type {item!r} must be REGEX=TYPE")
        pattern, _, tname = item.rpartition("=")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise UsageError(f"--tensor-type {item!r}: bad regular expression ({exc})") from None
        overrides.append((pattern, tname))

    if isinstance(quant, Preset):
        chosen = quant([TensorChoice(t.name, t.shape) for t in tensors], **{**context, "tensor_type_overrides": overrides})
        return {name: dt.get(tname) for name, tname in chosen.items()}

    base = quant.dtype if isinstance(quant, Quantizer) else cast
    plan: dict[str, DType] = {}
    for t in tensors:
        if t.dtype.kind in ("int", "bool"):
            plan[t.name] = default_type(t)
            continue
        want = base if base is not None else default_type(t)
        # llama.cpp computes norms, biases and a few small tensors in f32 only (a bf16 norm aborts it):
        # they become f32 whatever was asked, and a 16-bit one is widened (exactly) even when nothing was.
        if must_stay_f32(t.name, t.shape) and (base is not None or (for_runtime and t.dtype.name in ("f16", "bf16"))):
            want = dt.F32
        for pattern, tname in overrides:
            if re.search(pattern, t.name):
                try:
                    want = dt.get(tname)
                except KeyError:
                    raise UsageError(f"--tensor-type {pattern}={tname}: unknown type; valid: {', '.join(dt.names('quant') + ['f32', 'f16', 'bf16'])}") from None
        if not fits(want, t.shape):
            new = fallback(want, t.shape)
            warn(f"{t.name}: rows of {t.shape[-1]} do not divide into {want.name} blocks of {want.block_size}; using {new.name}")
            want = new
        if want.name in NEEDS_IMATRIX and t.name not in NEVER_NEEDS_IMATRIX and want != t.dtype:
            imatrix = context.get("imatrix")
            if imatrix is None:
                raise UsageError(f"{t.name} would be {want.name}, which llama-quantize refuses to write without an "
                                 f"importance matrix: give one with --imatrix FILE")
            if t.name not in imatrix:
                raise UsageError(f"the importance matrix has no data for {t.name}, which {want.name} needs")
        plan[t.name] = want
    return plan


def imatrix_fn(t: Tensor, target: DType, imatrix: Any) -> tuple[Callable[[np.ndarray], np.ndarray], bool] | None:
    """``t``'s conversion to ``target`` with its importance weights, as llama-quantize applies them:
    ``(function, row_wise)``. A 2-D tensor's rows share one row of weights (the function works on
    any piece of rows); a 3-D tensor of stacked experts takes one row per expert, so the function
    must see whole experts. None when the matrix has no entry for ``t`` or ``target``'s quantiser
    takes no weights (``quantize(rows, imatrix=…)``); a matrix of the wrong size raises (UsageError).
    See :func:`imatrix_step` for what verification is told."""
    if t.dtype == target or len(t.shape) < 2:
        return None
    weights = imatrix.weights_for(t.name, t.shape)
    if weights is None or not target.is_quantized:
        return None
    reg = get_registry()
    quantize = reg.quantizer(target.name).quantize
    if quantize is None or not _takes_imatrix(quantize):
        return None
    if t.dtype.is_quantized:
        to_f32 = reg.dequantizer(t.dtype.name).dequantize
    else:
        to_f32 = lambda a: a.astype(np.float32, copy=False)
    if weights.shape[0] == 1:
        row = weights[0]
        return (lambda a: quantize(to_f32(a), imatrix=row)), True

    def experts(a: np.ndarray) -> np.ndarray:
        return np.stack([quantize(to_f32(a[e]), imatrix=weights[e]) for e in range(a.shape[0])])

    return experts, False


def imatrix_step(target: DType) -> str | None:
    """The history step of a tensor quantised to ``target`` with importance weights, when the
    quantiser plugin declares that step's extra error allowance (``imatrix:TYPE``), else None."""
    step = f"imatrix:{target.name}"
    return step if declared(step) is not None else None


def _takes_imatrix(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "imatrix" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def file_type(plan: dict[str, DType], quant_name: str | None) -> int:
    """general.file_type: the requested mixture, else the type most 2-D weights got."""
    if quant_name:
        key = FILE_TYPES.get(quant_name) or FILE_TYPES.get(quant_name.lower()) or "MOSTLY_" + quant_name.upper()
        if hasattr(gguf.LlamaFileType, key):
            return int(getattr(gguf.LlamaFileType, key))
    non_f32 = [d.name for d in plan.values() if d.name != "f32"]
    top = max(sorted(set(non_f32)), key=non_f32.count) if non_f32 else "f32"
    key = FILE_TYPES.get(top, "ALL_F32")
    return int(getattr(gguf.LlamaFileType, key, gguf.LlamaFileType.ALL_F32))
