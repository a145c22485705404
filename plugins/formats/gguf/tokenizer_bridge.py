"""Hugging Face tokenizer files ⇄ GGUF's ``tokenizer.*`` key/values.

:func:`hf_to_gguf` reads tokenizer.json / tokenizer_config.json / special_tokens_map.json /
vocab.json+merges.txt / tokenizer.model / added_tokens.json / chat_template.* and returns
the key/values llama.cpp reads, following the conventions of llama.cpp's converter:

* byte-level BPE → ``tokenizer.ggml.model = "gpt2"``, a ``tokenizer.ggml.pre`` name read
  from the tokenizer's own pre-tokenizer (:mod:`.pretokenizer`), tokens as the BPE spells
  them, added tokens as their text, merges as ``"left right"`` strings;
* SentencePiece-style BPE (tokenizer.model, byte-fallback BPE, Metaspace) → ``"llama"``
  with pre ``"default"``, pieces, scores and SentencePiece token types: llama.cpp's SPM
  tokenizer joins the best-scoring neighbours, which is what such a BPE does;
* a Unigram tokenizer.json → ``"t5"`` (llama.cpp's Viterbi tokenizer, "UGM") with the same
  pieces, scores and types, its ``add_space_prefix`` / ``remove_extra_whitespaces`` flags and
  the ``precompiled_charsmap`` of a ``Precompiled`` normalizer. (``"llama"`` would run
  llama.cpp's merge-by-score algorithm over a Unigram vocabulary and give other ids.)
* token types: 1 normal, 2 unknown, 3 control (special added tokens, or ones that look
  special such as ``<|...|>``), 4 user-defined (other added tokens; a tokenizer.model's
  user-defined pieces are added tokens too, as transformers makes them: text with ``" "`` for
  ``▁``, score -1000), 5 unused (``[PAD{id}]`` fillers up to config ``vocab_size``), 6 byte
  (``<0xXX>``);
* BOS/EOS/UNK/SEP/PAD ids and ``add_bos_token``/``add_eos_token`` as gguf-py's SpecialVocab
  derives them (post-processor first, then tokenizer_config, then config.json ids); the
  add flags are always written, so llama.cpp adds exactly what transformers adds.

Value types (the GGUF writer maps them; see :data:`ARRAY_ELEMENT_TYPES`): strings are
``str``, ids ``int`` (uint32), flags ``bool``; ``tokenizer.ggml.tokens`` and
``tokenizer.ggml.merges`` are ``list[str]``, ``tokenizer.ggml.token_type`` is ``list[int]``
(int32), ``tokenizer.ggml.scores`` is ``list[float]`` (float32), and
``tokenizer.ggml.precompiled_charsmap`` (Unigram only) is ``bytes`` for a UINT8 array.

:func:`gguf_to_hf` goes back: from those fields (ours or llama.cpp's) it builds a
``tokenizer.json`` that tokenizes as llama.cpp does, plus ``tokenizer_config.json`` and
``special_tokens_map.json``, and for SentencePiece vocabularies (``"llama"``, ``"t5"``) a
``tokenizer.model`` holding every piece, score and type as the GGUF has them
(:mod:`.sentencepiece_model`), so that HF → GGUF → HF → GGUF keeps the scores exactly. Output
bytes are deterministic.
"""

from __future__ import annotations

import base64
import json
import os
import re
import struct
from collections.abc import Iterable, Mapping
from typing import Any

from lmconv.errors import InputError, UsageError

from . import sentencepiece_model as spm_proto
from .pretokenizer import (
    EXAMPLE_NAMES,
    KNOWN_PRE_TOKENIZERS,
    describe_pre_tokenizer,
    hf_pre_tokenizer,
    identify_pre_tokenizer,
    is_sentencepiece_style,
    pre_tokenizer_info,
)

__all__ = ["ARRAY_ELEMENT_TYPES", "KNOWN_PRE_TOKENIZERS", "gguf_to_hf", "hf_to_gguf"]

# llama.cpp's token types (gguf.TokenType; SentencePiece uses the same numbers).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

K = "tokenizer.ggml."
MODEL, PRE, TOKENS, TOKEN_TYPE = K + "model", K + "pre", K + "tokens", K + "token_type"
SCORES, MERGES = K + "scores", K + "merges"
ADD_BOS, ADD_EOS, ADD_SEP = K + "add_bos_token", K + "add_eos_token", K + "add_sep_token"
ADD_PREFIX = K + "add_space_prefix"
CHAT_TEMPLATE = "tokenizer.chat_template"
# special-token kind → GGUF key (gguf-py spells "seperator").
ID_KEYS = {"bos": K + "bos_token_id", "eos": K + "eos_token_id", "unk": K + "unknown_token_id",
           "sep": K + "seperator_token_id", "pad": K + "padding_token_id", "mask": K + "mask_token_id"}

CHARSMAP, REMOVE_EXTRA_WS = K + "precompiled_charsmap", K + "remove_extra_whitespaces"

ARRAY_ELEMENT_TYPES: dict[str, str] = {
    TOKENS: "string", MERGES: "string", TOKEN_TYPE: "int32", SCORES: "float32", "tokenizer.chat_templates": "string",
    CHARSMAP: "uint8",  # given as ``bytes``; llama.cpp accepts only an INT8/UINT8 array here
}
"""Element type of each array-valued key :func:`hf_to_gguf` returns."""

SPIECE = "\u2581"  # SentencePiece's visible space
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")
_USER_SCORE = -1000.0  # llama.cpp's score for added (control / user-defined) tokens
_HOLE_SCORE = -10000.0  # and for ids no tokenizer file names


