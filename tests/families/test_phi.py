"""The Phi families: phi3 (Phi3ForCausalLM; GGUF arch phi3: fused QKV and gate/up kept fused, LongRoPE
factors as generated tensors) and phi (PhiForCausalLM, Phi-2; GGUF arch phi2: parallel attention and MLP,
partial rotary, biases): the battery, LongRoPE beyond the original context, the factors both ways,
and GGUFs made by llama.cpp's own converter read back into transformers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.families.support import IDS, battery, build, convert, hf_logits, llamacpp_logits, reference_gguf, rel

LONG_FACTOR = [round(1.0 + 0.75 * i, 2) for i in range(8)]
SHORT_FACTOR = [round(1.0 + 0.1 * i, 2) for i in range(8)]
PHI3 = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "initializer_range": 0.1, "pad_token_id": None}
# the battery's model: LongRoPE over 0.75 of each head (as Phi-4-mini), an original context of 256. 16 tokens
# stay within it in transformers and llama.cpp alike (llama.cpp picks by its context, rounded up to 256): the
# short factors run
PHI3_PARTIAL = {**PHI3, "max_position_embeddings": 1024, "original_max_position_embeddings": 256,
                "rope_parameters": {"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.75,
                                    "long_factor": LONG_FACTOR[:6], "short_factor": SHORT_FACTOR[:6]}}
# an original context of 64 run over 256 positions: the long factors, and the attention factor of a 4× context
PHI3_LONG = {**PHI3, "max_position_embeddings": 256, "original_max_position_embeddings": 64,
             "rope_parameters": {"rope_type": "longrope", "rope_theta": 10000.0, "long_factor": LONG_FACTOR,
                                 "short_factor": SHORT_FACTOR}}
# intermediate 4 × hidden: llama.cpp's converter writes feed_forward_length as 4 × n_embd whatever the config says
PHI2 = {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
        "layer_norm_eps": 1e-5, "initializer_range": 0.1, "max_position_embeddings": 1024, "pad_token_id": None}
LONG = [(7 + 37 * i) % 500 for i in range(256)]


# llama.cpp sets token attributes by model name: a general.name containing "phi3" makes it look up "</s>",
# which these 512-token vocabularies lack, so the folders are named otherwise
def phi3_partial() -> Path:
    return build("phi3", tokenizer="gpt2", config=PHI3_PARTIAL, name="p3-longrope-partial")


def phi3_long() -> Path:
    return build("phi3", tokenizer="gpt2", config=PHI3_LONG, name="p3-longrope-64")


def phi2() -> Path:
    return build("phi", tokenizer="gpt2", config=PHI2, name="phi2")


def test_phi3_battery(tmp_path: Path) -> None:
    battery(phi3_partial(), tmp_path)


def test_phi2_battery(tmp_path: Path) -> None:
    # llama.cpp's GELU rounds its input to f16 and looks the result up in an f16 table; transformers' gelu_new
    # computes the tanh form in f32: ~1e-3 per activation, 5e-4 on these logits
    fig = battery(phi2(), tmp_path, llama_tol=5e-4)
    assert fig.numpy_vs_hf <= 1e-6


def test_phi3_longrope_beyond_the_original_context(tmp_path: Path) -> None:
    """256 positions over an original context of 64: transformers runs the long factors (and the
    attention factor of a 4× context); so must llama.cpp and lmconv's forward, and the GGUF read back."""
    from gguf import GGUFReader

    from lmconv import read_model
    from lmconv.verify.logits import forward

    src = phi3_long()
    want = hf_logits(src, LONG)
    gguf = convert(src, tmp_path / "m.gguf")
    assert rel(llamacpp_logits(gguf, LONG), want) <= 1e-4
    assert rel(forward(read_model(src), LONG, dtype=np.float64), want) <= 1e-4
    # the short factors at these positions would be another model: the test can tell them apart
    short = read_model(src)
    short.config = {**short.config, "rope_parameters": {**short.config["rope_parameters"], "long_factor": SHORT_FACTOR}}
    assert rel(forward(short, LONG, dtype=np.float64), want) > 1e-2

    reader = GGUFReader(gguf)
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    assert np.array_equal(tensors["rope_factors_long.weight"], np.float32(LONG_FACTOR))
    assert np.array_equal(tensors["rope_factors_short.weight"], np.float32(SHORT_FACTOR))
    fields = {f.name: f.contents() for f in reader.fields.values()}
    assert fields["phi3.rope.scaling.original_context_length"] == 64
    assert abs(fields["phi3.rope.scaling.attn_factor"] - np.sqrt(1 + np.log(4) / np.log(64))) < 1e-6

    back = convert(gguf, f"{tmp_path / 'back'}/")
    assert rel(hf_logits(back, LONG), want) <= 1e-5


def test_phi3_sliding_window_is_applied_and_warned_about(tmp_path: Path) -> None:
    """transformers masks beyond Phi-3's sliding window, and so does lmconv's forward; llama.cpp runs
    phi3 without one, which the conversion says."""
    import json
    import shutil

    from lmconv import read_model
    from lmconv.registry import get_registry
    from lmconv.verify.logits import forward

    folder = tmp_path / "windowed"
    shutil.copytree(phi3_partial(), folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "sliding_window": 4}))
    want = hf_logits(folder, IDS)
    model = read_model(folder)
    assert rel(forward(model, IDS, dtype=np.float64), want) <= 1e-4
    assert rel(hf_logits(phi3_partial(), IDS), want) > 1e-2  # the window matters here: the check above can fail
    warnings: list[str] = []
    get_registry().architecture_for(model.config).to_target(model, "gguf", warnings.append)
    assert any("sliding_window is 4" in w for w in warnings), warnings


def test_phi3_from_llama_cpp_converter_folds_rope_factors_back(tmp_path: Path) -> None:
    """llama.cpp's converter stores no config of ours: LongRoPE comes back from its factor tensors and
    keys, the rotated dimensions from rope.dimension_count."""
    import json

    src = phi3_long()
    ref = reference_gguf(src, tmp_path / "ref.gguf", pre="gpt-2")
    back = convert(ref, f"{tmp_path / 'back'}/")
    config = json.loads((back / "config.json").read_text())
    rope = config["rope_parameters"]
    assert rope["rope_type"] == "longrope" and rope["long_factor"] == LONG_FACTOR and rope["short_factor"] == SHORT_FACTOR
    assert config["original_max_position_embeddings"] == 64
    assert rel(hf_logits(back, LONG), hf_logits(src, LONG)) <= 1e-5


def test_phi2_from_llama_cpp_converter(tmp_path: Path) -> None:
    src = phi2()
    ref = reference_gguf(src, tmp_path / "ref.gguf", pre="gpt-2")
    back = convert(ref, f"{tmp_path / 'back'}/")
    assert rel(hf_logits(back, IDS), hf_logits(src, IDS)) <= 1e-5
