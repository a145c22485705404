"""Whole-model transforms built from lazy per-tensor ones: casts and dequantisation.

Each returns a new Model over new lazy tensors; nothing is computed here. Block types are
turned back into floats by the quantiser plugin that registered them.
"""

from __future__ import annotations

import numpy as np

from .dtypes import F32, DType
from .ir import Model, Tensor
from .registry import get_registry


def dequantize_tensor(tensor: Tensor, to: DType | None = None) -> Tensor:
    """Lazily turn a block-quantised tensor into f32 (or ``to``) with its plugin's dequantiser."""
    if not tensor.dtype.is_quantized:
        return tensor
    q = get_registry().dequantizer(tensor.dtype.name)
    target = to if (to is not None and to.is_float) else F32
    np_target = target.numpy

    def run(blocks: np.ndarray) -> np.ndarray:
        out = np.asarray(q.dequantize(blocks), dtype=np.float32)
        return out if target is F32 else out.astype(np_target)

    return tensor.map(run, dtype=target, note=f"dequant:{tensor.dtype.name}", rows=True)


def cast_model(model: Model, dtype: DType) -> Model:
    """Cast every floating tensor to ``dtype``; integer, bool and block tensors are never cast."""
    return model.with_tensors([t.cast(dtype) for t in model])


def dequantize_model(model: Model, to: DType | None = None) -> Model:
    if not any(t.dtype.is_quantized for t in model):
        return model
    return model.with_tensors([dequantize_tensor(t, to) for t in model])
