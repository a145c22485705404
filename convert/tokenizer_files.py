"""The tokenizer in either spelling: HF files or runtime-level fields, through a registered bridge.

The core only asks "give me the files" or "give me the fields"; the translation is a plugin's
(:class:`lmconv.bridges.TokenizerBridge`, registered with the ``register_tokenizer_bridges`` hook;
the GGUF plugin provides the built-in one). Without a bridge, a model keeps the spelling it was read in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .bridges import TokenizerBridge
from .errors import LmconvError, UsageError
from .ir import Tokenizer
from .registry import get_registry


def bridge() -> TokenizerBridge | None:
    """The registered bridge, or None when no plugin provides one."""
    return get_registry().tokenizer_bridge


def tokenizer_files(tok: Tokenizer) -> dict[str, bytes]:
    """HF files of ``tok``: its own, or rebuilt from its fields (and cached on it)."""
    if tok.files:
        return dict(tok.files)
    if tok.fields:
        b = bridge()
        if b is None:
            raise UsageError("the model's tokenizer has no HF files and no plugin can rebuild them "
                             "(the GGUF plugin's tokenizer bridge is disabled or missing)")
        tok.files = b.to_files(tok.fields)
        return dict(tok.files)
    return {}


def tokenizer_fields(tok: Tokenizer, config: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Runtime-level fields of ``tok``: its own, or translated from its files; None when there is
    no tokenizer or no bridge. A file the bridge cannot translate raises its :class:`LmconvError`."""
    if tok.fields:
        return dict(tok.fields)
    if not tok.files:
        return None
    b = bridge()
    if b is None:
        return None
    return dict(b.to_fields(tok.files, config))


def equivalent_tokenizers(existing: Mapping[str, bytes], new: Mapping[str, bytes],
                          config: Mapping[str, Any] | None) -> bool:
    """Whether two sets of HF tokenizer files describe the same tokenizer: the bridge reads both to
    the same fields (vocabulary, scores, merges, special tokens and flags, pre-tokenizer, chat
    template). A tokenizer rebuilt from a GGUF spells its regexes and post-processor its own way;
    that is not a difference. False when there is no bridge or either side cannot be read."""
    b = bridge()
    if b is None or not existing or not new:
        return False
    try:
        return b.to_fields(existing, config) == b.to_fields(new, config)
    except LmconvError:
        return False
