"""The numpy reference forward pass (lmconv.forward) against transformers' own logits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
IDS = [1, 5, 17, 42, 99, 3, 64, 128, 7, 250, 11, 33, 2, 77, 150, 9]


# ----------------------------------------------------------------------------- tiny models
def _train_tokenizer(out: Path) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    text = ["The quick brown fox jumps over the lazy dog.", "Hello world, this is a tiny test of lmconv.",
            "Numbers 12345 and symbols !?%"] * 20
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<s>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(text, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>").save_pretrained(out)
    return len(tok.get_vocab())


def build_tiny(kind: str, out: Path, **overrides: Any) -> Path:
    """A tiny random HF model with a tokenizer (used when the repo fixtures are absent, and for variants)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    vocab = _train_tokenizer(out)
    torch.manual_seed(0)
    if kind == "llama":
        kw = dict(vocab_size=vocab, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5, tie_word_embeddings=False,
                  bos_token_id=0, eos_token_id=1)
        kw.update(overrides)
        model = LlamaForCausalLM(LlamaConfig(**kw))
    else:
        kw = dict(vocab_size=vocab, n_embd=256, n_layer=2, n_head=4, n_positions=128, bos_token_id=0, eos_token_id=1)
        kw.update(overrides)
        model = GPT2LMHeadModel(GPT2Config(**kw))
    with torch.no_grad():  # random norms and biases, so that a mix-up of them shows
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(out)
    return out


def fixture_or_build(kind: str, tmp_root: Path) -> Path:
    path = FIXTURES / f"tiny-{kind}"
    if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
        return path
    return build_tiny(kind, tmp_root / f"tiny-{kind}")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {kind: fixture_or_build(kind, root) for kind in ("llama", "gpt2")}


def transformers_logits(model_dir: Path, ids: list[int], dtype: Any = None) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    dtype = dtype or torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double().numpy()


def rel_max(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def valid_ids(model_dir: Path) -> list[int]:
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    return [i % vocab for i in IDS]


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_matches_transformers(tiny_models: dict[str, Path], kind: str, dtype: Any) -> None:
    from lmconv.verify.logits import forward
    from lmconv.pipeline import read_model

    ids = valid_ids(tiny_models[kind])
    want = transformers_logits(tiny_models[kind], ids)
    got = forward(read_model(tiny_models[kind]), ids, dtype=dtype)
    assert got.shape == want.shape and got.dtype == np.dtype(dtype)
    assert rel_max(got, want) <= 1e-4


@pytest.mark.parametrize("overrides", [
    {"tie_word_embeddings": True, "rope_theta": 500000.0},
    {"num_key_value_heads": 1, "rope_scaling": {"rope_type": "linear", "factor": 2.0}},
    {"attention_bias": True, "mlp_bias": True, "num_key_value_heads": 4},
], ids=["tied-theta", "mqa-linear-rope", "biases-mha"])
def test_llama_variants_match_transformers(tmp_path: Path, overrides: dict[str, Any]) -> None:
    from lmconv.verify.logits import forward
    from lmconv.pipeline import read_model

    path = build_tiny("llama", tmp_path / "m", **overrides)
    ids = valid_ids(path)
    want = transformers_logits(path, ids)
    assert rel_max(forward(read_model(path), ids, dtype=np.float64), want) <= 1e-4


def test_forward_through_gguf_reader_is_identical(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """GGUF's f32 weights come back in HF names and layouts (Q/K un-permuted, Conv1D transposed)."""
    from lmconv.cli import main
    from lmconv.verify.logits import forward
    from lmconv.pipeline import read_model

    for kind, path in tiny_models.items():
        out = tmp_path / f"{kind}.gguf"
        assert main([str(path), str(out), "--quiet"]) == 0
        ids = valid_ids(path)
        a = forward(read_model(path), ids, dtype=np.float64)
        b = forward(read_model(out), ids, dtype=np.float64)
        assert np.array_equal(a, b)


def test_unsupported_architecture_is_a_usage_error() -> None:
    from lmconv.errors import UsageError
    from lmconv.verify.logits import forward
    from lmconv.ir import Model, tensor_from_array

    m = Model(config={"architectures": ["BertModel"]})
    m.add(tensor_from_array("x", np.zeros(4, np.float32)))
    with pytest.raises(UsageError, match="no installed family has a reference forward pass for BertModel"):
        forward(m, [0, 1])
