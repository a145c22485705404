"""Whole-model transforms built from lazy per-tensor ones: casts and dequantisation.

Each returns a new Model over new lazy tensors; nothing is computed here.
"""

from __future__ import annotations

import numpy as np

from .dtypes import F32, DType
from .ir import Model, Tensor


def cast_model(model: Model, dtype: DType) -> Model:
    """Cast every floating tensor to ``dtype``; integer, bool and block tensors are never cast."""
    return model.with_tensors([t.cast(dtype) for t in model])


def dequantize_tensor(tensor: Tensor, to: DType | None = None) -> Tensor:
    """Lazily turn a block-quantised tensor into f32 (or ``to``) with gguf-py's dequantisers."""
    if not tensor.dtype.is_quantized:
        return tensor
    from gguf import quants

    qtype = tensor.dtype.ggml
    target = to if (to is not None and to.is_float) else F32

    def run(blocks: np.ndarray) -> np.ndarray:
        out = quants.dequantize(blocks, qtype)
        return out if target is F32 else out.astype(target.numpy)

    return tensor.map(run, dtype=target, note=f"dequant:{tensor.dtype.name}")


def dequantize_model(model: Model, to: DType | None = None) -> Model:
    if not any(t.dtype.is_quantized for t in model):
        return model
    return model.with_tensors([dequantize_tensor(t, to) for t in model])
