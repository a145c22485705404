"""The non-tensor picture of a model: what ``lmconv inspect --json`` prints.

Its shape is fixed by ``schemas/model-manifest.schema.json``; a test validates
real output against it.
"""

from __future__ import annotations

import json
from typing import Any

from .ir import Model
from .registry import get_registry

CONFIG_SUMMARY_KEYS = (
    "model_type", "hidden_size", "n_embd", "intermediate_size", "n_inner", "num_hidden_layers", "n_layer",
    "num_attention_heads", "n_head", "num_key_value_heads", "vocab_size", "max_position_embeddings",
    "n_positions", "rope_theta", "rms_norm_eps", "layer_norm_epsilon", "tie_word_embeddings", "torch_dtype", "dtype",
)


def tokenizer_summary(model: Model) -> dict[str, Any] | None:
    tok = model.tokenizer
    if not tok:
        return None
    out: dict[str, Any] = {"files": sorted(tok.files)}
    if tok.fields:
        f = tok.fields
        out["kind"] = f.get("model")
        out["pre"] = f.get("pre")
        tokens = f.get("tokens")
        out["vocab_size"] = len(tokens) if isinstance(tokens, list) else None
        merges = f.get("merges")
        out["merges"] = len(merges) if isinstance(merges, list) else 0
        out["bos_token_id"] = f.get("bos_token_id")
        out["eos_token_id"] = f.get("eos_token_id")
        out["chat_template"] = "chat_template" in f
    elif "tokenizer.json" in tok.files:
        try:
            tj = json.loads(tok.files["tokenizer.json"])
            m = tj.get("model") or {}
            out["kind"] = {"BPE": "bpe", "Unigram": "unigram", "WordPiece": "wordpiece", "WordLevel": "wordlevel"}.get(m.get("type"), m.get("type"))
            vocab = m.get("vocab")
            n = len(vocab) if isinstance(vocab, (dict, list)) else 0
            out["vocab_size"] = n + sum(1 for a in tj.get("added_tokens") or [] if isinstance(vocab, dict) and a.get("content") not in vocab)
            out["merges"] = len(m.get("merges") or [])
        except (ValueError, AttributeError):
            out["kind"] = "unreadable"
    elif "tokenizer.model" in tok.files:
        out["kind"] = "sentencepiece"
    return out


def manifest(model: Model) -> dict[str, Any]:
    tensors = []
    params = 0
    for t in model:
        stored = t.undo if t.undo is not None and t.undo.shape == t.shape else t  # what the file holds
        tensors.append({"name": t.name, "shape": list(t.shape), "dtype": stored.dtype.name, "bytes": stored.nbytes, "aliases": list(t.aliases)})
        params += t.numel
    meta = {k: v for k, v in model.metadata.items() if _jsonable(v)}
    family = get_registry().architecture_for(model.config)
    return {
        "path": model.source,
        "format": model.format,
        "architecture": model.architecture,
        "family": family.name if family is not None else None,
        "config": {k: model.config[k] for k in (*CONFIG_SUMMARY_KEYS, *(family.summary_keys if family else ()))
                   if k in model.config},
        "tokenizer": tokenizer_summary(model),
        "metadata": meta,
        "tensors": tensors,
        "totals": {"tensors": len(tensors), "parameters": params, "bytes": sum(t["bytes"] for t in tensors)},
    }


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False
