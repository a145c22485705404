"""HF tokenizer files ⇄ GGUF tokenizer fields, checked against llama.cpp and transformers.

Every tokenizer here is trained in the test from fixed texts (nothing from a model hub):
GPT-2-style byte-level BPE, Llama-3-style (Split regex + ByteLevel, ignore_merges), Qwen2-style
(NFC + Split regex + ByteLevel), a SentencePiece BPE (sentencepiece, converted by transformers'
LlamaTokenizer) and a Unigram. For each, llama.cpp (llama-cpp-python, vocab only) must give
exactly transformers' ids on a multilingual text, and the HF files rebuilt from the GGUF
fields must load in AutoTokenizer and give the same ids again. For SentencePiece vocabularies the
rebuilt files include a tokenizer.model that sentencepiece loads with the GGUF's pieces, scores and
types, so that HF → GGUF → HF → GGUF gives the same fields.
"""

from __future__ import annotations

import ctypes
import io
import json
import struct
import unicodedata
from pathlib import Path
from typing import Any

import pytest

from lmconv.errors import InputError, UsageError
from lmconv.plugins.formats.gguf.pretokenizer import (
    KNOWN_PRE_TOKENIZERS,
    canonical_regex,
    hf_pre_tokenizer,
    identify_pre_tokenizer,
    pre_tokenizer_info,
)
from lmconv.plugins.formats.gguf.tokenizer_bridge import ARRAY_ELEMENT_TYPES, gguf_to_hf, hf_to_gguf

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# --------------------------------------------------------------------------- texts
# ≥ 10 scripts, emoji with ZWJ sequences, code, whitespace runs, digits, contractions.
TEXT = (
    "Hello World! The quick brown fox can't jump over 1234567 lazy dogs; I've seen DON'T and we'LL try.\n"
    "Français: déjà vu, naïve café — Größe & Straße.\n"
    "Русский текст: Съешь же ещё этих мягких французских булок, да выпей чаю.\n"
    "Ελληνικά: Γαζέες καὶ μυρτιὲς δὲν θὰ βρῶ πιὰ στὸ χρυσαφὶ ξέφωτο.\n"
    "العربية: نص حكيم له سر قاطع وذو شأن عظيم.\n"
    "עברית: דג סקרן שט בים מאוכזב ולפתע מצא חברה.\n"
    "हिन्दी: ऋषियों को सताने वाले दुष्ट राक्षसों के राजा रावण का सर्वनाश करने वाले।\n"
    "ไทย: เป็นมนุษย์สุดประเสริฐเลิศคุณค่า กว่าบรรดาฝูงสัตว์เดรัจฉาน\n"
    "中文：我能吞下玻璃而不伤身体。繁體字也可以。\n"
    "한국어: 다람쥐 헌 쳇바퀴에 타고파.\n"
    "日本語: いろはにほへと ちりぬるを カタカナ ﾊﾝｶｸ。\n"
    "Emoji: 👩‍👩‍👧‍👦 family, 🏳️‍🌈 flag, 👍🏽 ok, 🦙🦙 llamas!\n"
    "def fib(n: int) -> int:\n"
    "    if n < 2:\n"
    "\treturn n  # tab\n"
    "    return fib(n - 1) + fib(n - 2)\n"
    "\n\n\n"
    "   spaces   and\t\ttabs \t \n"
    "numbers: 3.14159, 2,718, 1e-9, 0x1F, 100000000000.\n"
    "   trailing   "
)
# Text none of the tokenizers was trained on: byte fallback, unseen scripts and symbols.
UNSEEN = (
    "Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich. Ça coûte 45,99 € — n'est-ce pas?\n"
    "Широкая электрификация южных губерний даст мощный толчок подъёму сельского хозяйства.\n"
    "Ξεσκεπάζω την ψυχοφθόρα βδελυγμία. Σὲ γνωρίζω ἀπὸ τὴν κόψη.\n"
    "صِف خَلقَ خَودِ كَمِثلِ الشَمسِ إِذ بَزَغَت\n"
    "עטלף אבק נס דרך מזגן שהתפוצץ כי חם.\n"
    "नमस्ते दुनिया, यह एक परीक्षण है। क्षत्रिय ज्ञान श्री\n"
    "นายสังฆภัณฑ์ เฮงพิทักษ์ฝั่ง ผู้เฒ่าซึ่งมีอาชีพเป็นฅนขายฃวด\n"
    "天地玄黄，宇宙洪荒。日月盈昃，辰宿列张。\n"
    "키스의 고유조건은 입술끼리 만나야 하고 특별한 기술은 필요치 않다.\n"
    "あめつち ほしそら やまかは みねたに ゲーム・センター\n"
    "ሰላም ለዓለም · გამარჯობა · Բարեւ · 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 · Ω≈ç√∫ · ẞ\n"
    "🧑🏿‍🚀🫠🫶🏻 🇺🇳 #️⃣ 1️⃣\n"
    "async def main() -> None:\n\tawait asyncio.sleep(0.25)\r\n    x = {'a': [1, 2, 3]}\n"
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n"
    "3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 ٣٤٥ ४५६\n"
    "I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
OTHER = [
    "It's a truth universally acknowledged, that a single man in possession of a good fortune must be in want of a wife.",
    "Il était une fois une petite fille qui vivait dans un village près de la forêt.",
    "Москва — столица России, крупнейший по численности населения город страны.",
    "Η Αθήνα είναι η πρωτεύουσα και μεγαλύτερη πόλη της Ελλάδας.",
    "القاهرة هي عاصمة جمهورية مصر العربية وأكبر مدنها.",
    "ירושלים היא עיר עתיקה במזרח התיכון.",
    "भारत एक विशाल देश है और इसकी राजधानी नई दिल्ली है।",
    "กรุงเทพมหานครเป็นเมืองหลวงของประเทศไทย",
    "北京是中华人民共和国的首都，也是全国的政治中心和文化中心。",
    "서울은 대한민국의 수도이며 최대 도시이다.",
    "東京は日本の首都であり、ひらがなとカタカナを使います。",
    "for i in range(10):\n    print(i * i)  # squares\n",
    "class Foo:\n    def __init__(self):\n        self.x = [1, 2, 3]\n",
    "Numbers 0 1 2 3 4 5 6 7 8 9 10 100 1000 2024-06-01 12:30:45",
    "😀😃😄😁 👨‍💻 👩‍🔬 🇫🇷 🇯🇵",
]
CORPUS = [TEXT] * 3 + OTHER * 5

# tokenizer.json spellings of real models' split regexes
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
GPT4O_SPLIT = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
               r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
               r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
BAILING_SPLIT = (r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]"
                 r"|\s+(?!\S)|\s+")


