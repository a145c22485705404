"""The committed fixtures are what fixtures/make_fixtures.py makes, and are fit for the tests that use them.

Other tests lean on these properties: the folders load in transformers (model and tokenizer), the
tokenizers are lossless on a multilingual text, logits are peaked enough that top-1 agreement means
something, and regenerating gives the same bytes (so a changed fixture is always a deliberate one).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fixtures.make_fixtures import (
    LLAMA3_SPLIT,
    TEST_TEXT,
    TRAIN_TEXT,
    build_gpt2,
    build_llama,
    compare_trees,
    peakedness,
    read_text,
)

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
NAMES = ("tiny-llama", "tiny-gpt2")
TEXT = read_text(TEST_TEXT)

# Measured on texts/test.txt (python fixtures/make_fixtures.py --stats), asserted with margin:
#                      llama   gpt2
# median top-1 prob    0.92    0.99
# top-1 prob > 0.5     91%     95%
# median top1-top2 gap 2.95    5.07
# gap > 1.0            79%     86%
MIN_MEDIAN_P_MAX, MIN_FRAC_P_MAX, MIN_MEDIAN_GAP, MIN_FRAC_GAP = 0.8, 0.8, 2.0, 0.65


@pytest.fixture(scope="module")
def stats() -> dict[str, dict[str, float]]:
    return {name: peakedness(FIXTURES / name) for name in NAMES}


def _config(name: str) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((FIXTURES / name / "config.json").read_text(encoding="utf-8"))
    return config


def _tokenizer_json(name: str) -> dict[str, Any]:
    tj: dict[str, Any] = json.loads((FIXTURES / name / "tokenizer.json").read_text(encoding="utf-8"))
    return tj


def test_texts_are_as_specified() -> None:
    train, test = read_text(TRAIN_TEXT), read_text(TEST_TEXT)
    assert 3_000 <= len(train.encode()) <= 8_000 and 450 <= len(test) <= 750
    assert test not in train and "\r\n" in train  # read_text keeps the training text's one Windows line ending
    scripts = {"Han": "\u4e00-\u9fff", "Kana": "\u3040-\u30ff", "Hangul": "\uac00-\ud7af", "Arabic": "\u0600-\u06ff",
               "Hebrew": "\u0590-\u05ff", "Cyrillic": "\u0400-\u04ff", "Greek": "\u0370-\u03ff",
               "Devanagari": "\u0900-\u097f", "Thai": "\u0e00-\u0e7f", "Latin-1": "\u00c0-\u00ff",
               "emoji": "\U0001f300-\U0001faff"}
    import re

    for text in (train, test):
        missing = [s for s, rng in scripts.items() if not re.search(f"[{rng}]", text)]
        assert not missing, missing
        assert "\u200d" in text and "\t" in text and "    " in text and "\n\n" in text  # ZWJ, tab, spaces, blank line


def test_llama_fixture_loads_with_the_specified_shape() -> None:
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(FIXTURES / "tiny-llama"))
    assert isinstance(model, LlamaForCausalLM)
    c = model.config
    assert (c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads,
            c.max_position_embeddings, c.vocab_size) == (64, 128, 2, 4, 2, 128, 512)
    assert c.rms_norm_eps == 1e-5 and dict(c.rope_parameters or {})["rope_theta"] == 10000.0 and not c.tie_word_embeddings
    raw = _config("tiny-llama")
    assert raw["rope_theta"] == 10000.0  # the classic key, beside transformers 5's rope_parameters
    assert "lm_head.weight" in dict(model.named_parameters())


def test_gpt2_fixture_loads_with_the_specified_shape() -> None:
    from transformers import AutoModelForCausalLM, GPT2LMHeadModel

    model = AutoModelForCausalLM.from_pretrained(str(FIXTURES / "tiny-gpt2"))
    assert isinstance(model, GPT2LMHeadModel)
    c = model.config
    assert (c.n_embd, c.n_layer, c.n_head, c.n_positions, c.vocab_size) == (64, 2, 4, 128, 512)
    assert _config("tiny-gpt2")["n_ctx"] == 128  # the classic key transformers 5 no longer writes
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # tied


@pytest.mark.parametrize("name", NAMES)
def test_files_and_dtype(name: str) -> None:
    from safetensors import safe_open

    folder = FIXTURES / name
    expected = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json"}
    if name == "tiny-gpt2":
        expected |= {"vocab.json", "merges.txt"}
    assert {p.name for p in folder.iterdir()} == expected
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"F32"}  # noqa: SIM118
    tc = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert tc["tokenizer_class"] == {"tiny-llama": "PreTrainedTokenizerFast", "tiny-gpt2": "GPT2Tokenizer"}[name]
    total = sum(p.stat().st_size for p in FIXTURES.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert total < 3_000_000


@pytest.mark.parametrize("name", NAMES)
def test_tokenizer_round_trips_the_test_text(name: str) -> None:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(FIXTURES / name))
    ids = tok(TEXT)["input_ids"]
    assert ids == Tokenizer.from_file(str(FIXTURES / name / "tokenizer.json")).encode(TEXT).ids
    assert tok.decode(ids, skip_special_tokens=True) == TEXT
    train = read_text(TRAIN_TEXT)
    assert tok.decode(tok(train, add_special_tokens=False)["input_ids"]) == train
    assert len(tok) == _config(name)["vocab_size"] == 512
    if name == "tiny-llama":
        assert ids[0] == tok.bos_token_id == tok.convert_tokens_to_ids("<|begin_of_text|>")
        assert tok.eos_token == "<|end_of_text|>"
        chat = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
        assert chat == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    else:
        assert tok.bos_token == tok.eos_token == tok.unk_token == "<|endoftext|>" and tok.bos_token_id not in ids
    assert tok.bos_token_id != 0  # special tokens sit at the end of the vocabulary, as in the real models


@pytest.mark.parametrize("name", NAMES)
def test_tokenizer_json_is_the_family_s_byte_level_bpe(name: str) -> None:
    from tokenizers.pre_tokenizers import ByteLevel

    tj = _tokenizer_json(name)
    assert tj["model"]["type"] == "BPE" and tj["decoder"]["type"] == "ByteLevel"
    assert set(ByteLevel.alphabet()) <= set(tj["model"]["vocab"])  # all 256 byte symbols
    pre = tj["pre_tokenizer"]
    if name == "tiny-llama":
        split, byte_level = pre["pretokenizers"]
        assert split["type"] == "Split" and split["behavior"] == "Isolated"
        assert split["pattern"]["Regex"] == LLAMA3_SPLIT
        assert byte_level == {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
        assert tj["model"]["ignore_merges"] is True
        assert [p["type"] for p in tj["post_processor"]["processors"]] == ["ByteLevel", "TemplateProcessing"]
    else:
        assert pre["type"] == "ByteLevel" and pre["use_regex"] is True and pre["add_prefix_space"] is False
        vocab = json.loads((FIXTURES / name / "vocab.json").read_text(encoding="utf-8"))
        merges = (FIXTURES / name / "merges.txt").read_text(encoding="utf-8").splitlines()
        assert vocab == {**tj["model"]["vocab"], "<|endoftext|>": 511}
        assert merges[0].startswith("#version") and merges[1:] == [" ".join(m) for m in tj["model"]["merges"]]


@pytest.mark.parametrize("name", NAMES)
def test_logits_are_finite_and_peaked(name: str, stats: dict[str, dict[str, float]]) -> None:
    s = stats[name]
    assert s["finite"] == 1.0 and s["n_tokens"] > 128  # more than one context window was run
    assert s["p_max_median"] > MIN_MEDIAN_P_MAX, s
    assert s["frac_p_max_gt_0.5"] > MIN_FRAC_P_MAX, s
    assert s["gap_median"] > MIN_MEDIAN_GAP, s
    assert s["frac_gap_gt_1"] > MIN_FRAC_GAP, s


@pytest.mark.parametrize("name", NAMES)
def test_weights_are_finite_and_moderate(name: str) -> None:
    from safetensors.torch import load_file

    for key, t in load_file(str(FIXTURES / name / "model.safetensors")).items():
        assert t.isfinite().all() and t.abs().max() < 10, key
        if t.dim() == 1:  # norms and biases carry noise, so that swapping two of them shows
            assert t.std() > 0.01, key


@pytest.mark.parametrize("build,name", [(build_llama, "tiny-llama"), (build_gpt2, "tiny-gpt2")])
def test_regenerating_gives_the_same_bytes(tmp_path: Path, build: Callable[..., Path], name: str) -> None:
    out = build(tmp_path / name)
    for f in ("model.safetensors", "tokenizer.json"):
        assert (out / f).read_bytes() == (FIXTURES / name / f).read_bytes(), f
    assert compare_trees(FIXTURES, tmp_path, [name]) == []


def test_builders_make_larger_models_without_a_tokenizer(tmp_path: Path) -> None:
    from safetensors import safe_open

    out = build_llama(tmp_path / "wide", hidden_size=256, intermediate_size=512, num_layers=1, num_heads=4,
                      num_kv_heads=2, vocab_size=1024, tokenizer=False, seed=3)
    assert {p.name for p in out.iterdir()} == {"config.json", "generation_config.json", "model.safetensors"}
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert f.get_slice("model.embed_tokens.weight").get_shape() == [1024, 256]
    cfg = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert cfg["rope_theta"] == 10000.0 and cfg["num_key_value_heads"] == 2
    with pytest.raises(ValueError):
        build_gpt2(tmp_path / "bad", tokenizer=False)  # no tokenizer and no vocab size
