"""The olmo2 family (Olmo2ForCausalLM; GGUF arch olmo2): the battery (build() perturbs every norm,
so a post-norm applied before its sublayer, a Q/K norm applied per head or a swapped pair shows in the
logits), a tied head that llama.cpp's olmo2 still finds as output.weight, and a GGUF from llama.cpp's
own converter read back from its keys."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.families.support import battery, build, convert, hf_logits, llamacpp_logits, reference_gguf, rel

# pad_token_id: Olmo2Config's default (1) names an ordinary token of the fixture's tokenizer, which has no
# pad token; the GGUF tokenizer bridge would then make token 1 a special token on the way back
SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "max_position_embeddings": 1024, "rms_norm_eps": 1e-5, "initializer_range": 0.1,
         "pad_token_id": None}


def test_olmo2_battery(tmp_path: Path) -> None:
    battery(build("olmo2", config=SMALL), tmp_path)


def test_tied_head_is_written_as_output(tmp_path: Path) -> None:
    """llama.cpp's olmo2 requires output.weight (it does not fall back to the embedding): a tied model
    gets the embedding's copy under that name, runs, and comes back tied."""
    import json

    from gguf import GGUFReader

    src = build("olmo2", config={**SMALL, "tie_word_embeddings": True}, name="olmo2-tied")
    gguf = convert(src, tmp_path / "m.gguf")
    tensors = {t.name: np.array(t.data) for t in GGUFReader(gguf).tensors}
    assert np.array_equal(tensors["output.weight"], tensors["token_embd.weight"])
    want = hf_logits(src)
    assert rel(llamacpp_logits(gguf), want) <= 1e-4
    back = convert(gguf, f"{tmp_path / 'back'}/")
    assert json.loads((back / "config.json").read_text())["tie_word_embeddings"] is True
    assert rel(hf_logits(back), want) <= 1e-5


def test_gguf_from_llama_cpp_converter_reads_back_into_transformers(tmp_path: Path) -> None:
    src = build("olmo2", config=SMALL)
    ref = reference_gguf(src, tmp_path / "ref.gguf", pre="llama-bpe")
    back = convert(ref, f"{tmp_path / 'back'}/")
    assert rel(hf_logits(back), hf_logits(src)) <= 1e-5


def test_an_olmo3_gguf_is_refused_not_misread() -> None:
    """llama.cpp's converter writes OLMo 3 under arch olmo2 with a sliding window: read as OLMo 2 it would
    silently compute full attention, so its metadata is refused."""
    from lmconv.errors import InputError
    from lmconv.registry import get_registry

    layout = get_registry().architecture_in("gguf", "olmo2").layout("gguf")
    meta = {"olmo2.embedding_length": 64, "olmo2.block_count": 2, "olmo2.feed_forward_length": 128,
            "olmo2.attention.head_count": 4}
    assert layout.config_from_meta(meta)["architectures"] == ["Olmo2ForCausalLM"]
    with pytest.raises(InputError, match="OLMo 3"):
        layout.config_from_meta({**meta, "olmo2.attention.sliding_window": 4096})
