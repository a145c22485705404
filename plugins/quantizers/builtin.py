"""Registers the quantisers: gguf-py's (byte-identical to llama.cpp) and, when present, our K-quants.

f16/bf16/q8_0/q4_0/q4_1/q5_0/q5_1 use ``gguf.quants``; q2_K…q6_K come from
:mod:`lmconv.plugins.quantizers.kquants` (gguf-py can only dequantise those), and the
llama-quantize presets (q4_k_m …) from :mod:`lmconv.plugins.quantizers.presets`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any, Callable

import numpy as np

from lmconv import dtypes as dt
from lmconv.hookspecs import hookimpl
from lmconv.errors import UsageError
from lmconv.quantizers import Preset, Quantizer, TensorChoice

from .kquants import KQUANTIZERS
from .presets import PRESETS, choose_tensor_types

GGUF_PY_TYPES = ("f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1")


def _gguf_py(name: str) -> Quantizer:
    from gguf import quants

    d = dt.get(name)
    qtype = d.ggml

    def quantize(rows: np.ndarray) -> np.ndarray:
        out = quants.quantize(np.ascontiguousarray(rows, dtype=np.float32), qtype)
        if d.numpy is not None:  # f16/bf16 come back as uint8/float16 arrays: give the IR's dtype
            out = out.view(d.numpy) if out.dtype != d.numpy else out
        return out

    def dequantize(blocks: np.ndarray) -> np.ndarray:
        if d.numpy is not None:
            return np.asarray(blocks).astype(np.float32)
        return quants.dequantize(blocks, qtype)

    return Quantizer(name=name, dtype=d, quantize=quantize, dequantize=dequantize, description="gguf-py reference quantiser")


def _kquant(name: str, fn: Callable[[np.ndarray], np.ndarray]) -> Quantizer:
    from gguf import quants

    d = dt.get(name)

    def quantize(rows: np.ndarray) -> np.ndarray:
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        flat = rows.reshape(-1, rows.shape[-1])
        return fn(flat).reshape(d.storage_shape(rows.shape))

    return Quantizer(name=name, dtype=d, quantize=quantize, dequantize=lambda b: quants.dequantize(b, d.ggml),
                     description="lmconv numpy K-quant, byte-identical to llama.cpp's reference")


@hookimpl
def register_quantizers(register: Any) -> None:
    for name in GGUF_PY_TYPES:
        register(_gguf_py(name))
    for name, fn in KQUANTIZERS.items():
        register(_kquant(name, fn))
    for preset in PRESETS.values():
        register(Preset(name=preset.name, base=preset.base.lower(), choose=partial(_choose, preset.name),
                        description=preset.description))


def _choose(preset: str, tensors: Sequence[TensorChoice], **context: Any) -> dict[str, str]:
    """llama-quantize's per-tensor choice for ``preset`` (see presets.py), as lmconv dtype names."""
    try:
        return choose_tensor_types(tensors, preset, **context)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