# =========================================================================== reading HF files
class _Files:
    def __init__(self, files: Mapping[str, bytes], where: str) -> None:
        self.files = {os.path.basename(k): v for k, v in files.items()}
        self.where = where

    def path(self, name: str) -> str:
        return os.path.join(self.where, name) if self.where else name

    def has(self, name: str) -> bool:
        return name in self.files

    def text(self, name: str) -> str | None:
        raw = self.files.get(name)
        if raw is None:
            return None
        try:
            return raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else str(raw)
        except UnicodeDecodeError:
            raise InputError("is not UTF-8 text", path=self.path(name)) from None

    def json(self, name: str) -> Any:
        text = self.text(name)
        if text is None:
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"is not valid JSON ({exc.msg} at line {exc.lineno})", path=self.path(name)) from None


def _content(entry: Any) -> str | None:
    """A special token as tokenizer_config / special_tokens_map spell it: a string or {"content": ...}."""
    if isinstance(entry, str):
        return entry
    if isinstance(entry, Mapping) and isinstance(entry.get("content"), str):
        return entry["content"]
    return None


def _looks_special(text: str) -> bool:
    """Added tokens that llama.cpp marks as control even when not flagged special."""
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<\uff5c") and text.endswith("\uff5c>"))
            or (text.startswith("<unused") and text.endswith(">")))


def _config_vocab_size(config: Mapping[str, Any] | None) -> int | None:
    if not config:
        return None
    for cfg in (config, config.get("text_config") or {}):
        size = cfg.get("vocab_size") if isinstance(cfg, Mapping) else None
        if isinstance(size, int) and not isinstance(size, bool) and size > 0:
            return size
    return None


def _added_tokens(src: _Files, tj: Any, tc: Any) -> dict[int, dict[str, Any]]:
    """id → {content, special} of every added token, tokenizer.json first, then the other files."""
    out: dict[int, dict[str, Any]] = {}
    for entry in (tj or {}).get("added_tokens") or []:
        if isinstance(entry, Mapping) and isinstance(entry.get("id"), int) and isinstance(entry.get("content"), str):
            out.setdefault(entry["id"], {"content": entry["content"], "special": bool(entry.get("special"))})
    for key, entry in ((tc or {}).get("added_tokens_decoder") or {}).items():
        if str(key).isdigit() and _content(entry) is not None:
            special = bool(entry.get("special")) if isinstance(entry, Mapping) else True
            out.setdefault(int(key), {"content": _content(entry), "special": special})
    extra = src.json("added_tokens.json")
    if isinstance(extra, Mapping):
        for content, idx in extra.items():
            if isinstance(idx, int):
                out.setdefault(idx, {"content": str(content), "special": False})
    return out


def _named_specials(tc: Any, stm: Any) -> set[str]:
    """Special tokens the configs name (bos_token, ..., additional_special_tokens); transformers adds them."""
    out: set[str] = set()
    for cfg in (tc, stm):
        if not isinstance(cfg, Mapping):
            continue
        for typ in ("bos", "eos", "unk", "sep", "pad", "cls", "mask"):
            text = _content(cfg.get(f"{typ}_token"))
            if text:
                out.add(text)
        for entry in cfg.get("additional_special_tokens") or cfg.get("extra_special_tokens") or []:
            text = _content(entry)
            if text:
                out.add(text)
    return out


def _added_type(content: str, special: bool) -> tuple[str, int]:
    if special or _looks_special(content):
        return content, CONTROL
    return content.replace(SPIECE, " "), USER_DEFINED  # llama.cpp matches user-defined text un-normalised


def _chat_template(src: _Files, tc: Any) -> Any:
    template = (tc or {}).get("chat_template")
    if template is None:
        jinja = src.text("chat_template.jinja")
        if jinja is not None:
            template = jinja
        else:
            ctj = src.json("chat_template.json")
            template = ctj.get("chat_template") if isinstance(ctj, Mapping) else None
    return template if isinstance(template, (str, list)) else None


def _chat_template_kv(template: Any) -> dict[str, Any]:
    if isinstance(template, str):
        return {CHAT_TEMPLATE: template}
    out: dict[str, Any] = {}
    names: list[str] = []
    for item in template or []:
        if not isinstance(item, Mapping) or not isinstance(item.get("template"), str):
            continue
        name = str(item.get("name") or "default")
        if name == "default":
            out[CHAT_TEMPLATE] = item["template"]
        else:
            out[f"{CHAT_TEMPLATE}.{name}"] = item["template"]
            names.append(name)
    if names:
        out["tokenizer.chat_templates"] = names
    return out


