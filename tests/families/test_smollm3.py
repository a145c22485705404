"""The smollm3 family (SmolLM3ForCausalLM; GGUF arch smollm3): the battery on a four-layer model, so
that its last layer is a NoPE layer (no rotary embeddings) in transformers and llama.cpp alike; a
GGUF from llama.cpp's own converter read back from its keys; and the no-rope patterns llama.cpp
cannot run refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.families.support import IDS, battery, build, convert, hf_logits, reference_gguf, rel

# four layers: llama.cpp's smollm3 (and transformers' default interval of 4) skips rotary on layer 3
SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
         "num_key_value_heads": 2, "max_position_embeddings": 1024, "rms_norm_eps": 1e-5, "initializer_range": 0.1,
         "pad_token_id": None}


def test_smollm3_battery(tmp_path: Path) -> None:
    from lmconv import read_model
    from lmconv.verify.logits import forward

    src = build("smollm3", config=SMALL)
    fig = battery(src, tmp_path)
    # the NoPE layer matters: the same weights with rotary on every layer compute something else, so the
    # battery's agreement (llama.cpp, lmconv's forward) holds only where layer 3 skips rotary as transformers does
    model = read_model(src)
    model.config = {**model.config, "no_rope_layers": [1, 1, 1, 1]}
    assert rel(forward(model, IDS, dtype=np.float64), hf_logits(src)) > 100 * max(fig.llamacpp_vs_hf, fig.numpy_vs_hf)


def test_gguf_from_llama_cpp_converter_reads_back_into_transformers(tmp_path: Path) -> None:
    src = build("smollm3", config=SMALL)
    ref = reference_gguf(src, tmp_path / "ref.gguf", pre="llama-bpe")
    back = convert(ref, f"{tmp_path / 'back'}/")
    config = json.loads((back / "config.json").read_text())
    assert config["no_rope_layers"] == [1, 1, 1, 0] and config["tie_word_embeddings"] is True
    assert rel(hf_logits(back), hf_logits(src)) <= 1e-5


@pytest.mark.parametrize("change, why", [({"no_rope_layer_interval": 2}, "no_rope_layers [1, 0, 1, 0]"),
                                         ({"no_rope_layers": [1, 0, 1, 1]}, "no_rope_layers [1, 0, 1, 1]"),
                                         ({"use_sliding_window": True, "sliding_window": 8}, "sliding-window")])
def test_what_llama_cpp_cannot_run_is_refused(change: dict, why: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from lmconv.cli import main

    src = build("smollm3", config=SMALL)
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in src.iterdir():
        if f.name != "config.json":
            (bad / f.name).symlink_to(f)
    config = json.loads((src / "config.json").read_text())
    config.update(change)
    if "no_rope_layer_interval" in change:
        del config["no_rope_layers"]
    if "sliding_window" in change:
        config["layer_types"] = ["full_attention"] * 3 + ["sliding_attention"]
    (bad / "config.json").write_text(json.dumps(config))
    assert main([str(bad), str(tmp_path / "out.gguf"), "--quiet"]) == 3
    err = capsys.readouterr().err.strip()
    assert why in err and "config.json" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out.gguf").exists()
