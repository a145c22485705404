"""Which GGML type each tensor gets when writing GGUF.

The rules follow llama.cpp's converter: 1-D tensors, norms, biases and a few
small tensors (position embeddings, token types, MoE routers) stay f32 whatever
was asked; a block type whose block does not divide the row length falls back
(K-quants to a 32-block type, then to f16) with a warning. Presets (q4_k_m …)
decide per tensor through their own policy.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import gguf

from lmconv import dtypes as dt
from lmconv.dtypes import DType
from lmconv.errors import UsageError
from lmconv.ir import Tensor
from lmconv.quantizers import Preset, Quantizer, TensorChoice

from .ggml_types import ggml_type

# llama-quantize's own fallback order for types whose 256-blocks do not fit a row.
ROW_FALLBACK = {"q2_K": "q4_0", "q3_K": "q4_0", "q4_K": "q5_0", "q5_K": "q5_1", "q6_K": "q8_0"}

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
        plan[t.name] = want
    return plan


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
