"""The granite family (GraniteForCausalLM; GGUF arch granite): the battery on a model whose four
multipliers are all far from 1 (so a dropped or inverted one shows in the logits), the keys llama.cpp
reads them from, and a GGUF from llama.cpp's own converter read back from its keys alone."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.families.support import battery, build, convert, hf_logits, reference_gguf, rel

SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "max_position_embeddings": 1024, "rms_norm_eps": 1e-5, "initializer_range": 0.1,
         "embedding_multiplier": 12.0, "residual_multiplier": 0.22, "attention_multiplier": 0.2, "logits_scaling": 8.0}
TEXT = "Hello world! It's 2024: don't   stop -- 12345 tokens, naïve café 😀\n\tTabs and    spaces.\nI'm here; we'll 3.14"


def assert_same_tokens(gguf: Path, folder: Path) -> None:
    """llama.cpp's tokenizer, from the GGUF alone, splits a text as transformers' does from the folder."""
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    llm = Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    try:
        got = llm.tokenize(TEXT.encode(), add_bos=False, special=False)
    finally:
        llm.close()
    want = AutoTokenizer.from_pretrained(str(folder))(TEXT, add_special_tokens=False).input_ids
    assert got == want and len(want) > 40


def test_granite_battery(tmp_path: Path) -> None:
    src = build("granite", config=SMALL)
    battery(src, tmp_path)
    assert_same_tokens(tmp_path / "f32.gguf", src)  # the battery's GGUF: llama-bpe, Llama 3's pre-tokenizer


def test_multipliers_are_llama_cpp_keys_and_come_back_from_them(tmp_path: Path) -> None:
    """llama.cpp's converter on the same model: its keys carry the four multipliers (no config of ours
    is in that file), and lmconv reads them back into a folder transformers computes the same logits with."""
    from gguf import GGUFReader

    from lmconv import read_model

    src = build("granite", config=SMALL)
    ref = reference_gguf(src, tmp_path / "ref.gguf", pre="llama-bpe")
    fields = GGUFReader(ref).fields
    got = {k: float(fields[f"granite.{k}"].parts[-1][0]) for k in ("embedding_scale", "residual_scale",
                                                                    "attention.scale", "logit_scale")}
    assert got == pytest.approx({"embedding_scale": 12.0, "residual_scale": 0.22, "attention.scale": 0.2,
                                 "logit_scale": 8.0}, rel=1e-6)
    config = read_model(ref).config
    assert (config["embedding_multiplier"], config["residual_multiplier"], config["attention_multiplier"],
            config["logits_scaling"]) == (12.0, 0.22, 0.2, 8.0)
    back = convert(ref, f"{tmp_path / 'back'}/")
    assert rel(hf_logits(back), hf_logits(src)) <= 1e-5


def test_missing_attention_scale_means_inverse_sqrt_head_size() -> None:
    """llama.cpp scales attention by 1/sqrt(head size) when the key is absent (or 0); HF's default is 1."""
    from lmconv.registry import get_registry

    layout = get_registry().architecture_in("gguf", "granite").layout("gguf")
    meta = {"granite.embedding_length": 64, "granite.block_count": 2, "granite.feed_forward_length": 128,
            "granite.attention.head_count": 4, "granite.logit_scale": 8.0}
    config = layout.config_from_meta(meta)
    assert config["attention_multiplier"] == 1 / math.sqrt(16)
    assert config["embedding_multiplier"] == config["residual_multiplier"] == 1.0
    assert config["logits_scaling"] == 8.0


def test_a_head_size_llama_cpp_cannot_hold_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lmconv.cli import main

    src = build("granite", config=SMALL)
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in src.iterdir():
        if f.name != "config.json":
            (bad / f.name).symlink_to(f)
    config = json.loads((src / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "head_dim": 32}))
    assert main([str(bad), str(tmp_path / "out.gguf"), "--quiet"]) == 3
    err = capsys.readouterr().err.strip()
    assert "head_dim 32" in err and "config.json" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out.gguf").exists()
