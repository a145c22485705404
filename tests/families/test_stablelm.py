"""StableLM (StableLmForCausalLM; GGUF arch stablelm): the battery for the StableLM-2 1.6B shape
(sequential residual, Q/K/V biases, a quarter of each head rotated) and the 12B shape (parallel
residual, per-head Q/K LayerNorms stacked into one tensor per layer), and GGUFs made by llama.cpp's
own converter read back into transformers, the optional parts told by their tensors alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.families.support import IDS, battery, build, convert, hf_logits, reference_gguf, rel

SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "max_position_embeddings": 1024, "layer_norm_eps": 1e-5, "initializer_range": 0.1,
         "pad_token_id": None}
SEQUENTIAL = {**SMALL, "use_qkv_bias": True, "use_parallel_residual": False}
PARALLEL = {**SMALL, "qk_layernorm": True, "use_parallel_residual": True, "partial_rotary_factor": 0.5}
# llama.cpp's converter cannot convert per-head Q/K norms (its StableLMModel.modify_tensors returns, not yields,
# the stacked norms, then stops on "Unprocessed norms"), so its file comes from a parallel model without them
# (with Q/K/V biases, so that one conversion shows both told apart by their tensors)
PARALLEL_BIASED = {**SMALL, "use_parallel_residual": True, "use_qkv_bias": True}
KINDS = {"sequential": SEQUENTIAL, "parallel": PARALLEL, "parallel-biased": PARALLEL_BIASED}


def stablelm(kind: str) -> Path:
    return build("stablelm", tokenizer="gpt2", config=KINDS[kind], name=f"stablelm-{kind}")


def test_stablelm_sequential_battery(tmp_path: Path) -> None:
    battery(stablelm("sequential"), tmp_path)


def test_stablelm_parallel_qk_norm_battery(tmp_path: Path) -> None:
    """The per-head norms are stacked as llama.cpp stacks them ([heads, head_dim] per layer) and
    come back as one tensor per head."""
    from gguf import GGUFReader

    fig = battery(stablelm("parallel"), tmp_path)
    assert fig.numpy_vs_hf <= 1e-6
    tensors = {t.name: t for t in GGUFReader(tmp_path / "f32.gguf").tensors}
    assert [int(x) for x in tensors["blk.0.attn_q_norm.weight"].shape] == [16, 4]  # gguf order: [head_dim, heads]
    assert [int(x) for x in tensors["blk.0.attn_k_norm.weight"].shape] == [16, 2]
    assert "blk.0.ffn_norm.weight" not in tensors
    from safetensors.numpy import load_file

    src = load_file(str(stablelm("parallel") / "model.safetensors"))
    q_norm = np.array(tensors["blk.1.attn_q_norm.weight"].data)
    for j in range(4):
        assert np.array_equal(q_norm[j], src[f"model.layers.1.self_attn.q_layernorm.norms.{j}.weight"])


def test_gguf_from_llama_cpp_converter_reads_back_into_transformers(tmp_path: Path) -> None:
    """No config of ours in these files: parallel residual, Q/K norms, QKV biases and the rotated
    share of each head come from llama.cpp's tensors and keys."""
    src = stablelm("parallel-biased")
    ref = reference_gguf(src, tmp_path / "ref.gguf", pre="stablelm2")
    back = convert(ref, f"{tmp_path / 'back'}/")
    config = json.loads((back / "config.json").read_text())
    assert config["use_parallel_residual"] is True and config["use_qkv_bias"] is True
    assert config["qk_layernorm"] is False and config["rope_parameters"]["partial_rotary_factor"] == 0.25
    assert rel(hf_logits(back, IDS), hf_logits(src, IDS)) <= 1e-5


def test_tied_model_gets_the_output_tensor_llama_cpp_requires(tmp_path: Path) -> None:
    """llama.cpp's stablelm graph requires output.weight: a tied model is written with the embedding
    under both names, runs, and comes back tied and bit-exact."""
    from lmconv import read_model
    from lmconv.verify import verify_models

    from tests.families.support import llamacpp_logits

    src = build("stablelm", tokenizer="gpt2", config={**SEQUENTIAL, "tie_word_embeddings": True}, name="stablelm-tied")
    want = hf_logits(src, IDS)
    gguf = convert(src, tmp_path / "m.gguf")
    assert rel(llamacpp_logits(gguf, IDS), want) <= 1e-4
    back = convert(gguf, f"{tmp_path / 'back'}/")
    assert json.loads((back / "config.json").read_text())["tie_word_embeddings"] is True
    assert rel(hf_logits(back, IDS), want) == 0.0
    assert verify_models(read_model(src), read_model(back)).ok
