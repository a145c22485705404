"""Registers the quantisers: gguf-py's (byte-identical to llama.cpp) and, when present, our K-quants.

f16/bf16/q8_0/q4_0/q4_1/q5_0/q5_1 use ``gguf.quants``; q2_K…q6_K come from
:mod:`lmconv.plugins.quantizers.kquants` (gguf-py can only dequantise those), and the
llama-quantize presets (q4_k_m …) from :mod:`lmconv.plugins.quantizers.presets`.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

import numpy as np

from lmconv import dtypes as dt
from lmconv.hookspecs import hookimpl
from lmconv.quantizers import Quantizer

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
    try:
        kq = importlib.import_module("lmconv.plugins.quantizers.kquants")
    except ImportError:
        kq = None
    if kq is not None:
        for name, fn in getattr(kq, "KQUANTIZERS", {}).items():
            register(_kquant(name, fn))
    try:
        presets = importlib.import_module("lmconv.plugins.quantizers.presets")
    except ImportError:
        presets = None
    if presets is not None and hasattr(presets, "register_presets"):
        presets.register_presets(register)
