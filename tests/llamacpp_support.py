"""Running real llama.cpp (through llama-cpp-python) and transformers on the same token ids."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

GGML_TYPE_F32 = 0


def llamacpp_logits(gguf_path: Path, ids: list[int]) -> np.ndarray:
    """Logits for every position, with an f32 KV cache so that llama.cpp's f16 cache does not blur them."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf_path), n_ctx=max(64, len(ids) + 8), n_batch=max(64, len(ids) + 8),
                logits_all=True, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32, n_threads=2, verbose=False)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float64)
    finally:
        llm.close()


def transformers_logits(model_dir: Path, ids: list[int], **kwargs: object) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), torch_dtype=torch.float32, **kwargs)
    model.eval()
    with torch.no_grad():
        out = model(torch.tensor([ids])).logits[0]
    return out.double().numpy()


def relative_max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a.argmax(-1) == b.argmax(-1)))


def llamacpp_quantize(src: Path, dst: Path, ftype_name: str, *, pure: bool = False, nthread: int = 2) -> None:
    """Quantise with llama.cpp's own llama_model_quantize (the reference for byte-exactness)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype_name.upper()}")
    params.nthread = nthread
    params.pure = pure
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize failed with {rc}")