# ----------------------------------------------------------------------- SpecialVocab's logic
def _special_tokens(tj: Any, tc: Any, stm: Any, config: Mapping[str, Any] | None, tokens: list[str],
                    added: Mapping[int, Mapping[str, Any]], defaults: Mapping[str, int | None],
                    default_add: Mapping[str, bool]) -> tuple[dict[str, int], dict[str, bool]]:
    """Special-token ids and add-flags, derived as llama.cpp's gguf-py SpecialVocab derives them."""
    tc = dict(tc) if isinstance(tc, Mapping) else {}
    stm = stm if isinstance(stm, Mapping) else {}
    strings: dict[str, str | None] = {}
    for typ in ("bos", "eos", "unk", "sep", "pad", "cls", "mask"):
        strings[typ] = _content(tc.get(f"{typ}_token")) or _content(stm.get(f"{typ}_token"))
    if not strings["bos"] and strings["cls"]:
        strings["bos"] = strings["cls"]
    if not strings["eos"] and strings["sep"]:
        strings["eos"] = strings["sep"]

    add: dict[str, bool] = {}
    post = (tj or {}).get("post_processor") if isinstance(tj, Mapping) else None
    if isinstance(post, Mapping):
        for proc in post.get("processors") or [post]:
            kind = proc.get("type") if isinstance(proc, Mapping) else None
            if kind == "ByteLevel":
                add.setdefault("bos", False)
                add.setdefault("eos", False)
            elif kind in ("RobertaProcessing", "BertProcessing"):
                add.update(bos=True, eos=True, sep=True)
                cls, sep = proc.get("cls"), proc.get("sep")
                if not strings["bos"] and isinstance(cls, list) and cls:
                    strings["bos"] = str(cls[0])
                if not strings["sep"] and isinstance(sep, list) and sep:
                    strings["sep"] = str(sep[0])
                if not strings["eos"] and isinstance(sep, list) and sep:
                    strings["eos"] = str(sep[0])
            elif kind == "TemplateProcessing":
                single = [s for s in proc.get("single") or [] if isinstance(s, Mapping)]
                if len(single) > 1:
                    first = (single[0].get("SpecialToken") or {}).get("id")
                    if first:
                        if not strings["bos"]:
                            strings["bos"] = first
                        add["bos"] = first in (strings["bos"], strings["cls"])
                    last = (single[-1].get("SpecialToken") or {}).get("id")
                    if last:
                        if not strings["eos"]:
                            strings["eos"] = last
                        add["eos"] = last == strings["eos"]
                elif len(single) == 1:  # "$A" alone: nothing is added
                    add.setdefault("bos", False)
                    add.setdefault("eos", False)
    for typ in ("bos", "eos", "sep"):
        flag = tc.get(f"add_{typ}_token")
        if isinstance(flag, bool) and typ not in add:
            add[typ] = flag
    for typ, value in default_add.items():
        add.setdefault(typ, value)

    by_added = {}
    for idx in sorted(added):
        by_added.setdefault(added[idx]["content"], idx)
    by_token: dict[str, int] = {}
    for idx, tok in enumerate(tokens):
        by_token.setdefault(tok, idx)
    ids: dict[str, int] = {}
    n = len(tokens)
    for typ in ("bos", "eos", "unk", "sep", "pad", "mask"):
        text = strings.get(typ)
        if text is not None:
            idx = by_added.get(text, by_token.get(text))
            if idx is not None and 0 <= idx < n:
                ids[typ] = idx
                continue
        for cfg in (config or {}, (config or {}).get("text_config") or {}):
            value = cfg.get(f"{typ}_token_id") if isinstance(cfg, Mapping) else None
            if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < n:
                ids[typ] = value
                break
        else:
            default = defaults.get(typ)
            if default is not None and 0 <= default < n:
                ids[typ] = default
    for typ in ("bos", "eos"):
        if add.get(typ) and typ not in ids:
            add[typ] = False  # nothing to add: say so rather than let llama.cpp pick a default id
    return ids, add


# ----------------------------------------------------------------------- tokenizer.model
def _varint(buf: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i
        shift += 7


def _proto_fields(buf: bytes) -> Iterable[tuple[int, int, Any]]:
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 2:
            size, i = _varint(buf, i)
            value, i = buf[i:i + size], i + size
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"wire type {wire}")
        if i > len(buf):
            raise ValueError("truncated")
        yield field, wire, value


