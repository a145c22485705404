"""llama.cpp as a runtime for ``verify --runtime llama.cpp``: a GGUF file's logits from llama.cpp itself.

llama-cpp-python is an optional dependency (``lmconv[llama]``), imported only when a GGUF is run.
The KV cache is kept in f32: llama.cpp's default f16 cache alone moves logits by ~1e-2.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lmconv.errors import InputError, MissingDependencyError

GGML_TYPE_F32 = 0


def llamacpp_logits(path: str, ids: Sequence[int]) -> np.ndarray:
    """``[len(ids), vocab]`` logits of the GGUF at ``path``, every position evaluated."""
    try:
        from llama_cpp import Llama  # optional: only this runtime needs it
    except ImportError:
        raise MissingDependencyError("--runtime llama.cpp needs llama-cpp-python (pip install 'lmconv[llama]')") from None
    n_ctx = max(64, len(ids) + 8)
    try:
        llm = Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, type_k=GGML_TYPE_F32,
                    type_v=GGML_TYPE_F32, verbose=False)
    except (ValueError, RuntimeError) as exc:
        raise InputError(f"llama.cpp cannot load it ({' '.join(str(exc).split())[:160]}); a GGUF without a "
                         f"tokenizer or of an architecture llama.cpp lacks cannot run", path=path) from None
    try:
        llm.eval(list(ids))
        return np.array(llm.scores[: len(ids)], dtype=np.float64)
    finally:
        llm.close()