# --------------------------------------------------------------------------- tokenizers
def _split(rx: str) -> Any:
    return pre_tokenizers.Split(Regex(rx), behavior="isolated", invert=False)


def _bytelevel_bpe(pre: Any, *, normalizer: Any = None, specials: list[str] | None = None,
                   ignore_merges: bool = False) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=specials or [], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    if ignore_merges:
        tj = json.loads(tok.to_str())
        tj["model"]["ignore_merges"] = True
        tok = Tokenizer.from_str(json.dumps(tj))
    return tok


def _files(tok: Tokenizer, tokenizer_config: dict[str, Any]) -> dict[str, bytes]:
    return {"tokenizer.json": tok.to_str().encode(), "tokenizer_config.json": json.dumps(tokenizer_config).encode()}


def gpt2_style(_: Path) -> tuple[dict[str, bytes], dict[str, Any]]:
    tok = _bytelevel_bpe(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True), specials=["<|endoftext|>"])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tc = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
          "unk_token": "<|endoftext|>", "model_max_length": 1 << 20, "clean_up_tokenization_spaces": False}
    return _files(tok, tc), {"vocab_size": tok.get_vocab_size() + 5}  # the model's vocab is larger: [PAD] fillers


def llama3_style(_: Path) -> tuple[dict[str, bytes], dict[str, Any]]:
    pre = pre_tokenizers.Sequence([_split(LLAMA3_SPLIT), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok = _bytelevel_bpe(pre, ignore_merges=True)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in ("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>")])
    tok.add_tokens([AddedToken("<think>", special=False, normalized=False)])
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos)]),
    ])
    tc = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
          "model_max_length": 1 << 20, "clean_up_tokenization_spaces": False,
          "chat_template": "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
                           "{{ m['content'] }}<|eot_id|>{% endfor %}"}
    return _files(tok, tc), {"vocab_size": tok.get_vocab_size(), "bos_token_id": bos,
                             "eos_token_id": tok.token_to_id("<|end_of_text|>")}


def qwen2_style(_: Path) -> tuple[dict[str, bytes], dict[str, Any]]:
    pre = pre_tokenizers.Sequence([_split(QWEN2_SPLIT), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok = _bytelevel_bpe(pre, normalizer=normalizers.NFC())
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tc = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None, "eos_token": "<|im_end|>",
          "pad_token": "<|endoftext|>", "model_max_length": 1 << 20, "clean_up_tokenization_spaces": False,
          "chat_template": "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
                           "{{ message['content'] }}<|im_end|>\n{% endfor %}"}
    return _files(tok, tc), {"vocab_size": 1536}


def spm_style(tmp: Path) -> tuple[dict[str, bytes], dict[str, Any]]:
    """A SentencePiece BPE with byte fallback, made HF by transformers' own conversion (LlamaTokenizer)."""
    import sentencepiece as spm
    from transformers import LlamaTokenizer

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_writer=buf, model_type="bpe", vocab_size=1200,
                                   byte_fallback=True, character_coverage=1.0, split_digits=True,
                                   allow_whitespace_only_pieces=True, remove_extra_whitespaces=False,
                                   normalization_rule_name="identity", minloglevel=2, num_threads=1)
    src = tmp / "spm-model"
    src.mkdir()
    (src / "tokenizer.model").write_bytes(buf.getvalue())
    out = tmp / "spm-hf"
    LlamaTokenizer.from_pretrained(str(src), add_bos_token=True).save_pretrained(str(out))
    files = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    files["tokenizer.model"] = buf.getvalue()
    return files, {"vocab_size": 1280}


def unigram_style(_: Path) -> tuple[dict[str, bytes], dict[str, Any]]:
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=False)
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=False)
    trainer = trainers.UnigramTrainer(vocab_size=1500, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>",
                                      show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    tc = {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "<unk>", "eos_token": "</s>", "pad_token": "<pad>",
          "model_max_length": 1 << 20}
    return _files(tok, tc), {}


STYLES = {"gpt2": gpt2_style, "llama3": llama3_style, "qwen2": qwen2_style, "spm": spm_style, "unigram": unigram_style}
EXPECTED = {"gpt2": ("gpt2", "gpt-2"), "llama3": ("gpt2", "llama-bpe"), "qwen2": ("gpt2", "qwen2"),
            "spm": ("llama", "default"), "unigram": ("t5", "default")}


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict[str, bytes], dict[str, Any], Path]]:
    out = {}
    for name, build in STYLES.items():
        tmp = tmp_path_factory.mktemp(name)
        files, config = build(tmp)
        out[name] = (files, config, save(tmp / "hf", files))
    return out


