"""Behaviour, not just weights: run both models on the same token ids and compare their logits.

The reference runtime is ``numpy``: the forward pass the model's family registers. Other runtimes
(llama.cpp for GGUF files) come from plugins (:class:`lmconv.runtimes.Runtime`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import LmconvError, MissingDependencyError, UsageError
from ..ir import Model
from ..registry import get_registry
from ..tokenizer_files import tokenizer_files


def forward(model: Model, ids: Sequence[int], *, dtype: Any = np.float32) -> np.ndarray:
    """Logits ``[len(ids), vocab]`` of ``model`` on ``ids`` by its family's reference forward pass."""
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise UsageError("the reference forward pass runs in float32 or float64")
    ids = [int(i) for i in ids]
    if not ids:
        raise UsageError("no token ids to run")
    reg = get_registry()
    arch = reg.architecture_for(model.config)
    if arch is None or not arch.has_forward:
        with_forward = sorted(a.name for a in reg.architectures.values() if a.has_forward)
        what = model.architecture or model.config.get("model_type") or "an unknown architecture"
        raise UsageError(f"no installed family has a reference forward pass for {what}"
                         f" (families with one: {', '.join(with_forward) or 'none'})"
                         + (f" ({model.source})" if model.source else ""))
    with np.errstate(over="ignore", under="ignore"):
        return np.asarray(arch.forward(model, ids, dt)).astype(dt, copy=False)


def vocab_size(*models: Model) -> int:
    """The smallest vocabulary of the models (their embedding's rows, else ``vocab_size``)."""
    reg = get_registry()
    sizes = []
    for m in models:
        arch = reg.architecture_for(m.config)
        emb = m.tensors.get(arch.hf_embedding) if arch is not None and arch.hf_embedding else None
        if emb is not None and emb.shape:
            sizes.append(emb.shape[0])
            continue
        v = m.config.get("vocab_size")
        if isinstance(v, int) and v > 0:
            sizes.append(v)
    if not sizes:
        raise UsageError("cannot tell the vocabulary size to pick token ids; pass --text")
    return min(sizes)


def default_token_ids(a: Model, b: Model, n: int = 16) -> list[int]:
    vocab = vocab_size(a, b)
    return [(11 + 7919 * i) % vocab for i in range(n)]


def encode_text(a: Model, b: Model, text: str) -> list[int]:
    """Token ids of ``text`` through the first tokenizer.json found (A's, then B's, then one rebuilt from fields)."""
    raw = None
    for m in (a, b):
        if "tokenizer.json" in m.tokenizer.files:
            raw = m.tokenizer.files["tokenizer.json"]
            break
    if raw is None:
        for m in (a, b):
            if m.tokenizer.fields:
                try:
                    raw = tokenizer_files(m.tokenizer).get("tokenizer.json")
                except LmconvError:
                    raw = None
                if raw:
                    break
    if raw is None:
        raise UsageError("--text needs a tokenizer.json (beside A or B, or rebuilt from the tokenizer fields)")
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise MissingDependencyError("--text needs the tokenizers package (pip install tokenizers)") from None
    tok = Tokenizer.from_str(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    ids = tok.encode(text).ids
    if not ids:
        raise UsageError("--text encodes to no tokens")
    return list(ids)


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
    """Run both models on the same ids and compare: max |diff|, max|diff|/max|logit|, KL(A‖B), top-1 agreement.

    With a runtime other than numpy, each model stored in one of that runtime's formats runs there
    (from its file); the other runs the numpy reference."""
    rt = None if runtime == "numpy" else get_registry().runtime(runtime)
    if ids is None:
        ids = encode_text(a, b, text) if text is not None else default_token_ids(a, b)
    ids = [int(i) for i in ids]
    vocab = vocab_size(a, b)
    if any(i < 0 or i >= vocab for i in ids):
        raise UsageError(f"token ids must lie in 0..{vocab - 1}")
    runtimes, outs = [], []
    for m in (a, b):
        if rt is not None and m.format in rt.formats:
            outs.append(np.asarray(rt.logits(m.source, ids), dtype=np.float64))
            runtimes.append(rt.name)
        else:
            outs.append(forward(m, ids, dtype=dtype))
            runtimes.append("numpy")
    if rt is not None and rt.name not in runtimes:
        raise UsageError(f"--runtime {rt.name} runs {', '.join(rt.formats)} files; neither model is one")
    stats = logit_stats(outs[0], outs[1])
    return {"runtime_a": runtimes[0], "runtime_b": runtimes[1], "dtype": np.dtype(dtype).name,
            "n_tokens": len(ids), "token_ids": ids, **stats}
