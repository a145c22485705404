"""What a tokenizer-bridge plugin provides (``register_tokenizer_bridges``).

A tokenizer comes in two spellings in the IR (:class:`lmconv.ir.Tokenizer`): the original HF
files, and runtime-level fields. A bridge translates between them; :mod:`lmconv.tokenizer_files`
uses the registered one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TokenizerBridge:
    """``to_fields(files, config)`` → fields; ``to_files(fields)`` → HF files by name. Either raises
    :class:`lmconv.errors.LmconvError` for a tokenizer it cannot translate."""

    name: str
    to_fields: Callable[[Mapping[str, bytes], Mapping[str, Any] | None], dict[str, Any]]
    to_files: Callable[[Mapping[str, Any]], dict[str, bytes]]