def save(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def auto(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


# --------------------------------------------------------------------------- llama.cpp
def write_vocab_gguf(path: Path, kv: dict[str, object]) -> Path:
    """A vocab-only GGUF (arch llama, minimal hparams) holding ``kv`` with the element types the bridge documents."""
    import gguf

    T = gguf.GGUFValueType
    element = {"string": T.STRING, "int32": T.INT32, "float32": T.FLOAT32, "uint8": T.UINT8}
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(4096)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(128)
    w.add_head_count(1)
    for key, value in kv.items():
        if key in ARRAY_ELEMENT_TYPES:
            w.add_key_value(key, list(value), T.ARRAY, sub_type=element[ARRAY_ELEMENT_TYPES[key]])
        elif isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        elif isinstance(value, str):
            w.add_string(key, value)
        else:
            raise TypeError(f"{key}: {type(value).__name__}")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def llamas(made: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    from llama_cpp import Llama

    tmp = tmp_path_factory.mktemp("gguf")
    opened = {}
    for name, (files, config, _) in made.items():
        path = write_vocab_gguf(tmp / f"{name}.gguf", hf_to_gguf(files, config))
        opened[name] = Llama(model_path=str(path), vocab_only=True, verbose=False)
    yield opened
    for llm in opened.values():
        llm.close()


def llama_detokenize(llm: Any, ids: list[int]) -> bytes:
    """llama.cpp's own llama_detokenize with room for every piece.

    Not ``Llama.detokenize``: llama-cpp-python 0.3.36 renders each token into a 32-byte buffer
    and silently drops pieces longer than that (an 11-character CJK token is 33 bytes), so
    its output loses text whatever the vocabulary.
    """
    import llama_cpp

    arr = (llama_cpp.llama_token * len(ids))(*ids)
    buf = ctypes.create_string_buffer(len(ids) * 64 + 64)
    n = llama_cpp.llama_detokenize(llm._model.vocab, arr, len(ids), buf, len(buf), False, False)
    assert n >= 0
    return buf.raw[:n]


# =========================================================================== identification
@pytest.mark.parametrize("name", list(STYLES))
def test_identifies_the_pre_tokenizer_from_tokenizer_json(made: dict[str, Any], name: str) -> None:
    files, _, _ = made[name]
    assert identify_pre_tokenizer(json.loads(files["tokenizer.json"])) == EXPECTED[name][1]


def _bpe_json(pre: Any, **model: Any) -> dict[str, Any]:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre
    tj = json.loads(tok.to_str())
    tj["model"].update(model)
    return tj


def test_identifies_real_models_pre_tokenizer_shapes() -> None:
    bl = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    seq = pre_tokenizers.Sequence
    # StarCoder: Digits(individual) then GPT-2's ByteLevel regex
    assert identify_pre_tokenizer(_bpe_json(seq([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)]))) == "starcoder"
    # Llama-3's regex without ignore_merges is a name that does not skip merging either
    assert identify_pre_tokenizer(_bpe_json(seq([_split(LLAMA3_SPLIT), bl]))) == "smaug-bpe"
    assert identify_pre_tokenizer(_bpe_json(seq([_split(LLAMA3_SPLIT), bl]), ignore_merges=True)) == "llama-bpe"
    # regexes llama.cpp rewrote: \p{Lu}-style classes (GPT-4o), possessive quantifiers (Bailing)
    assert identify_pre_tokenizer(_bpe_json(seq([_split(GPT4O_SPLIT), bl]))) == "gpt-4o"
    assert identify_pre_tokenizer(_bpe_json(seq([_split(BAILING_SPLIT), bl]))) == "bailingmoe"
    # a literal CR/LF in the pattern is the same as the escape
    deepseek_coder = [_split("[\r\n]"), _split(r"\s?\p{L}+"), _split(r"\s?\p{P}+"),
                      _split("[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"), pre_tokenizers.Digits(individual_digits=True), bl]
    assert identify_pre_tokenizer(_bpe_json(seq(deepseek_coder))) == "deepseek-coder"
    # not byte-level, or not a split llama.cpp has
    assert identify_pre_tokenizer(_bpe_json(pre_tokenizers.Whitespace())) is None
    assert identify_pre_tokenizer(_bpe_json(seq([_split(r"[a-z]+|[0-9]{7}"), bl]))) is None
    assert identify_pre_tokenizer(_bpe_json(pre_tokenizers.ByteLevel(add_prefix_space=True))) is None


def test_canonical_regex_undoes_llamacpp_rewrites() -> None:
    assert canonical_regex(r"(?i:'s|'t|'re)|x") == r"(?:'[sS]|'[tT]|'[rR][eE])|x"
    assert canonical_regex(r"'(?i:[sdmt]|ll)") == r"'(?:[sSdDmMtT]|[lL][lL])"
    assert canonical_regex(r"(?i:[a-c]x)") == r"(?:[a-cA-C][xX])"
    assert canonical_regex(r"\p{L}++a?+\++") == r"\p{L}+a?\++"
    assert canonical_regex(r"a|\s+(?!\S)|\s+") == r"a|\s+(?!\S)"
    assert canonical_regex("[\r\n\t]") == r"[\r\n\t]"
    assert canonical_regex(r"(?i:\p{L}\s)") == r"(?:\p{L}\s)"  # escapes keep their letters


def test_known_names_and_their_tokenizer_json_splits() -> None:
    for name in ("default", "gpt-2", "llama-bpe", "llama3", "qwen2", "deepseek-llm", "falcon", "starcoder", "refact",
                 "command-r", "olmo", "dbrx", "smaug-bpe", "poro-chat", "jais", "tekken", "chameleon", "gpt-4o"):
        assert name in KNOWN_PRE_TOKENIZERS
    assert len(set(KNOWN_PRE_TOKENIZERS)) == len(KNOWN_PRE_TOKENIZERS)
    for name in KNOWN_PRE_TOKENIZERS:
        info = pre_tokenizer_info(name)
        if not (info.expressible and info.byte_level):
            with pytest.raises(UsageError):
                hf_pre_tokenizer(name)
            continue
        tj = _bpe_json(None)
        tj["pre_tokenizer"] = hf_pre_tokenizer(name)
        Tokenizer.from_str(json.dumps(tj))  # every regex is one tokenizers' engine accepts
        got = identify_pre_tokenizer({**tj, "model": {**tj["model"], "ignore_merges": info.ignore_merges}})
        assert got is not None and pre_tokenizer_info(got).regexes == info.regexes, name


def test_unusual_regex_names_the_way_out(made: dict[str, Any]) -> None:
    files, config, _ = made["llama3"]
    tj = json.loads(files["tokenizer.json"])
    tj["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {"Regex": "[a-z]+|[0-9]{7}"}
    odd = {**files, "tokenizer.json": json.dumps(tj).encode()}
    with pytest.raises(UsageError) as err:
        hf_to_gguf(odd, config, path_for_errors="models/odd")
    message = str(err.value)
    assert "\n" not in message and err.value.exit_code == 2
    assert message.startswith("models/odd/tokenizer.json: ")
    assert "--pre-tokenizer" in message and "llama-bpe" in message and "qwen2" in message
    # an explicit name wins over detection, and is checked
    assert hf_to_gguf(odd, config, pre_tokenizer="llama-bpe")["tokenizer.ggml.pre"] == "llama-bpe"
    with pytest.raises(UsageError, match="not a pre-tokenizer llama.cpp knows"):
        hf_to_gguf(files, config, pre_tokenizer="no-such-pre")


# =========================================================================== HF → GGUF fields
@pytest.mark.parametrize("name", list(STYLES))
def test_fields_have_llamacpp_shapes(made: dict[str, Any], name: str) -> None:
    files, config, _ = made[name]
    kv = hf_to_gguf(files, config)
    assert (kv["tokenizer.ggml.model"], kv["tokenizer.ggml.pre"]) == EXPECTED[name]
    tokens, types = kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.token_type"]
    assert all(isinstance(t, str) for t in tokens) and len(set(tokens)) == len(tokens)
    assert len(types) == len(tokens) and set(types) <= {NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE}
    if config.get("vocab_size"):
        assert len(tokens) == config["vocab_size"]
    if kv["tokenizer.ggml.model"] == "gpt2":
        assert "tokenizer.ggml.scores" not in kv
        assert all(isinstance(m, str) and m.count(" ") == 1 for m in kv["tokenizer.ggml.merges"])
    else:
        scores = kv["tokenizer.ggml.scores"]
        assert len(scores) == len(tokens) and all(isinstance(s, float) for s in scores)
        assert "tokenizer.ggml.merges" not in kv
    assert isinstance(kv["tokenizer.ggml.add_bos_token"], bool) and isinstance(kv["tokenizer.ggml.add_eos_token"], bool)
    assert hf_to_gguf(files, config) == kv  # deterministic


def test_special_tokens_types_and_padding(made: dict[str, Any]) -> None:
    files, config, _ = made["gpt2"]
    kv = hf_to_gguf(files, config)
    tokens, types = kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.token_type"]
    n = config["vocab_size"]
    assert tokens[-5:] == [f"[PAD{i}]" for i in range(n - 5, n)] and types[-5:] == [UNUSED] * 5
    eot = tokens.index("<|endoftext|>")
    assert types[eot] == CONTROL
    assert kv["tokenizer.ggml.bos_token_id"] == kv["tokenizer.ggml.eos_token_id"] == eot
    assert kv["tokenizer.ggml.add_bos_token"] is False  # ByteLevel post-processor adds nothing

    files, config, _ = made["llama3"]
    kv = hf_to_gguf(files, config)
    tokens, types = kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.token_type"]
    assert types[tokens.index("<|begin_of_text|>")] == CONTROL
    assert types[tokens.index("<think>")] == USER_DEFINED
    assert kv["tokenizer.ggml.bos_token_id"] == tokens.index("<|begin_of_text|>")
    assert kv["tokenizer.ggml.eos_token_id"] == tokens.index("<|eot_id|>")  # tokenizer_config wins over config.json
    assert kv["tokenizer.ggml.add_bos_token"] is True  # from the TemplateProcessing
    assert kv["tokenizer.chat_template"].startswith("{% for m in messages %}")

    files, config, _ = made["qwen2"]
    kv = hf_to_gguf(files, config)
    tokens = kv["tokenizer.ggml.tokens"]
    assert "tokenizer.ggml.bos_token_id" not in kv
    assert kv["tokenizer.ggml.padding_token_id"] == tokens.index("<|endoftext|>")
    assert kv["tokenizer.ggml.eos_token_id"] == tokens.index("<|im_end|>")

    files, config, _ = made["spm"]
    kv = hf_to_gguf(files, config)
    tokens, types = kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.token_type"]
    assert (tokens[0], types[0]) == ("<unk>", UNKNOWN) and (tokens[1], types[1]) == ("<s>", CONTROL)
    assert types[tokens.index("<0x0A>")] == BYTE and types.count(BYTE) == 256
    assert kv["tokenizer.ggml.unknown_token_id"] == 0 and kv["tokenizer.ggml.bos_token_id"] == 1
    assert kv["tokenizer.ggml.add_bos_token"] is True and kv["tokenizer.ggml.add_space_prefix"] is True
    assert tokens[-1] == f"[PAD{config['vocab_size'] - 1}]"


def test_other_file_spellings_give_the_same_fields(made: dict[str, Any]) -> None:
    # GPT-2's slow files: vocab.json + merges.txt
    files, config, _ = made["gpt2"]
    tj = json.loads(files["tokenizer.json"])
    merges = ["#version: 0.2"] + [" ".join(m) if isinstance(m, list) else m for m in tj["model"]["merges"]]
    slow = {"vocab.json": json.dumps(tj["model"]["vocab"]).encode(), "merges.txt": "\n".join(merges).encode(),
            "tokenizer_config.json": files["tokenizer_config.json"]}
    a, b = hf_to_gguf(files, config), hf_to_gguf(slow, config)
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id"):
        assert a[key] == b[key], key
    # a lone tokenizer.model: the same pieces, scores and types as with transformers' files
    files, config, _ = made["spm"]
    a, b = hf_to_gguf(files, config), hf_to_gguf({"tokenizer.model": files["tokenizer.model"]}, config)
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.scores",
                "tokenizer.ggml.bos_token_id", "tokenizer.ggml.add_space_prefix"):
        assert a[key] == b[key], key


def test_named_chat_templates_round_trip(made: dict[str, Any]) -> None:
    files, config, _ = made["qwen2"]
    templates = [{"name": "default", "template": "A{{ x }}"}, {"name": "tool_use", "template": "B{{ y }}"}]
    tc = {**json.loads(files["tokenizer_config.json"]), "chat_template": templates}
    kv = hf_to_gguf({**files, "tokenizer_config.json": json.dumps(tc).encode()}, config)
    assert kv["tokenizer.chat_template"] == "A{{ x }}" and kv["tokenizer.chat_template.tool_use"] == "B{{ y }}"
    assert kv["tokenizer.chat_templates"] == ["tool_use"]
    assert json.loads(gguf_to_hf(kv)["tokenizer_config.json"])["chat_template"] == templates


def test_bad_inputs_are_input_errors(made: dict[str, Any]) -> None:
    files, config, _ = made["gpt2"]
    with pytest.raises(InputError, match="tokenizer.json: is not valid JSON"):
        hf_to_gguf({**files, "tokenizer.json": b"{nope"}, config)
    with pytest.raises(InputError, match="vocab_size is 10"):
        hf_to_gguf(files, {"vocab_size": 10})
    with pytest.raises(InputError, match="no tokenizer.json"):
        hf_to_gguf({"tokenizer_config.json": b"{}"}, config)
    with pytest.raises(InputError, match="not a SentencePiece model"):
        hf_to_gguf({"tokenizer.model": b"\xff\xff\xff"}, {})


# =========================================================================== against llama.cpp
@pytest.mark.parametrize("name", list(STYLES))
@pytest.mark.parametrize("text", [TEXT, UNSEEN], ids=["text", "unseen"])
def test_llamacpp_tokenizes_like_transformers(made: dict[str, Any], llamas: dict[str, Any], name: str, text: str) -> None:
    hf = auto(made[name][2])
    llm = llamas[name]
    want = hf(text, add_special_tokens=False)["input_ids"]
    got = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    assert got == want
    # with the model's own BOS/EOS policy (add_bos_token / add_eos_token)
    assert llm.tokenize(text.encode("utf-8"), add_bos=True, special=False) == hf(text)["input_ids"]
    if name == "unigram" and text is UNSEEN:
        return  # unseen characters are <unk> for both (no byte fallback): no text to get back
    assert llama_detokenize(llm, got).decode("utf-8") == text


def test_llamacpp_byte_fallback_bpe_from_tokenizer_json_alone(made: dict[str, Any], tmp_path: Path) -> None:
    """Without tokenizer.model the SentencePiece scores come from the BPE's merge order."""
    from llama_cpp import Llama

    files, config, folder = made["spm"]
    alone = {k: v for k, v in files.items() if k != "tokenizer.model"}
    kv = hf_to_gguf(alone, config)
    assert kv["tokenizer.ggml.model"] == "llama" and kv["tokenizer.ggml.token_type"] == hf_to_gguf(files, config)["tokenizer.ggml.token_type"]
    hf = auto(folder)
    llm = Llama(model_path=str(write_vocab_gguf(tmp_path / "v.gguf", kv)), vocab_only=True, verbose=False)
    try:
        for text in (TEXT, UNSEEN):
            assert llm.tokenize(text.encode(), add_bos=True) == hf(text)["input_ids"]
    finally:
        llm.close()


def test_llamacpp_matches_added_tokens_in_text(made: dict[str, Any], llamas: dict[str, Any]) -> None:
    hf = auto(made["llama3"][2])
    llm = llamas["llama3"]
    text = "<|begin_of_text|>Hi there<think>x + 1</think><|eot_id|> done<think>"
    # user-defined "<think>" is matched whole by both; control tokens only when parsing specials
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == hf(text, add_special_tokens=False)["input_ids"]
    plain = llm.tokenize(text.encode(), add_bos=False, special=False)
    assert hf.convert_tokens_to_ids("<|eot_id|>") not in plain and hf.convert_tokens_to_ids("<think>") in plain


def test_qwen2_nfc_is_a_known_llamacpp_difference(made: dict[str, Any], llamas: dict[str, Any]) -> None:
    """Qwen2's tokenizer.json normalises to NFC; llama.cpp has no normaliser for BPE vocabularies.

    So on text that is not already NFC (decomposed accents) the ids differ; on NFC text,
    which is what TEXT is, they are equal. Documented, not hidden.
    """
    hf = auto(made["qwen2"][2])
    llm = llamas["qwen2"]
    nfd = unicodedata.normalize("NFD", "déjà vu, naïve café — Größe. Ελληνικά ὅτι")
    nfc = unicodedata.normalize("NFC", nfd)
    assert nfd != nfc
    want = hf(nfd, add_special_tokens=False)["input_ids"]
    assert llm.tokenize(nfd.encode(), add_bos=False) != want
    assert llm.tokenize(nfc.encode(), add_bos=False) == want


def test_t5_unigram_with_precompiled_charsmap(tmp_path: Path) -> None:
    """A SentencePiece Unigram (NFKC charsmap, extra whitespace removed) as transformers' T5 converter writes it."""
    import sentencepiece as spm
    from llama_cpp import Llama
    from transformers import T5Tokenizer

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_writer=buf, model_type="unigram", vocab_size=500,
                                   character_coverage=1.0, minloglevel=2, num_threads=1, pad_id=0, eos_id=1, unk_id=2,
                                   bos_id=-1)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "spiece.model").write_bytes(buf.getvalue())
    T5Tokenizer.from_pretrained(str(tmp_path / "src"), extra_ids=0).save_pretrained(str(tmp_path / "hf"))
    files = {p.name: p.read_bytes() for p in (tmp_path / "hf").iterdir() if p.is_file()}
    kv = hf_to_gguf(files, {})
    assert (kv["tokenizer.ggml.model"], kv["tokenizer.ggml.pre"]) == ("t5", "default")
    assert isinstance(kv["tokenizer.ggml.precompiled_charsmap"], bytes) and kv["tokenizer.ggml.remove_extra_whitespaces"]
    assert kv["tokenizer.ggml.add_eos_token"] is True and kv["tokenizer.ggml.add_bos_token"] is False
    hf = auto(tmp_path / "hf")
    back = gguf_to_hf(kv)
    rebuilt = auto(save(tmp_path / "back", back))
    alone = auto(save(tmp_path / "model-only", {k: v for k, v in back.items() if k != "tokenizer.json"}))
    # the tokenizer.model: the original's pieces and types, the GGUF's scores (its added tokens score
    # -1000), a Unigram with the original's charsmap and whitespace handling; read back, the same fields
    ours, proto = sentencepiece_of(back["tokenizer.model"])
    original, source = sentencepiece_of(buf.getvalue())
    assert [(p.piece, p.type) for p in proto.pieces] == [(p.piece, p.type) for p in source.pieces]
    assert f32(p.score for p in proto.pieces) == f32(kv["tokenizer.ggml.scores"])
    assert proto.trainer_spec.model_type == proto.trainer_spec.UNIGRAM and not proto.trainer_spec.byte_fallback
    for key in ("precompiled_charsmap", "add_dummy_prefix", "remove_extra_whitespaces", "escape_whitespaces"):
        assert getattr(proto.normalizer_spec, key) == getattr(source.normalizer_spec, key), key
    assert (ours.unk_id(), ours.eos_id(), ours.pad_id(), ours.bos_id()) == (2, 1, 0, -1)
    assert hf_to_gguf(back, {}) == kv
    llm = Llama(model_path=str(write_vocab_gguf(tmp_path / "t5.gguf", kv)), vocab_only=True, verbose=False)
    try:
        for text in (TEXT, UNSEEN, "Hello   world  \ufb01 \u2460 \uff28\uff45\uff4c\uff4c\uff4f  x "):  # NFKC folds these
            want = hf(text, add_special_tokens=False)["input_ids"]
            assert llm.tokenize(text.encode(), add_bos=False) == want
            assert llm.tokenize(text.encode(), add_bos=True) == hf(text)["input_ids"]  # EOS appended by both
            assert rebuilt(text)["input_ids"] == hf(text)["input_ids"]
            assert alone(text)["input_ids"] == hf(text)["input_ids"]
            assert ours.encode(text) == original.encode(text) == want
    finally:
        llm.close()


