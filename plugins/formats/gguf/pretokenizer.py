"""Which llama.cpp pre-tokenizer a Hugging Face tokenizer needs, read from its own definition.

llama.cpp does not run a tokenizer.json: a byte-level BPE vocabulary in GGUF carries
``tokenizer.ggml.pre``, a name that llama.cpp maps to a fixed list of split regexes
(``llm_tokenizer_bpe`` in ``src/llama-vocab.cpp``). llama.cpp's own converter picks the
name by hashing the ids of a probe text. Here we read the tokenizer's definition instead:
``tokenizer.json``'s ``pre_tokenizer`` (Split regexes, ByteLevel with or without its GPT-2
regex, Digits, Punctuation, nested Sequences) becomes a list of split steps, which is
compared, after normalising spelling differences that change nothing, with the regex list
llama.cpp uses for each name.

Two regex lists are the same split when, step by step, they match the same spans:

* ``(?i:'s|'t)`` is ``(?:'[sS]|'[tT])`` (llama.cpp's engine has no inline flags);
* possessive ``?+``/``++`` are plain ``?``/``+`` (llama.cpp dropped them for the same reason);
* a trailing ``|\\s+`` after ``\\s+(?!\\S)`` only names the leftover whitespace, which a
  split keeps as its own piece anyway (GPT-2's regex in llama.cpp lacks it);
* a CR, LF or TAB written raw or as ``\\r``, ``\\n``, ``\\t``.

Where llama.cpp rewrote a regex more deeply (``\\p{Lu}`` classes it cannot express), the
tokenizer.json original is listed beside it. SentencePiece-style tokenizers (Metaspace,
byte-fallback BPE, Unigram) have no regex: llama.cpp runs them as tokenizer model "llama"
with pre-tokenizer "default".

Public: :data:`KNOWN_PRE_TOKENIZERS`, :func:`identify_pre_tokenizer`, :func:`pre_tokenizer_info`,
:func:`hf_pre_tokenizer`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from lmconv.errors import UsageError

# --------------------------------------------------------------------------- llama.cpp's regexes
# Split regexes llama.cpp applies, in order, for each family of pre-tokenizer names (facts
# read from llm_tokenizer_bpe's constructor; CR/LF/TAB written as escapes).
_REGEXES: dict[str, tuple[str, ...]] = {
    'llama3': (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",),
    'jais2': (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)|\s{16}(?!\S)|\s{8}(?!\S)|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1}",),
    'deepseek_llm': (r"[\r\n]", '\\s?[A-Za-z\xb5\xc0-\xd6\xd8-\xf6\xf8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+', '\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+', r"\s+$", '[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+', r"\p{N}+"),
    'deepseek3': (r"\p{N}{1,3}", '[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+', r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""),
    'spark2_5': (r"\p{N}{1,3}", '[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+', r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+|[\r\n]|\s+(?!\S)|\s+""", r"\p{N}"),
    'youtu': ('[\uac00-\ud7a3\u3131-\u318e]+|[\uff01\u2026\u201c\u201d\u2018\u2019\u2014\uff1a\uff1b\uff0c\u3001-\u303f\ufe30-\ufe4f]+|[\u3105-\u312f]+|[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+', r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
    'deepseek_coder': (r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", '[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+', r"\p{N}"),
    'falcon': (r"[\p{P}\$\+<=>\^~\|`]+", r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)", r"[0-9][0-9][0-9]"),
    'digits_gpt2': (r"\p{N}", r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"),
    'gpt2': (r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",),
    'qwen2': (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",),
    'qwen35': (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",),
    'bloom': (' ?[^(\\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+',),
    'viking': (' ?[^(\\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+', r"\p{N}"),
    'tekken': (r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",),
    'chameleon': (r"<sentinel:[0-9]+>", r"(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z", r"([\t\n]|    |  )", r"\p{N}", r"[\p{P}!-/:-@\[-`{-~]", r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"),
    'gpt4o': (r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",),
    'granite_emb_multi': (r"[^\r\n\p{L}\p{N}]?((?=[\p{L}\p{M}])([^a-z]))*((?=[\p{L}\p{M}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}\p{M}])([^a-z]))+((?=[\p{L}\p{M}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",),
    'tiny_aya': (r"\d{1,3}(?=(?:\d{3})*\b)", r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
    'kimi_k2': (r"\p{Han}+",),
    'superbpe': (r"\p{N}+", r"(?=(\d{3})+(?!\d))"),
    'bailingmoe': (r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+",),
    'seed_coder': (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+",),
    'ufakzeka': (r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",),
    'afmoe': (r"\p{AFMoE_digits}", '[\u4e00-\u9fff\u3400-\u4dbf\u8c48-\ufaff\u3040-\u309f\u30a0-\u30ff\uff65-\uff9f\u2f00-\u2fdf\u0e40-\u0e7f\u0e80-\u0eff\u1780-\u17ff\u1000-\u109f\uaa60-\uaa7f\ua9e0-\ua9ff\uac00-\ud7af\u1100-\u11ff]+', r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""),
    'laguna': (r"[^\n]+|[\n]+", r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
    'exaone_moe': (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+",),
    'newlines': (r"[^\n]+|[\n]+",),
    'minicpm5': (r"\p{N}{1,3}", r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
    'whitespace': (r"\S+",),
    'default': (r"[\p{P}\$\+<=>\^~\|]+", r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)", r"\p{N}+", r"[0-9][0-9][0-9]"),
}

# The same families as tokenizer.json spells them, where llama.cpp had to rewrite the regex
# beyond what canonical_regex() undoes (its engine lacks \p{Lu}/\p{Ll}/... classes).
_HF_REGEXES: dict[str, tuple[str, ...]] = {
    "tekken": (
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
        r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
        r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    "gpt4o": (
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
        r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
        r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
}

# Families whose split llama.cpp does in C++ code keyed on a pseudo-regex that no
# tokenizer.json contains and no regex engine accepts: named, never identified or rebuilt.
_NOT_A_REGEX = frozenset({"afmoe", "kimi_k2"})
# Families that split raw UTF-8 (SentencePiece-style BPE or words), not GPT-2 byte symbols.
_NOT_BYTE_LEVEL = frozenset({"newlines", "whitespace"})

# What tokenizers' Punctuation pre-tokenizer splits on (ASCII punctuation and \p{P}), as
# llama.cpp writes it: one character at a time (Isolated) or in runs (Contiguous).
PUNCT_ONE = r"[\p{P}!-/:-@\[-`{-~]"
PUNCT_RUN = r"[\p{P}\$\+<=>\^~\|`]+"
GPT2_REGEX = _REGEXES["gpt2"][0]
# ByteLevel(use_regex=True) splits with GPT-2's regex as tokenizers spells it.
_HF_BYTELEVEL_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


# --------------------------------------------------------------------------- llama.cpp's names
@dataclass(frozen=True)
class PreTokenizerInfo:
    """One ``tokenizer.ggml.pre`` name and what llama.cpp does for it."""

    name: str
    family: str
    ignore_merges: bool = False  # a whole pre-token found in the vocab is taken without merging
    clean_spaces: bool = True  # llama_detokenize() removes " ." etc.

    @property
    def regexes(self) -> tuple[str, ...]:
        """The regexes llama.cpp splits with, in order."""
        return _REGEXES[self.family]

    @property
    def byte_level(self) -> bool:
        return self.family not in _NOT_BYTE_LEVEL

    @property
    def expressible(self) -> bool:
        """Whether tokenizers (Hugging Face) can run the same split."""
        return self.family not in _NOT_A_REGEX


def _names(family: str, *names: str, ignore_merges: bool = False, clean_spaces: bool = True) -> list[PreTokenizerInfo]:
    return [PreTokenizerInfo(n, family, ignore_merges, clean_spaces) for n in names]


# Every name llama.cpp's llama_vocab::impl::load accepts, grouped by the split it selects.
# Within a family the first name is the one identification prefers.
_INFOS: list[PreTokenizerInfo] = [
    *_names("gpt2", "gpt-2", "mpt", "olmo", "jais", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es",
            "jina-v2-de", "a.x-4.0", "mellum", "modern-bert", "exaone4", "jina-v1-en", "jina-v2-code", "roberta-bpe"),
    *_names("gpt2", "trillion", "granite-docling", clean_spaces=False),
    *_names("llama3", "llama-bpe", "llama3", "llama-v3", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
            "jina-v5-nano", ignore_merges=True),
    *_names("llama3", "smaug-bpe", "dbrx", "chatglm-bpe"),
    *_names("llama3", "glm4", "glm5", ignore_merges=True),
    *_names("qwen2", "qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "hunyuan", "solar-open", "grok-2", clean_spaces=False),
    *_names("qwen2", "stablelm2", "megrez"),
    *_names("qwen35", "qwen35", clean_spaces=False),
    *_names("digits_gpt2", "starcoder", "refact", "codeshell", "exaone", "minerva-7b", "mellum2"),
    *_names("digits_gpt2", "command-r", "smollm", clean_spaces=False),
    *_names("jais2", "jais-2"),
    *_names("deepseek_llm", "deepseek-llm", clean_spaces=False),
    *_names("deepseek_coder", "deepseek-coder", clean_spaces=False),
    *_names("deepseek3", "deepseek-v3", "hunyuan-dense", "joyai-llm", "hy_v4", clean_spaces=False),
    *_names("spark2_5", "spark2_5", clean_spaces=False),
    *_names("youtu", "youtu", ignore_merges=True, clean_spaces=False),
    *_names("falcon", "falcon"),
    *_names("bloom", "bloom", "gpt3-finnish"),
    *_names("bloom", "poro-chat", clean_spaces=False),
    *_names("viking", "viking", clean_spaces=False),
    *_names("tekken", "tekken", ignore_merges=True, clean_spaces=False),
    *_names("chameleon", "chameleon", clean_spaces=False),
    *_names("gpt4o", "gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2", clean_spaces=False),
    *_names("granite_emb_multi", "granite-embed-multi-97m", ignore_merges=True, clean_spaces=False),
    *_names("tiny_aya", "tiny_aya", "cohere2moe", clean_spaces=False),
    *_names("kimi_k2", "kimi-k2", clean_spaces=False),
    *_names("superbpe", "superbpe", clean_spaces=False),
    *_names("bailingmoe", "bailingmoe", "bailingmoe2", "llada-moe", clean_spaces=False),
    *_names("seed_coder", "seed-coder", clean_spaces=False),
    *_names("ufakzeka", "ufakzeka", clean_spaces=False),
    *_names("afmoe", "afmoe", clean_spaces=False),
    *_names("laguna", "laguna", clean_spaces=False),
    *_names("exaone_moe", "exaone-moe"),
    *_names("minicpm5", "minicpm5", ignore_merges=True),
    *_names("newlines", "gemma4", "granite-embed-multi-311m"),
    *_names("newlines", "sarvam-moe", clean_spaces=False),
    *_names("whitespace", "whitespace"),
    *_names("default", "default"),
]
_BY_NAME: dict[str, PreTokenizerInfo] = {i.name: i for i in _INFOS}

KNOWN_PRE_TOKENIZERS: tuple[str, ...] = tuple(i.name for i in _INFOS)
"""Every ``tokenizer.ggml.pre`` value this llama.cpp accepts (a byte-level BPE needs one)."""

# Named in messages as examples of valid values.
EXAMPLE_NAMES = ("gpt-2", "llama-bpe", "qwen2", "starcoder", "deepseek-llm", "gpt-4o", "default")


def pre_tokenizer_info(name: str) -> PreTokenizerInfo:
    """What llama.cpp does for ``name``; :class:`UsageError` if llama.cpp does not know it."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise UsageError(f"--pre-tokenizer {name!r} is not a pre-tokenizer llama.cpp knows "
                         f"(e.g. {', '.join(EXAMPLE_NAMES)})") from None


# --------------------------------------------------------------------------- regex spelling
def _scan_escape(rx: str, i: int) -> int:
    """Index just past the escape starting at ``rx[i] == '\\\\'`` (``\\p{..}`` whole)."""
    if i + 1 < len(rx) and rx[i + 1] in "pP" and i + 2 < len(rx) and rx[i + 2] == "{":
        end = rx.find("}", i + 3)
        return len(rx) if end < 0 else end + 1
    return min(i + 2, len(rx))


def _scan_class(rx: str, i: int) -> int:
    """Index just past the character class starting at ``rx[i] == '['``."""
    j = i + 1
    if j < len(rx) and rx[j] == "^":
        j += 1
    if j < len(rx) and rx[j] == "]":
        j += 1
    while j < len(rx):
        c = rx[j]
        if c == "\\":
            j = _scan_escape(rx, j)
            continue
        if c == "[":  # nested class (Oniguruma)
            j = _scan_class(rx, j)
            continue
        if c == "]":
            return j + 1
        j += 1
    return j


def _scan_group(rx: str, i: int) -> int:
    """Index of the ``)`` closing the group opened at ``rx[i] == '('``."""
    depth, j = 0, i
    while j < len(rx):
        c = rx[j]
        if c == "\\":
            j = _scan_escape(rx, j)
            continue
        if c == "[":
            j = _scan_class(rx, j)
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return j
        j += 1
    return len(rx)


def _swap(c: str) -> str:
    return c.swapcase() if c.isascii() and c.isalpha() else ""


def _case_expand_class(cls: str) -> str:
    """``[sdmt]`` → ``[sSdDmMtT]``, ``[a-z]`` → ``[a-zA-Z]`` (a class under ``(?i:)``)."""
    out, j = [], 1
    if cls.startswith("[^"):
        out.append("[^")
        j = 2
    else:
        out.append("[")
    body_end = len(cls) - 1
    while j < body_end:
        c = cls[j]
        if c == "\\":
            k = _scan_escape(cls, j)
            out.append(cls[j:k])
            j = k
            continue
        if j + 2 < body_end and cls[j + 1] == "-" and _swap(c) and _swap(cls[j + 2]):
            out.append(cls[j:j + 3] + _swap(c) + "-" + _swap(cls[j + 2]))
            j += 3
            continue
        out.append(c + _swap(c))
        j += 1
    out.append("]")
    return "".join(out)


def _case_expand(body: str) -> str:
    out, j = [], 0
    while j < len(body):
        c = body[j]
        if c == "\\":
            k = _scan_escape(body, j)
            out.append(body[j:k])
            j = k
        elif c == "[":
            k = _scan_class(body, j)
            out.append(_case_expand_class(body[j:k]))
            j = k
        elif c == "(" and body.startswith("(?", j):  # keep group syntax such as (?: (?= (?!
            k = j + 2
            while k < len(body) and body[k] not in ":=!)":
                k += 1
            out.append(body[j:k + 1])
            j = k + 1
        elif _swap(c):
            out.append(f"[{c}{_swap(c)}]")
            j += 1
        else:
            out.append(c)
            j += 1
    return "".join(out)


def _expand_inline_ignorecase(rx: str) -> str:
    out, j = [], 0
    while j < len(rx):
        c = rx[j]
        if c == "\\":
            k = _scan_escape(rx, j)
            out.append(rx[j:k])
            j = k
        elif c == "[":
            k = _scan_class(rx, j)
            out.append(rx[j:k])
            j = k
        elif rx.startswith("(?i:", j):
            end = _scan_group(rx, j)
            out.append("(?:" + _case_expand(_expand_inline_ignorecase(rx[j + 4:end])) + ")")
            j = end + 1
        else:
            out.append(c)
            j += 1
    return "".join(out)


def _drop_possessive(rx: str) -> str:
    out, j, after_quantifier = [], 0, False
    while j < len(rx):
        c = rx[j]
        if c == "\\":
            k = _scan_escape(rx, j)
            out.append(rx[j:k])
            j, after_quantifier = k, False
            continue
        if c == "[":
            k = _scan_class(rx, j)
            out.append(rx[j:k])
            j, after_quantifier = k, False
            continue
        if c == "+" and after_quantifier:
            j, after_quantifier = j + 1, False
            continue
        if c == "(" and rx.startswith("(?", j):
            out.append("(?")
            j, after_quantifier = j + 2, False
            continue
        out.append(c)
        after_quantifier = c in "?*+}"
        j += 1
    return "".join(out)


def canonical_regex(rx: str) -> str:
    """``rx`` spelled the one way used for comparison (see the module docstring)."""
    rx = rx.replace("\r", r"\r").replace("\n", r"\n").replace("\t", r"\t")
    rx = _drop_possessive(_expand_inline_ignorecase(rx))
    if rx.endswith(r"\s+(?!\S)|\s+"):
        rx = rx[: -len(r"|\s+")]
    return rx


_CANONICAL: dict[str, tuple[tuple[str, ...], ...]] = {}
for _family, _rxs in _REGEXES.items():
    _forms = [tuple(canonical_regex(r) for r in _rxs)]
    if _family in _HF_REGEXES:
        _forms.append(tuple(canonical_regex(r) for r in _HF_REGEXES[_family]))
    _CANONICAL[_family] = tuple(_forms)


# --------------------------------------------------------------------------- tokenizer.json
@dataclass
class _Shape:
    steps: list[str]
    byte_level: bool = False
    metaspace: bool = False
    unsupported: str | None = None  # why the split cannot be named


def _walk(pt: Any, shape: _Shape) -> None:
    if pt is None or shape.unsupported:
        return
    if not isinstance(pt, dict):
        shape.unsupported = "pre_tokenizer is not an object"
        return
    kind = pt.get("type")
    if kind == "Sequence":
        for sub in pt.get("pretokenizers") or []:
            _walk(sub, shape)
    elif kind == "Split":
        pattern = pt.get("pattern") or {}
        behavior = str(pt.get("behavior", "Isolated")).lower()
        if pt.get("invert") or behavior != "isolated":
            shape.unsupported = f"Split with behavior {pt.get('behavior')!r}, invert {pt.get('invert')!r}"
        elif "Regex" in pattern:
            shape.steps.append(canonical_regex(str(pattern["Regex"])))
        elif "String" in pattern:
            shape.steps.append(canonical_regex(re.escape(str(pattern["String"]))))
        else:
            shape.unsupported = "Split without a pattern"
    elif kind == "ByteLevel":
        if pt.get("add_prefix_space"):
            shape.unsupported = "ByteLevel with add_prefix_space (llama.cpp adds no space to BPE text)"
        shape.byte_level = True
        if pt.get("use_regex", True):
            shape.steps.append(canonical_regex(_HF_BYTELEVEL_REGEX))
    elif kind == "Digits":
        shape.steps.append(r"\p{N}" if pt.get("individual_digits") else r"\p{N}+")
    elif kind == "Punctuation":
        behavior = str(pt.get("behavior", "Isolated")).lower()
        if behavior == "isolated":
            shape.steps.append(PUNCT_ONE)
        elif behavior == "contiguous":
            shape.steps.append(PUNCT_RUN)
        else:
            shape.unsupported = f"Punctuation with behavior {pt.get('behavior')!r}"
    elif kind == "Metaspace":
        shape.metaspace = True
    else:
        shape.unsupported = f"pre-tokenizer {kind!r}"


def _normalizers(norm: Any) -> list[dict[str, Any]]:
    if not isinstance(norm, dict):
        return []
    if norm.get("type") == "Sequence":
        return [n for sub in norm.get("normalizers") or [] for n in _normalizers(sub)]
    return [norm]


def is_sentencepiece_style(tokenizer_json: dict[str, Any]) -> bool:
    """A SentencePiece-style tokenizer (spaces as ``▁``; byte fallback or Unigram): llama.cpp's "llama"."""
    model = tokenizer_json.get("model") or {}
    shape = _Shape([])
    _walk(tokenizer_json.get("pre_tokenizer"), shape)
    if shape.byte_level:
        return False
    if model.get("type") == "Unigram" or (model.get("type") == "BPE" and model.get("byte_fallback")):
        return True
    if shape.metaspace:
        return True
    return any(n.get("type") == "Replace" and (n.get("content") == "\u2581") for n in _normalizers(tokenizer_json.get("normalizer")))


def describe_pre_tokenizer(tokenizer_json: dict[str, Any]) -> str:
    """A short human description of what could not be identified (for error messages)."""
    shape = _Shape([])
    _walk(tokenizer_json.get("pre_tokenizer"), shape)
    if shape.unsupported:
        return shape.unsupported
    if not shape.byte_level:
        return "a BPE without byte-level symbols"
    return f"split regexes {shape.steps!r}"[:200]


def identify_pre_tokenizer(tokenizer_json: dict[str, Any]) -> str | None:
    """llama.cpp's ``tokenizer.ggml.pre`` name for a parsed ``tokenizer.json``, or None.

    SentencePiece-style tokenizers give ``"default"``. A byte-level BPE gives the name whose
    regex list equals the tokenizer's split steps; among names sharing that list, the first
    whose ``ignore_merges`` equals the BPE model's. None when no name splits the same way.
    """
    if not isinstance(tokenizer_json, dict):
        return None
    if is_sentencepiece_style(tokenizer_json):
        return "default"
    model = tokenizer_json.get("model") or {}
    if model.get("type") != "BPE":
        return None
    shape = _Shape([])
    _walk(tokenizer_json.get("pre_tokenizer"), shape)
    if shape.unsupported or not shape.byte_level:
        return None
    steps = tuple(shape.steps)
    families = {f for f, forms in _CANONICAL.items() if f not in _NOT_BYTE_LEVEL and steps in forms}
    if not families:
        return None
    ignore_merges = bool(model.get("ignore_merges", False))
    candidates = [i for i in _INFOS if i.family in families]
    best = min(candidates, key=lambda i: (i.ignore_merges != ignore_merges, _INFOS.index(i)))
    return best.name


def hf_pre_tokenizer(name: str) -> dict[str, Any]:
    """tokenizer.json's ``pre_tokenizer`` that splits like llama.cpp does for byte-level BPE ``name``."""
    info = pre_tokenizer_info(name)
    if not info.expressible or not info.byte_level:
        raise UsageError(f"pre-tokenizer {name!r}: llama.cpp splits it in code that a tokenizer.json cannot express")
    if info.family == "gpt2":
        return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    regexes = _HF_REGEXES.get(info.family, info.regexes)
    steps: list[dict[str, Any]] = [
        {"type": "Split", "pattern": {"Regex": rx}, "behavior": "Isolated", "invert": False} for rx in regexes
    ]
    steps.append({"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False})
    return {"type": "Sequence", "pretokenizers": steps}
