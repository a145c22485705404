"""GGUF's tokenizer keys and the IR's: ``tokenizer.ggml.tokens`` is the IR's ``tokens``.

The IR keeps the tokenizer's runtime-level facts without GGUF's prefixes (see
:class:`lmconv.ir.Tokenizer`). Most live under ``tokenizer.ggml.``; the chat templates and the
embedded HF/RWKV tokenizers under ``tokenizer.`` itself. The two maps are exact inverses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

GGML = "tokenizer.ggml."
TOP = "tokenizer."
# IR keys that GGUF keeps directly under "tokenizer." (gguf.Keys.Tokenizer: CHAT_TEMPLATE*, HF_JSON, RWKV)
TOP_LEVEL = ("chat_template", "chat_templates", "huggingface.json", "rwkv.world")


def _top_level(key: str) -> bool:
    return key in TOP_LEVEL or key.startswith("chat_template.")


def from_gguf_keys(kv: Mapping[str, Any]) -> dict[str, Any]:
    """GGUF ``tokenizer.*`` key/values → IR fields (other keys are ignored)."""
    out: dict[str, Any] = {}
    for key, value in kv.items():
        if key.startswith(GGML):
            out[key[len(GGML):]] = value
        elif key.startswith(TOP) and _top_level(key[len(TOP):]):
            out[key[len(TOP):]] = value
    return out


def to_gguf_keys(fields: Mapping[str, Any]) -> dict[str, Any]:
    """IR fields → GGUF ``tokenizer.*`` key/values."""
    return {(TOP if _top_level(k) else GGML) + k: v for k, v in fields.items()}
