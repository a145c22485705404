"""Checks of GGUF metadata that lmconv turns into a config and a tokenizer.

A GGUF's KV section is typed by its writer, and a hostile or broken one can say anything: a block
count of 2^32, a head count of zero, token arrays of different lengths, a BOS id past the vocabulary.
Each value is checked for its type and range here, and named by its GGUF key, before it sizes a
loop, a reshape or a tokenizer.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from lmconv.errors import InputError
from lmconv.ir import Tensor

_INT_TYPES = frozenset({0, 1, 2, 3, 4, 5, 10, 11})


_NUM_TYPES = _INT_TYPES | {6, 12}


_TYPE_NAMES = {0: "u8", 1: "i8", 2: "u16", 3: "i16", 4: "u32", 5: "i32", 6: "f32", 7: "bool", 8: "string", 9: "array",
               10: "u64", 11: "i64", 12: "f64"}


def type_name(types: dict[str, tuple[int, int | None]], key: str) -> str:
    vt, sub = types[key]
    return f"an array of {_TYPE_NAMES.get(sub, sub)}" if vt == 9 else f"a {_TYPE_NAMES.get(vt, vt)}"


def int_of(kv: dict[str, Any], types: dict[str, tuple[int, int | None]], key: str, path: Path, low: int = 0) -> int | None:
    """The integer value of ``key`` (None when absent); a value of another type, or below ``low``, is refused."""
    if key not in kv:
        return None
    if types[key][0] not in _INT_TYPES:
        raise InputError(f"{key} is {type_name(types, key)}; it must be an integer", path=path)
    value = int(kv[key])
    if value < low:
        raise InputError(f"{key} is {value}; it must be at least {low}", path=path)
    return value


_TOKEN_TYPES = range(0, 7)  # undefined, normal, unknown, control, user-defined, unused, byte


def check_tokenizer(kv: dict[str, Any], types: dict[str, tuple[int, int | None]], path: Path) -> None:
    """Tokenizer fields that would make a broken tokenizer.json (or mislead llama.cpp) are refused here."""
    K = "tokenizer.ggml."

    def array_of(key: str, subs: frozenset[int] | set[int], what: str) -> list[Any] | None:
        if key not in kv:
            return None
        vt, sub = types[key]
        if vt != 9 or (sub is not None and sub not in subs):
            raise InputError(f"{key} is {type_name(types, key)}; it must be an array of {what}", path=path)
        return kv[key]

    for key in (K + "model", K + "pre", "tokenizer.chat_template"):
        if key in kv and types[key][0] != 8:
            raise InputError(f"{key} is {type_name(types, key)}; it must be a string", path=path)
    tokens = array_of(K + "tokens", {8}, "strings")
    n = len(tokens) if tokens is not None else None
    for key, subs, what in ((K + "scores", {6, 12}, "floats"), (K + "token_type", _INT_TYPES, "integers")):
        values = array_of(key, subs, what)
        if values is not None and n is not None and len(values) != n:
            raise InputError(f"{key} has {len(values)} entries but tokenizer.ggml.tokens has {n}", path=path)
        if key.endswith("token_type") and values:
            bad = next((v for v in values if v not in _TOKEN_TYPES), None)
            if bad is not None:
                raise InputError(f"unknown token type {bad} in {key} (llama.cpp's are 0 to 6)", path=path)
        if key.endswith("scores") and values and not all(math.isfinite(v) for v in values):
            raise InputError(f"{key} holds NaN or infinite scores", path=path)
    merges = array_of(K + "merges", {8}, "strings")
    for m in merges or ():
        if m.find(" ", 1) < 0:
            raise InputError(f"merge {m!r} in {K}merges is not 'left right'", path=path)
    for key in kv:
        if key.startswith(K) and key.endswith("_token_id"):
            value = int_of(kv, types, key, path)
            if n is not None and not 0 <= value < n:  # type: ignore[operator]
                raise InputError(f"{key} is {value}, beyond the {n} tokens of the vocabulary", path=path)


# metadata an architecture's config is derived from: whole numbers of at least 1, and finite numbers
# a state-space model has no attention and no feed-forward: llama.cpp's converter writes 0 for these
_MAY_BE_ZERO = ("feed_forward_length", "attention.head_count", "attention.head_count_kv")
_COUNT_KEYS = ("block_count", "embedding_length", "feed_forward_length", "context_length", "attention.head_count",
               "attention.head_count_kv", "vocab_size", "attention.key_length", "attention.value_length",
               "rope.dimension_count")


_FLOAT_KEYS = ("attention.layer_norm_rms_epsilon", "attention.layer_norm_epsilon", "rope.freq_base", "rope.scaling.factor")


def check_architecture(arch: str, kv: dict[str, Any], types: dict[str, tuple[int, int | None]], raw: list[Tensor],
                        path: Path) -> None:
    """The metadata a known architecture's config comes from, against its types and the tensors."""
    recurrent = any(k.startswith(f"{arch}.ssm.") for k in kv)  # a state-space model has no attention, no FFN
    for suffix in _COUNT_KEYS:
        value = int_of(kv, types, f"{arch}.{suffix}", path, low=0 if recurrent and suffix in _MAY_BE_ZERO else 1)
        if value is not None and value >= 2**32:
            raise InputError(f"{arch}.{suffix} is {value}, beyond any real model", path=path)
    for suffix in _FLOAT_KEYS:
        key = f"{arch}.{suffix}"
        if key in kv:
            if types[key][0] not in _NUM_TYPES:
                raise InputError(f"{key} is {type_name(types, key)}; it must be a number", path=path)
            if not math.isfinite(float(kv[key])):
                raise InputError(f"{key} is {kv[key]}; it must be a finite number", path=path)
    blocks = {int(m.group(1)) for t in raw if (m := re.match(r"blk\.(\d+)\.", t.name))}
    n_block = kv.get(f"{arch}.block_count")
    if n_block is not None and blocks and (max(blocks) + 1 != n_block or len(blocks) != n_block):
        raise InputError(f"{arch}.block_count is {n_block} but the tensors hold blocks 0 to {max(blocks)}"
                         + ("" if len(blocks) == max(blocks) + 1 else f" with {max(blocks) + 1 - len(blocks)} missing"),
                         path=path)
    embd = next((t for t in raw if t.name == "token_embd.weight"), None)
    if embd is not None and len(embd.shape) == 2:
        n_vocab, width = embd.shape
        if f"{arch}.embedding_length" in kv and kv[f"{arch}.embedding_length"] != width:
            raise InputError(f"{arch}.embedding_length is {kv[f'{arch}.embedding_length']} but token_embd.weight rows "
                             f"are {width} wide", path=path)
        tokens = kv.get("tokenizer.ggml.tokens")
        if isinstance(tokens, list) and tokens and len(tokens) != n_vocab:
            raise InputError(f"the vocabulary has {len(tokens)} tokens but token_embd.weight has {n_vocab} rows",
                             path=path)
