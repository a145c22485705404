"""Turn the IR tokenizer into Hugging Face files, whichever spelling it was read in.

Kept apart from the GGUF plugin's bridge so that the core only asks "give me
the files": when the source had HF files they are returned verbatim; when it had
only GGUF fields (a GGUF source), the GGUF plugin's bridge rebuilds them.
"""

from __future__ import annotations

from .ir import Tokenizer


def tokenizer_files(tok: Tokenizer) -> dict[str, bytes]:
    if tok.files:
        return dict(tok.files)
    if tok.fields:
        from lmconv.plugins.gguf.tokenizer_bridge import gguf_to_hf

        tok.files = gguf_to_hf(tok.fields)
        return dict(tok.files)
    return {}
