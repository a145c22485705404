"""Falcon (FalconForCausalLM; GGUF arch falcon): the battery for the new decoder architecture (grouped
KV heads, two LayerNorms) and the 7B-style multi-query model, the fused QKV regrouped as llama.cpp
lays it out, the variants llama.cpp cannot run refused, and a GGUF made by llama.cpp's own converter
read back into transformers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.families.support import IDS, battery, build, convert, hf_logits, reference_gguf, rel

# no ffn_hidden_size: 4 × hidden, which llama.cpp's converter writes as feed_forward_length whatever the config says
SMALL = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "layer_norm_epsilon": 1e-5, "initializer_range": 0.1, "max_position_embeddings": 1024, "pad_token_id": None,
         "bias": False, "alibi": False, "parallel_attn": True}
KINDS = {
    "new": {**SMALL, "new_decoder_architecture": True, "num_kv_heads": 2},
    "multi-query": {**SMALL, "new_decoder_architecture": False, "multi_query": True},
}
# Falcon's MLP uses the exact (erf) GELU; llama.cpp's falcon graph the tanh approximation, and that through an f16
# table (its input rounded to f16): a few 1e-4 on these logits
GELU_TOL = 5e-4


def falcon(kind: str) -> Path:
    return build("falcon", tokenizer="gpt2", config=KINDS[kind], name=f"falcon-{kind}")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_falcon_battery(kind: str, tmp_path: Path) -> None:
    fig = battery(falcon(kind), tmp_path, llama_tol=GELU_TOL)
    assert fig.numpy_vs_hf <= 1e-6


def test_fused_qkv_is_regrouped_as_llama_cpp_lays_it_out(tmp_path: Path) -> None:
    """HF groups each KV head with its queries ([q q k v][q q k v]); llama.cpp's rows are all queries,
    then all keys, then all values, and the norms of the new architecture map crosswise."""
    from gguf import GGUFReader
    from safetensors.numpy import load_file

    src = falcon("new")
    gguf = convert(src, tmp_path / "m.gguf")
    tensors = {t.name: np.array(t.data) for t in GGUFReader(gguf).tensors}
    hf = load_file(str(src / "model.safetensors"))
    w = hf["transformer.h.1.self_attention.query_key_value.weight"].reshape(2, 4, 16, 64)  # [kv, 2 q + k + v, hd, in]
    want = np.concatenate([w[:, :2].reshape(-1, 64), w[:, 2].reshape(-1, 64), w[:, 3].reshape(-1, 64)])
    assert np.array_equal(tensors["blk.1.attn_qkv.weight"], want)
    assert not np.array_equal(want, hf["transformer.h.1.self_attention.query_key_value.weight"])
    assert np.array_equal(tensors["blk.0.attn_norm_2.weight"], hf["transformer.h.0.ln_attn.weight"])
    assert np.array_equal(tensors["blk.0.attn_norm.weight"], hf["transformer.h.0.ln_mlp.weight"])


@pytest.mark.parametrize("key", ["alibi", "bias"])
def test_variants_llama_cpp_cannot_run_are_refused(key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """ALiBi and biased Falcons: one line naming the key, exit 3, no file."""
    from lmconv.cli import main

    folder = tmp_path / "src"
    shutil.copytree(falcon("multi-query"), folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, key: True}))
    assert main([str(folder), str(tmp_path / "m.gguf")]) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and key in err, err
    assert not (tmp_path / "m.gguf").exists()


def test_gguf_from_llama_cpp_converter_reads_back_into_transformers(tmp_path: Path) -> None:
    """The new architecture from llama.cpp's converter: which Falcon it is comes from its tensors
    (attn_norm_2) and KV heads. (Its converter reads the multi-query model's KV heads from
    num_kv_heads, which transformers 5 saves as every head: it cannot convert the 7B-style fixture.)"""
    src = falcon("new")
    ref = reference_gguf(src, tmp_path / "ref.gguf", pre="falcon")
    back = convert(ref, f"{tmp_path / 'back'}/")
    config = json.loads((back / "config.json").read_text())
    assert config["new_decoder_architecture"] is True and config["num_kv_heads"] == 2
    assert rel(hf_logits(back, IDS), hf_logits(src, IDS)) <= 1e-5