def _int32(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _read_sentencepiece(raw: bytes) -> dict[str, Any]:
    """The parts of a SentencePiece ModelProto llama.cpp uses (pieces; trainer and normalizer specs)."""
    pieces: list[tuple[str, float, int]] = []
    trainer: dict[str, Any] = {"model_type": 1, "byte_fallback": False,
                               "unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": -1}
    normalizer: dict[str, Any] = {"add_dummy_prefix": True}
    for field, wire, value in _proto_fields(raw):
        if field == 1 and wire == 2:
            piece, score, typ = "", 0.0, NORMAL
            for f, w, v in _proto_fields(value):
                if f == 1 and w == 2:
                    piece = v.decode("utf-8")
                elif f == 2 and w == 5:
                    score = struct.unpack("<f", v)[0]
                elif f == 3 and w == 0:
                    typ = v
            pieces.append((piece, score, typ))
        elif field == 2 and wire == 2:
            names = {3: "model_type", 35: "byte_fallback", 40: "unk_id", 41: "bos_id", 42: "eos_id", 43: "pad_id"}
            for f, w, v in _proto_fields(value):
                if f in names and w == 0:
                    trainer[names[f]] = bool(v) if f == 35 else _int32(v)
        elif field == 3 and wire == 2:
            for f, w, v in _proto_fields(value):
                if f == 3 and w == 0:
                    normalizer["add_dummy_prefix"] = bool(v)
    if not pieces:
        raise ValueError("no pieces")
    return {"pieces": pieces, "trainer": trainer, "normalizer": normalizer}


# ----------------------------------------------------------------------- vocabularies
def _f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", float(x)))[0]


def _pad(tokens: list[str], types: list[int], scores: list[float] | None, size: int | None, where: str) -> None:
    """Fill ids no file names, and pad to the model's vocab_size, with ``[PAD{id}]`` unused tokens."""
    if size is not None and len(tokens) > size:
        raise InputError(f"the tokenizer has {len(tokens)} tokens but config.json's vocab_size is {size}; "
                         f"llama.cpp needs every token id below vocab_size", path=where)
    for i, tok in enumerate(tokens):
        if tok is None:
            tokens[i], types[i] = f"[PAD{i}]", UNUSED
            if scores is not None:
                scores[i] = _HOLE_SCORE
    for i in range(len(tokens), size or 0):
        tokens.append(f"[PAD{i}]")
        types.append(UNUSED)
        if scores is not None:
            scores.append(_USER_SCORE)


def _check_unique(tokens: list[str], where: str) -> None:
    seen: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        if tok in seen:
            raise InputError(f"token {tok!r} appears at ids {seen[tok]} and {i}; llama.cpp needs distinct token "
                             f"strings", path=where)
        seen[tok] = i


def _merge_strings(merges: Any, where: str) -> list[str]:
    out: list[str] = []
    for m in merges or []:
        if isinstance(m, str):
            out.append(m)
        elif isinstance(m, (list, tuple)) and len(m) == 2:
            # tokenizers ≥ 0.20 pairs may hold spaces; llama.cpp splits on the first space, so
            # spell a space as its byte-level symbol like gguf-py does.
            out.append(" ".join("".join(chr(0x120) if c == " " else c for c in str(p)) for p in m))
        else:
            raise InputError(f"merge {m!r} is neither 'a b' nor ['a', 'b']", path=where)
    return out


def _bytelevel_vocab(src: _Files, tj: Any, tc: Any, stm: Any,
                     size: int | None) -> tuple[list[str], list[int], list[str], dict[int, Any]]:
    if tj is not None:
        model = tj.get("model") or {}
        vocab = model.get("vocab")
        where = src.path("tokenizer.json")
        if not isinstance(vocab, Mapping):
            raise InputError("model.vocab is not an object of token → id", path=where)
        merges = _merge_strings(model.get("merges"), where)
    else:
        vocab = src.json("vocab.json")
        where = src.path("vocab.json")
        if not isinstance(vocab, Mapping):
            raise InputError("is not an object of token → id", path=where)
        lines = (src.text("merges.txt") or "").splitlines()
        merges = []
        for n, line in enumerate(lines):
            parts = line.strip().split()
            if (n == 0 and line.startswith("#")) or not parts:
                continue
            if len(parts) != 2:
                raise InputError(f"line {n + 1} is not 'left right'", path=src.path("merges.txt"))
            merges.append(f"{parts[0]} {parts[1]}")
    added = _added_tokens(src, tj, tc)
    named = _named_specials(tc, stm)
    for tok, idx in vocab.items():
        if tok in named and isinstance(idx, int) and idx not in added:
            added[idx] = {"content": tok, "special": True}
    ids = [i for i in vocab.values() if isinstance(i, int)] + list(added)
    n = max(ids) + 1 if ids else 0
    tokens: list[Any] = [None] * n
    types = [NORMAL] * n
    for tok, idx in vocab.items():
        if isinstance(idx, int) and 0 <= idx < n:
            tokens[idx] = tok
    for idx, entry in added.items():
        if idx >= 0:
            tokens[idx], types[idx] = _added_type(entry["content"], entry["special"])
    _pad(tokens, types, None, size, where)
    return tokens, types, merges, added


def _merge_ranks_scores(tokens: list[str], types: list[int], merges: Any) -> list[float]:
    """SentencePiece-like scores for a byte-fallback BPE: a token made by the merge of rank r scores -r.

    llama.cpp's SPM tokenizer joins the neighbours whose joined text scores best, so the
    merge order of the BPE becomes the score order of the merged tokens.
    """
    merges = list(merges or [])
    rank: dict[str, int] = {}
    for r, m in enumerate(merges):
        if isinstance(m, str):
            cut = m.find(" ", 1)
            joined = m[:cut] + m[cut + 1:] if cut > 0 else m
        else:
            joined = "".join(str(p) for p in m)
        rank.setdefault(joined, r)
    out = []
    for i, tok in enumerate(tokens):
        if types[i] in (CONTROL, USER_DEFINED):
            out.append(_USER_SCORE)
        elif types[i] != NORMAL:
            out.append(0.0)
        else:
            out.append(-float(rank[tok]) if tok in rank else -float(len(merges) + i))
    return out


def _spm_prefix(tj: Any) -> bool:
    """Whether a SentencePiece-style tokenizer.json prepends ``▁`` (llama.cpp's add_space_prefix)."""
    norm = tj.get("normalizer")
    stack = [norm]
    while stack:
        n = stack.pop()
        if isinstance(n, Mapping):
            if n.get("type") == "Prepend" and n.get("prepend") == SPIECE:
                return True
            stack.extend(n.get("normalizers") or [])
    stack = [tj.get("pre_tokenizer")]
    while stack:
        p = stack.pop()
        if isinstance(p, Mapping):
            if p.get("type") == "Metaspace":
                scheme = p.get("prepend_scheme")
                return scheme in ("always", "first") if scheme is not None else bool(p.get("add_prefix_space", True))
            stack.extend(p.get("pretokenizers") or [])
    return False


def _unigram_normalizer(tj: Any) -> tuple[bool, bytes | None]:
    """(remove_extra_whitespaces, precompiled_charsmap) of a Unigram tokenizer.json's normalizer."""
    remove_extra, charsmap = False, None
    stack = [tj.get("normalizer")]
    while stack:
        n = stack.pop()
        if not isinstance(n, Mapping):
            continue
        stack.extend(n.get("normalizers") or [])
        if n.get("type") == "Precompiled" and n.get("precompiled_charsmap"):
            try:
                charsmap = base64.b64decode(n["precompiled_charsmap"])
            except (ValueError, TypeError):
                charsmap = None
        elif n.get("type") == "Replace" and (n.get("pattern") or {}).get("Regex") == " {2,}":
            remove_extra = True
    stack = [tj.get("pre_tokenizer")]
    while stack:  # T5's way: WhitespaceSplit drops runs of whitespace, then Metaspace
        p = stack.pop()
        if isinstance(p, Mapping):
            stack.extend(p.get("pretokenizers") or [])
            remove_extra = remove_extra or p.get("type") == "WhitespaceSplit"
    return remove_extra, charsmap


def _spm_vocab(src: _Files, tj: Any, tc: Any, stm: Any, size: int | None) -> dict[str, Any]:
    """Tokens, scores, types, default special ids and add_space_prefix of a SentencePiece-style tokenizer."""
    added = _added_tokens(src, tj, tc)
    defaults: dict[str, int | None] = {}
    if src.has("tokenizer.model"):
        where = src.path("tokenizer.model")
        try:
            spm = _read_sentencepiece(src.files["tokenizer.model"])
        except (ValueError, IndexError, UnicodeDecodeError, struct.error):
            raise InputError("is not a SentencePiece model", path=where) from None
        tokens: list[Any] = [p for p, _, _ in spm["pieces"]]
        scores = [float(s) for _, s, _ in spm["pieces"]]
        known = (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE)
        types = [t if t in known else NORMAL for _, _, t in spm["pieces"]]
        for i, typ in enumerate(types):
            if typ == USER_DEFINED:
                # transformers makes every user-defined piece an added token, as the pass below does for
                # those the other files list: the same text, type and score whether they list it or not
                (tokens[i], types[i]), scores[i] = _added_type(tokens[i], False), _USER_SCORE
        tr = spm["trainer"]
        defaults = {"unk": tr["unk_id"], "bos": tr["bos_id"], "eos": tr["eos_id"],
                    "pad": tr["pad_id"] if tr["pad_id"] >= 0 else None}
        prefix = bool(spm["normalizer"]["add_dummy_prefix"])
        if tj is not None:
            prefix = _spm_prefix(tj)  # what transformers does wins over what sentencepiece would do
    else:
        where = src.path("tokenizer.json")
        model = tj.get("model") or {}
        if model.get("type") == "Unigram":
            vocab = model.get("vocab") or []
            tokens = [str(v[0]) for v in vocab]
            scores = [float(v[1]) for v in vocab]
            unk_id = model.get("unk_id")
            types = [UNKNOWN if i == unk_id else BYTE if _BYTE_TOKEN.fullmatch(t) else NORMAL
                     for i, t in enumerate(tokens)]
            defaults["unk"] = unk_id if isinstance(unk_id, int) else None
        else:
            vocab = model.get("vocab")
            if not isinstance(vocab, Mapping):
                raise InputError("model.vocab is not an object of token → id", path=where)
            n = max(list(vocab.values()) + [-1]) + 1
            tokens = [None] * n
            for tok, idx in vocab.items():
                tokens[idx] = tok
            unk = (model.get("unk_token") or _content((tc or {}).get("unk_token"))
                   or _content((stm or {}).get("unk_token")))
            types = [UNKNOWN if t is not None and t == unk else BYTE if t is not None and _BYTE_TOKEN.fullmatch(t)
                     else NORMAL for t in tokens]
            if isinstance(unk, str) and unk in vocab:
                defaults["unk"] = vocab[unk]
            scores = None  # from merges, once added tokens are typed
        prefix = _spm_prefix(tj)
    for idx, entry in sorted(added.items()):
        if idx < 0:
            continue
        if idx >= len(tokens):
            tokens.extend([None] * (idx + 1 - len(tokens)))
            types.extend([UNUSED] * (idx + 1 - len(types)))
            if scores is not None:
                scores.extend([_HOLE_SCORE] * (idx + 1 - len(scores)))
        if tokens[idx] == entry["content"] and types[idx] in (UNKNOWN, CONTROL, BYTE):
            continue  # sentencepiece already says what it is
        tokens[idx], types[idx] = _added_type(entry["content"], entry["special"])
        if scores is not None:
            scores[idx] = _USER_SCORE
    if scores is None:
        filled = [t if t is not None else "" for t in tokens]
        scores = _merge_ranks_scores(filled, types, (tj.get("model") or {}).get("merges"))
    _pad(tokens, types, scores, size, where)
    scores = [_f32(x) for x in scores]  # exactly what the GGUF's float32 array will hold
    return {"tokens": tokens, "types": types, "scores": scores, "defaults": defaults, "prefix": prefix,
            "added": added, "where": where}


# =========================================================================== HF → GGUF
def hf_to_gguf(files: Mapping[str, bytes], config: Mapping[str, Any] | None, *, pre_tokenizer: str | None = None,
               path_for_errors: str = "") -> dict[str, object]:
    """GGUF ``tokenizer.*`` key/values for a Hugging Face tokenizer (see the module docstring).

    ``files`` maps file names (tokenizer.json, tokenizer_config.json, ...) to their bytes;
    ``config`` is config.json (its ``vocab_size`` pads the vocabulary, its ``*_token_id``
    are the last resort for special ids). ``pre_tokenizer`` overrides identification and
    must be one of :data:`KNOWN_PRE_TOKENIZERS`. Raises :class:`UsageError` when the
    pre-tokenizer is not one llama.cpp knows, :class:`InputError` for unreadable files.
    """
    src = _Files(files, str(path_for_errors or ""))
    if pre_tokenizer is not None:
        pre_tokenizer_info(pre_tokenizer)  # validates
    tj = src.json("tokenizer.json")
    tc = src.json("tokenizer_config.json")
    stm = src.json("special_tokens_map.json")
    if tj is not None and not isinstance(tj, Mapping):
        raise InputError("is not a tokenizers JSON object", path=src.path("tokenizer.json"))
    tc = tc if isinstance(tc, Mapping) else None
    stm = stm if isinstance(stm, Mapping) else None
    size = _config_vocab_size(config)

    if tj is not None:
        model_type = (tj.get("model") or {}).get("type")
        if model_type not in ("BPE", "Unigram"):
            raise UsageError(f"the tokenizer model is {model_type!r}; GGUF writing supports byte-level BPE and "
                             f"SentencePiece-style tokenizers", path=src.path("tokenizer.json"))
        kind = "t5" if model_type == "Unigram" else "llama" if is_sentencepiece_style(tj) else "gpt2"
    elif src.has("tokenizer.model"):
        kind = "llama"  # transformers runs a lone tokenizer.model as a BPE (LlamaTokenizer), so does llama.cpp
    elif src.has("vocab.json") and src.has("merges.txt"):
        kind = "gpt2"
    else:
        raise InputError("no tokenizer.json, tokenizer.model or vocab.json + merges.txt to build a GGUF "
                         "vocabulary from",
                         path=src.where or None)

    out: dict[str, object] = {}
    if kind == "gpt2":
        if pre_tokenizer is None:
            pre = identify_pre_tokenizer(tj) if tj is not None else "gpt-2"  # GPT2Tokenizer's own regex
            if pre is None:
                examples = ", ".join(n for n in EXAMPLE_NAMES if n != "default")
                raise UsageError(f"the pre-tokenizer ({describe_pre_tokenizer(tj)}) is not one llama.cpp knows; "
                                 f"pass --pre-tokenizer NAME with the llama.cpp name that splits text the same way "
                                 f"(e.g. {examples})", path=src.path("tokenizer.json"))
        else:
            pre = pre_tokenizer
        tokens, types, merges, added = _bytelevel_vocab(src, tj, tc, stm, size)
        where = src.path("tokenizer.json" if tj is not None else "vocab.json")
        _check_unique(tokens, where)
        out.update({MODEL: "gpt2", PRE: pre, TOKENS: tokens, TOKEN_TYPE: types, MERGES: merges})
        defaults: Mapping[str, int | None] = {}
        default_add = {"bos": False, "eos": False}
    else:
        spm = _spm_vocab(src, tj, tc, stm, size)
        tokens, types, added = spm["tokens"], spm["types"], spm["added"]
        _check_unique(tokens, spm["where"])
        out.update({MODEL: kind, PRE: pre_tokenizer or "default", TOKENS: tokens, TOKEN_TYPE: types,
                    SCORES: spm["scores"]})
        defaults = spm["defaults"]
        # transformers' LlamaTokenizer adds BOS when only tokenizer.model says how to tokenize
        default_add = {"bos": tj is None, "eos": False}
    ids, add = _special_tokens(tj, tc, stm, config, tokens, added, defaults, default_add)
    for typ in ("bos", "eos", "unk", "sep", "pad", "mask"):
        if typ in ids:
            out[ID_KEYS[typ]] = ids[typ]
    out[ADD_BOS] = bool(add.get("bos", False))
    out[ADD_EOS] = bool(add.get("eos", False))
    if add.get("sep"):
        out[ADD_SEP] = True
    if kind in ("llama", "t5"):
        out[ADD_PREFIX] = bool(spm["prefix"])
    if kind == "t5":
        remove_extra, charsmap = _unigram_normalizer(tj)
        out[REMOVE_EXTRA_WS] = remove_extra
        if charsmap:
            out[CHARSMAP] = charsmap
    out.update(_chat_template_kv(_chat_template(src, tc)))
    return out


# =========================================================================== GGUF → HF
def _as_str(v: Any) -> str:
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).decode("utf-8", errors="replace")
    return str(v)


