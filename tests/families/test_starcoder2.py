"""StarCoder2 (Starcoder2ForCausalLM; GGUF arch starcoder2): the battery, the sliding window (which
transformers applies and llama.cpp's graph does not), a broken config refused, and a GGUF made by
llama.cpp's own converter read back into transformers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tests.families.support import IDS, battery, build, convert, hf_logits, llamacpp_logits, reference_gguf, rel

SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "max_position_embeddings": 1024, "norm_epsilon": 1e-5, "initializer_range": 0.1,
         "pad_token_id": None}
# llama.cpp's GELU rounds its input to f16 and looks the result up in an f16 table, where transformers'
# gelu_pytorch_tanh computes the tanh form in f32: ~1e-3 per activation, a few 1e-4 on these logits
GELU_TOL = 5e-4


def starcoder2(window: int | None = None) -> Path:
    config = {**SMALL, "sliding_window": window} if window else SMALL
    return build("starcoder2", tokenizer="gpt2", config=config, name=f"starcoder2-w{window}" if window else None)


def test_starcoder2_battery(tmp_path: Path) -> None:
    fig = battery(starcoder2(), tmp_path, llama_tol=GELU_TOL)
    assert fig.numpy_vs_hf <= 1e-6


def test_sliding_window_in_transformers_and_not_in_llama_cpp(tmp_path: Path) -> None:
    """A window of 4 over 16 tokens: lmconv's forward applies it as transformers does; llama.cpp's
    starcoder2 graph attends to everything (what lmconv's forward computes without the window), and
    the conversion warns about it."""
    from lmconv import read_model
    from lmconv.registry import get_registry
    from lmconv.verify.logits import forward

    src = starcoder2(window=4)
    want = hf_logits(src, IDS)
    model = read_model(src)
    assert rel(forward(model, IDS, dtype=np.float64), want) <= 1e-4
    unwindowed = read_model(src)
    unwindowed.config = {**unwindowed.config, "sliding_window": None}
    full = forward(unwindowed, IDS, dtype=np.float64)
    assert rel(full, want) > 1e-2  # the window matters at these positions: the check above can fail

    warnings: list[str] = []
    get_registry().architecture_for(model.config).to_target(model, "gguf", warnings.append)
    assert any("sliding_window is 4" in w for w in warnings), warnings
    gguf = convert(src, tmp_path / "m.gguf")
    assert rel(llamacpp_logits(gguf, IDS), full) <= GELU_TOL


def test_config_without_biases_is_refused(tmp_path: Path) -> None:
    """llama.cpp's starcoder2 graph requires the biases: a use_bias=false model is one line, exit 3."""
    import json
    import shutil

    from lmconv.cli import main

    folder = tmp_path / "nobias"
    shutil.copytree(starcoder2(), folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "use_bias": False}))
    assert main([str(folder), str(tmp_path / "m.gguf"), "--quiet"]) == 3
    assert not (tmp_path / "m.gguf").exists()


def test_gguf_from_llama_cpp_converter_reads_back_into_transformers(tmp_path: Path) -> None:
    src = starcoder2()
    ref = reference_gguf(src, tmp_path / "ref.gguf", pre="starcoder")
    back = convert(ref, f"{tmp_path / 'back'}/")
    assert rel(hf_logits(back, IDS), hf_logits(src, IDS)) <= 1e-5