# =========================================================================== GGUF → HF
@pytest.mark.parametrize("name", list(STYLES))
def test_gguf_to_hf_round_trip_loads_in_autotokenizer(made: dict[str, Any], name: str, tmp_path: Path) -> None:
    files, config, folder = made[name]
    original = auto(folder)
    kv = hf_to_gguf(files, config)
    rebuilt_files = gguf_to_hf(kv)
    sentencepiece = kv["tokenizer.ggml.model"] in ("llama", "t5")
    assert set(rebuilt_files) == ({"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
                                  | ({"tokenizer.model"} if sentencepiece else set()))
    assert gguf_to_hf(kv) == rebuilt_files  # deterministic bytes
    Tokenizer.from_str(rebuilt_files["tokenizer.json"].decode())
    rebuilt = auto(save(tmp_path / "back", rebuilt_files))
    # transformers loads the tokenizer.json as it is; the tokenizer.model alone converts to the same
    alone = auto(save(tmp_path / "model-only", {k: v for k, v in rebuilt_files.items() if k != "tokenizer.json"})) \
        if sentencepiece else rebuilt
    for text in (TEXT, UNSEEN):
        ids = original(text, add_special_tokens=False)["input_ids"]
        assert rebuilt(text, add_special_tokens=False)["input_ids"] == ids
        assert rebuilt(text)["input_ids"] == original(text)["input_ids"]
        assert alone(text, add_special_tokens=False)["input_ids"] == ids
        assert alone(text)["input_ids"] == original(text)["input_ids"]
        if not (name == "unigram" and text is UNSEEN):
            assert rebuilt.decode(ids) == text
    for special in ("bos_token", "eos_token", "unk_token", "pad_token"):
        assert getattr(rebuilt, special) == getattr(original, special), special
    if "chat_template" in json.loads(files["tokenizer_config.json"]):
        assert rebuilt.chat_template == original.chat_template


@pytest.mark.parametrize("name", ["llama3", "spm", "unigram"])
def test_gguf_to_hf_from_fields_read_back_by_gguf_reader(made: dict[str, Any], name: str, tmp_path: Path) -> None:
    from gguf import GGUFReader

    files, config, folder = made[name]
    path = write_vocab_gguf(tmp_path / "v.gguf", hf_to_gguf(files, config))
    fields = {k: f.contents() for k, f in GGUFReader(str(path)).fields.items() if k.startswith("tokenizer.")}
    assert gguf_to_hf(fields) == gguf_to_hf(hf_to_gguf(files, config))
    rebuilt = auto(save(tmp_path / "back", gguf_to_hf(fields)))
    assert rebuilt(TEXT)["input_ids"] == auto(folder)(TEXT)["input_ids"]


def test_gguf_to_hf_refuses_what_it_cannot_rebuild() -> None:
    with pytest.raises(UsageError, match="tokenizer model 'bert'"):
        gguf_to_hf({"tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": ["a"]})
    with pytest.raises(UsageError, match="no tokenizer.ggml.tokens"):
        gguf_to_hf({"tokenizer.ggml.model": "gpt2"})
    with pytest.raises(UsageError, match="cannot express"):
        gguf_to_hf({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "kimi-k2", "tokenizer.ggml.tokens": ["a"]})


# =========================================================================== tokenizer.model
def sentencepiece_of(raw: bytes) -> tuple[Any, Any]:
    """(SentencePieceProcessor, ModelProto) of a tokenizer.model."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(raw)
    return spm.SentencePieceProcessor(model_proto=raw), proto


def f32(values: Any) -> bytes:
    values = list(values)
    return struct.pack(f"<{len(values)}f", *values)


@pytest.mark.parametrize("name", ["spm", "unigram"])
def test_gguf_to_hf_writes_a_tokenizer_model_sentencepiece_loads(made: dict[str, Any], llamas: dict[str, Any],
                                                                  name: str) -> None:
    """Every piece, float32 score and type of the GGUF at its id, read by sentencepiece itself; a BPE
    for "llama", a Unigram for "t5"; tokenizing as llama.cpp does with the same fields and, for the
    SentencePiece-trained "spm", as sentencepiece does with the original tokenizer.model."""
    import sentencepiece as spm

    files, config, _ = made[name]
    kv = hf_to_gguf(files, config)
    raw = gguf_to_hf(kv)["tokenizer.model"]
    tokens, types, scores = kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.token_type"], kv["tokenizer.ggml.scores"]
    sp, proto = sentencepiece_of(raw)
    n = sp.get_piece_size()
    assert n == len(tokens) and [sp.id_to_piece(i) for i in range(n)] == tokens
    assert f32(sp.get_score(i) for i in range(n)) == f32(scores)
    assert [(p.piece, p.score, p.type) for p in proto.pieces] == list(zip(tokens, scores, types))
    for i, typ in enumerate(types):  # sentencepiece's own reading of the types
        assert (sp.is_unknown(i), sp.is_control(i), sp.is_unused(i), sp.is_byte(i)) == (
            typ == UNKNOWN, typ == CONTROL, typ == UNUSED, typ == BYTE), i
    assert proto.SerializeToString() == raw  # protobuf's own serialiser writes these very bytes

    trainer, normalizer = proto.trainer_spec, proto.normalizer_spec
    assert trainer.model_type == (trainer.BPE if name == "spm" else trainer.UNIGRAM)
    assert trainer.vocab_size == n and trainer.byte_fallback == (BYTE in types)
    ids = tuple(kv.get(f"tokenizer.ggml.{key}_token_id", -1) for key in ("unknown", "bos", "eos", "padding"))
    assert (trainer.unk_id, trainer.bos_id, trainer.eos_id, trainer.pad_id) == ids
    assert sp.unk_id() == kv["tokenizer.ggml.unknown_token_id"]
    assert sp.eos_id() == kv["tokenizer.ggml.eos_token_id"]
    assert normalizer.add_dummy_prefix == kv["tokenizer.ggml.add_space_prefix"]
    assert not normalizer.remove_extra_whitespaces and normalizer.escape_whitespaces
    assert normalizer.name == "identity" and not normalizer.precompiled_charsmap

    original = spm.SentencePieceProcessor(model_proto=files["tokenizer.model"]) if name == "spm" else None
    for text in (TEXT, UNSEEN):
        got = sp.encode(text)
        assert got == llamas[name].tokenize(text.encode("utf-8"), add_bos=False, special=False)
        if original is not None:
            assert got == original.encode(text)
            assert sp.encode(text, out_type=str) == original.encode(text, out_type=str)
            assert sp.decode(got) == text


def test_sentencepiece_hf_gguf_hf_gguf_keeps_every_field(made: dict[str, Any], tmp_path: Path) -> None:
    """HF → GGUF → HF → GGUF through GGUF files: the second GGUF's tokenizer fields are the first's,
    the float32 scores byte for byte (the second hop reads them from the tokenizer.model the first
    wrote: without it they would come back as the BPE's merge ranks), and llama.cpp tokenizes a
    multilingual text the same way from both, as transformers does from the original files."""
    from gguf import GGUFReader
    from llama_cpp import Llama

    def fields(path: Path) -> dict[str, Any]:
        return {k: f.contents() for k, f in GGUFReader(str(path)).fields.items() if k.startswith("tokenizer.")}

    files, config, folder = made["spm"]
    first = write_vocab_gguf(tmp_path / "first.gguf", hf_to_gguf(files, config))
    back = gguf_to_hf(fields(first))
    assert "tokenizer.model" in back
    save(tmp_path / "back", back)
    second = write_vocab_gguf(tmp_path / "second.gguf", hf_to_gguf(back, config))
    a, b = fields(first), fields(second)
    assert a == b
    assert f32(a["tokenizer.ggml.scores"]) == f32(b["tokenizer.ggml.scores"])
    assert hf_to_gguf(back, config) == hf_to_gguf(files, config)
    assert hf_to_gguf(back, {}) == hf_to_gguf(files, config)  # the tokenizer.model holds the padding too
    ranks = hf_to_gguf({k: v for k, v in back.items() if k != "tokenizer.model"}, config)
    assert ranks["tokenizer.ggml.tokens"] == a["tokenizer.ggml.tokens"]
    assert ranks["tokenizer.ggml.scores"] != a["tokenizer.ggml.scores"]

    hf = auto(folder)
    llms = [Llama(model_path=str(p), vocab_only=True, verbose=False) for p in (first, second)]
    try:
        for text in (TEXT, UNSEEN):
            want = hf(text)["input_ids"]
            for llm in llms:
                assert llm.tokenize(text.encode("utf-8"), add_bos=True, special=False) == want
                assert llm.tokenize(text.encode("utf-8"), add_bos=False, special=False) == want[1:]
    finally:
        for llm in llms:
            llm.close()


def test_user_defined_and_control_pieces_both_ways(tmp_path: Path) -> None:
    """A lone tokenizer.model with user-defined pieces (one holding ▁) and a control piece gives the
    fields transformers' files of it give (user-defined: added tokens, " " for ▁, -1000); the
    tokenizer.model written back spells them with ▁ again, so sentencepiece matches them as the
    original does, and reading it gives the same fields."""
    import sentencepiece as spm
    from transformers import LlamaTokenizer

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_writer=buf, model_type="bpe", vocab_size=1200,
                                   byte_fallback=True, character_coverage=1.0, split_digits=True,
                                   normalization_rule_name="identity", remove_extra_whitespaces=False, minloglevel=2,
                                   num_threads=1, user_defined_symbols=["<start_of_turn>", "\u2581llama\u2581llama"],
                                   control_symbols=["<ctl>"])
    model = buf.getvalue()
    kv = hf_to_gguf({"tokenizer.model": model}, {})
    tokens, types, scores = kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.token_type"], kv["tokenizer.ggml.scores"]
    at = {t: i for i, t in enumerate(tokens)}
    assert (types[at["<start_of_turn>"]], scores[at["<start_of_turn>"]]) == (USER_DEFINED, -1000.0)
    assert (types[at[" llama llama"]], scores[at[" llama llama"]]) == (USER_DEFINED, -1000.0)
    assert (types[at["<ctl>"]], scores[at["<ctl>"]]) == (CONTROL, 0.0)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "tokenizer.model").write_bytes(model)
    LlamaTokenizer.from_pretrained(str(tmp_path / "src")).save_pretrained(str(tmp_path / "hf"))
    hf_files = {p.name: p.read_bytes() for p in (tmp_path / "hf").iterdir() if p.is_file()}
    via_transformers = hf_to_gguf({**hf_files, "tokenizer.model": model}, {})
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
        assert via_transformers[key] == kv[key], key

    back = gguf_to_hf(kv)
    ours, proto = sentencepiece_of(back["tokenizer.model"])
    assert proto.pieces[at[" llama llama"]].piece == "\u2581llama\u2581llama"
    assert hf_to_gguf(back, {}) == kv
    original = spm.SentencePieceProcessor(model_proto=model)
    for text in ("Hi <start_of_turn> my llama llama and <ctl> llama llamas " + TEXT, UNSEEN):
        assert ours.encode(text) == original.encode(text)
    assert at["<start_of_turn>"] in ours.encode("a <start_of_turn> b")
    assert at[" llama llama"] in ours.encode("my llama llama")


def test_no_tokenizer_model_when_sentencepiece_would_refuse_it() -> None:
    import sentencepiece as spm
    from lmconv.plugins.formats.gguf.sentencepiece_model import problem

    byte_pieces = [f"<0x{b:02X}>" for b in range(256)]
    kv: dict[str, Any] = {
        "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["<unk>", "<s>", "a", "b", "ab", "\u2581"] + byte_pieces,
        "tokenizer.ggml.token_type": [UNKNOWN, CONTROL, NORMAL, NORMAL, NORMAL, NORMAL] + [BYTE] * 256,
        "tokenizer.ggml.scores": [0.0, 0.0, -1.0, -2.0, -0.5, -3.0] + [0.0] * 256,
        "tokenizer.ggml.bos_token_id": 1,
    }
    out = gguf_to_hf(kv)
    sp = spm.SentencePieceProcessor(model_proto=out["tokenizer.model"])
    assert sp.encode("ab ba", out_type=str) == ["\u2581", "ab", "\u2581", "b", "a"]
    assert sp.encode("\u00e9", out_type=str) == ["\u2581", "<0xC3>", "<0xA9>"]
    assert sp.bos_id() == 1 and sp.unk_id() == 0 and sp.eos_id() == -1 and sp.pad_id() == -1

    def without(**change: Any) -> dict[str, bytes]:
        edited = {**kv, **change}
        out = gguf_to_hf(edited)
        assert "tokenizer.json" in out and "tokenizer.model" not in out
        return out

    types = kv["tokenizer.ggml.token_type"]
    without(**{"tokenizer.ggml.token_type": [NORMAL] + types[1:]})  # no UNKNOWN piece
    without(**{"tokenizer.ggml.token_type": types[:2] + [UNKNOWN] + types[3:]})  # two of them
    without(**{k: kv[k][:-1] for k in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.scores")})
    without(**{"tokenizer.ggml.tokens": kv["tokenizer.ggml.tokens"][:5] + [""] + byte_pieces})
    assert problem([("<unk>", 0.0, UNKNOWN), ("a", 0.0, NORMAL), ("a", 0.0, CONTROL)], byte_fallback=False)
    assert problem([("<unk>", 0.0, UNKNOWN), ("<0x41>", 0.0, BYTE)], byte_fallback=False)
    assert problem([("<unk>", 0.0, UNKNOWN), ("<0x41>", 0.0, BYTE)], byte_fallback=True)
    assert problem([("<unk>", 0.0, UNKNOWN), ("a", 0.0, NORMAL)], byte_fallback=False) is None