def _as_list(v: Any) -> list[Any]:
    if v is None:
        return []
    if hasattr(v, "tolist"):
        v = v.tolist()
    return list(v)


def _opt_int(fields: Mapping[str, Any], key: str) -> int | None:
    v = fields.get(key)
    if v is None:
        return None
    if hasattr(v, "tolist"):
        v = v.tolist()
    if isinstance(v, list):
        v = v[0] if v else None
    return int(v) if v is not None else None


def _opt_bool(fields: Mapping[str, Any], key: str, default: bool) -> bool:
    v = fields.get(key)
    if v is None:
        return default
    if hasattr(v, "tolist"):
        v = v.tolist()
    if isinstance(v, list):
        v = v[0] if v else default
    return bool(v)


def _template(bos: str | None, bos_id: int | None, eos: str | None, eos_id: int | None) -> dict[str, Any]:
    """transformers' own TemplateProcessing for "add BOS/EOS"."""
    single: list[dict[str, Any]] = []
    pair: list[dict[str, Any]] = []
    special: dict[str, Any] = {}
    for seq, type_id, target in (("A", 0, single), ("B", 1, pair)):
        if bos is not None:
            target.append({"SpecialToken": {"id": bos, "type_id": type_id}})
        target.append({"Sequence": {"id": seq, "type_id": type_id}})
        if eos is not None:
            target.append({"SpecialToken": {"id": eos, "type_id": type_id}})
    for tok, idx in ((bos, bos_id), (eos, eos_id)):
        if tok is not None:
            special[tok] = {"id": tok, "ids": [idx], "tokens": [tok]}
    return {"type": "TemplateProcessing", "single": single, "pair": single + pair, "special_tokens": special}


def _spm_merges(tokens: list[str], types: list[int], scores: list[float]) -> list[list[str]]:
    """Merges that make HF's BPE do what llama.cpp's SentencePiece tokenizer does: join the
    neighbouring pair whose joined text is the best-scoring token, every split of every token."""
    ids: dict[str, int] = {}
    for i, t in enumerate(tokens):
        if types[i] == NORMAL:
            ids.setdefault(t, i)
    found: list[tuple[float, int, int, int, str, str]] = []
    for tok, i in ids.items():
        for cut in range(1, len(tok)):
            left, right = tok[:cut], tok[cut:]
            if left in ids and right in ids:
                found.append((-scores[i], i, ids[left], ids[right], left, right))
    found.sort()
    return [[left, right] for *_, left, right in found]


def _sentencepiece_model(tokens: list[str], types: list[int], scores: list[float], special_ids: Mapping[str, int], *,
                         unigram: bool, prefix: bool, remove_extra: bool = False, charsmap: bytes = b"") -> bytes | None:
    """A tokenizer.model with the GGUF's pieces, scores and types, or None when sentencepiece would refuse it.

    A BPE model for ``"llama"`` (llama.cpp's SPM tokenizer joins the best-scoring neighbours, as
    sentencepiece's BPE does), a Unigram for ``"t5"``. User-defined tokens get their ``▁`` back:
    llama.cpp matches them in the raw text (" x"), sentencepiece in the normalised one ("▁x").
    """
    known = (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE)
    pieces: list[tuple[str, float, int]] = []
    for tok, typ, score in zip(tokens, types, scores):
        typ = typ if typ in known else NORMAL
        pieces.append((tok.replace(" ", SPIECE) if typ == USER_DEFINED else tok, score, typ))
    byte_fallback = any(typ == BYTE for _, _, typ in pieces)
    if spm_proto.problem(pieces, byte_fallback=byte_fallback) is not None:
        return None  # e.g. no UNKNOWN token: the tokenizer.json alone describes the tokenizer
    unk = special_ids.get("unk")
    if unk is None:
        unk = next(i for i, (_, _, typ) in enumerate(pieces) if typ == UNKNOWN)
    return spm_proto.model_proto(
        pieces, model_type=spm_proto.UNIGRAM if unigram else spm_proto.BPE, byte_fallback=byte_fallback,
        unk_id=unk, bos_id=special_ids.get("bos", -1), eos_id=special_ids.get("eos", -1),
        pad_id=special_ids.get("pad", -1), add_dummy_prefix=prefix, remove_extra_whitespaces=remove_extra,
        precompiled_charsmap=charsmap)


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def gguf_to_hf(fields: Mapping[str, object]) -> dict[str, bytes]:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json from GGUF ``tokenizer.*`` fields,
    and tokenizer.model for a SentencePiece vocabulary.

    The tokenizer.json splits and merges as llama.cpp does for the same fields: byte-level BPE
    with the pre-tokenizer named by ``tokenizer.ggml.pre`` (``"gpt2"``), a byte-fallback BPE
    whose merges follow the SentencePiece scores (``"llama"``), or a Unigram with the same
    scores, charsmap and whitespace handling (``"t5"``). For ``"llama"`` and ``"t5"`` the
    tokenizer.model (a sentencepiece BPE, resp. Unigram, model) holds every token, float32 score
    and type at its id, the special ids, byte fallback, ``add_dummy_prefix`` from
    ``add_space_prefix`` and (``"t5"``) the charsmap and ``remove_extra_whitespaces``; reading these
    files back (:func:`hf_to_gguf`) gives the same fields. It is left out when sentencepiece could
    not load it (no UNKNOWN token, a repeated token, …). tokenizer_config.json names
    ``PreTrainedTokenizerFast``: transformers loads the tokenizer.json as it is, and converts the
    tokenizer.model to the same tokenization when there is no tokenizer.json. Raises
    :class:`UsageError` for a tokenizer model or pre-tokenizer that has no tokenizer.json equivalent.
    """
    model = _as_str(fields.get(MODEL, ""))
    tokens = [_as_str(t) for t in _as_list(fields.get(TOKENS))]
    if not tokens:
        raise UsageError("the GGUF has no tokenizer.ggml.tokens to rebuild a tokenizer from")
    types = [int(t) for t in _as_list(fields.get(TOKEN_TYPE))] or [NORMAL] * len(tokens)
    types += [NORMAL] * (len(tokens) - len(types))
    special_ids = {typ: _opt_int(fields, key) for typ, key in ID_KEYS.items()}
    special_ids = {typ: i for typ, i in special_ids.items() if i is not None and 0 <= i < len(tokens)}
    names = {typ: tokens[i] for typ, i in special_ids.items()}
    # llama.cpp's defaults when the flags are absent: SPM adds BOS, UGM adds EOS
    add_bos = _opt_bool(fields, ADD_BOS, model == "llama") and "bos" in names
    add_eos = _opt_bool(fields, ADD_EOS, model == "t5") and "eos" in names

    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    added = []
    for i, t in enumerate(tokens):
        if types[i] in (CONTROL, USER_DEFINED) or (types[i] == UNKNOWN and model in ("llama", "t5")):
            added.append({"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": types[i] != USER_DEFINED})
    post = _template(names.get("bos") if add_bos else None, special_ids.get("bos"),
                     names.get("eos") if add_eos else None, special_ids.get("eos"))
    spm_model: bytes | None = None

    if model == "gpt2":
        pre = _as_str(fields.get(PRE) or "default")
        if pre not in KNOWN_PRE_TOKENIZERS:
            raise UsageError(f"the GGUF's pre-tokenizer {pre!r} is not one this lmconv knows; cannot rebuild its "
                             f"tokenizer.json")
        info = pre_tokenizer_info(pre)
        merges = []
        for m in _as_list(fields.get(MERGES)):
            m = _as_str(m)
            cut = m.find(" ", 1)
            if cut < 0:
                raise UsageError(f"the GGUF's merge {m!r} is not 'left right'")
            merges.append([m[:cut], m[cut + 1:]])
        normalizer = {"type": "NFC"} if info.family in ("qwen2", "qwen35") else None  # as Qwen2's own tokenizer
        if not (add_bos or add_eos):
            post = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
        tj = {
            "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
            "normalizer": normalizer, "pre_tokenizer": hf_pre_tokenizer(pre), "post_processor": post,
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": info.ignore_merges, "vocab": vocab, "merges": merges},
        }
    elif model == "llama":
        scores = [float(s) for s in _as_list(fields.get(SCORES))]
        scores += [0.0] * (len(tokens) - len(scores))
        prefix = _opt_bool(fields, ADD_PREFIX, True)
        replace = {"type": "Replace", "pattern": {"String": " "}, "content": SPIECE}
        prepend = {"type": "Prepend", "prepend": SPIECE}
        normalizer = {"type": "Sequence", "normalizers": [prepend, replace]} if prefix else replace
        decoders: list[dict[str, Any]] = [
            {"type": "Replace", "pattern": {"String": SPIECE}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
        ]
        if prefix:
            decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
        tj = {
            "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
            "normalizer": normalizer, "pre_tokenizer": None, "post_processor": post,
            "decoder": {"type": "Sequence", "decoders": decoders},
            "model": {"type": "BPE", "dropout": None, "unk_token": names.get("unk"), "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": BYTE in types,
                      "ignore_merges": False, "vocab": vocab, "merges": _spm_merges(tokens, types, scores)},
        }
        spm_model = _sentencepiece_model(tokens, types, scores, special_ids, unigram=False, prefix=prefix)
    elif model == "t5":
        scores = [float(s) for s in _as_list(fields.get(SCORES))]
        scores += [0.0] * (len(tokens) - len(scores))
        prefix = _opt_bool(fields, ADD_PREFIX, False)
        norms: list[dict[str, Any]] = []
        charsmap = fields.get(CHARSMAP)
        raw = b""
        if charsmap is not None and len(_as_list(charsmap)) > 0:
            if isinstance(charsmap, (bytes, bytearray)):
                raw = bytes(charsmap)
            else:
                raw = bytes(int(b) & 0xFF for b in _as_list(charsmap))
            norms.append({"type": "Precompiled", "precompiled_charsmap": base64.b64encode(raw).decode("ascii")})
        pre_tok = None
        remove_extra = _opt_bool(fields, REMOVE_EXTRA_WS, False)
        if remove_extra:  # as transformers' T5 converter spells it
            pre_tok = {"type": "Sequence", "pretokenizers": [
                {"type": "WhitespaceSplit"},
                {"type": "Metaspace", "replacement": SPIECE, "prepend_scheme": "always" if prefix else "never",
                 "split": True}]}
        else:
            if prefix:
                norms.append({"type": "Prepend", "prepend": SPIECE})
            norms.append({"type": "Replace", "pattern": {"String": " "}, "content": SPIECE})
        decoders = [{"type": "Replace", "pattern": {"String": SPIECE}, "content": " "}, {"type": "Fuse"}]
        if prefix:
            decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
        tj = {
            "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
            "normalizer": {"type": "Sequence", "normalizers": norms} if norms else None, "pre_tokenizer": pre_tok,
            "post_processor": post,
            "decoder": {"type": "Sequence", "decoders": decoders},
            "model": {"type": "Unigram", "unk_id": special_ids.get("unk"),
                      "vocab": [[t, scores[i]] for i, t in enumerate(tokens)], "byte_fallback": False},
        }
        spm_model = _sentencepiece_model(tokens, types, scores, special_ids, unigram=True, prefix=prefix,
                                         remove_extra=remove_extra, charsmap=raw)
    else:
        raise UsageError(f"the GGUF's tokenizer model {model!r} cannot be rebuilt as a Hugging Face tokenizer "
                         f"(lmconv rebuilds 'gpt2', 'llama' and 't5')")

    config: dict[str, Any] = {"add_bos_token": add_bos, "add_eos_token": add_eos}
    stm: dict[str, str] = {}
    for typ in ("bos", "eos", "unk", "sep", "pad", "mask"):
        if typ in names:
            config[f"{typ}_token"] = names[typ]
            stm[f"{typ}_token"] = names[typ]
    config["clean_up_tokenization_spaces"] = False
    config["model_max_length"] = 1 << 30
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    template = fields.get(CHAT_TEMPLATE)
    named = sorted(k for k in fields if k.startswith(CHAT_TEMPLATE + "."))
    if named:
        default = [{"name": "default", "template": _as_str(template)}] if template is not None else []
        config["chat_template"] = default + [
            {"name": k[len(CHAT_TEMPLATE) + 1:], "template": _as_str(fields[k])} for k in named]
    elif template is not None:
        config["chat_template"] = _as_str(template)
    out = {"tokenizer.json": _json_bytes(tj), "tokenizer_config.json": _json_bytes(config),
           "special_tokens_map.json": _json_bytes(stm)}
    if spm_model is not None:
        out["tokenizer.model"] = spm_model
    return out

