"""The mamba family (MambaForCausalLM; GGUF arch mamba), the recurrent LM llama.cpp runs: the battery
(llama.cpp's f32 scan lands ~2e-7 from transformers, so the standard 1e-4 holds), the recurrence
over 256 tokens, A_log's declared bound through GGUF and back, the convolution's reshape, a GGUF from
llama.cpp's own converter read back, and the configs llama.cpp cannot run refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.families.support import battery, build, convert, hf_logits, llamacpp_logits, reference_gguf, rel

# pad_token_id: MambaConfig's default (0) names an ordinary token of the fixture's tokenizer, which has
# no pad token; the GGUF tokenizer bridge would then make token 0 a special token on the way back
SMALL = {"hidden_size": 64, "num_hidden_layers": 2, "state_size": 16, "layer_norm_epsilon": 1e-5, "pad_token_id": None}
LONG = [(7 + 37 * i) % 512 for i in range(256)]
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


def tiny() -> Path:
    return build("mamba", tokenizer="gpt2", config=SMALL)


def trained_a_log(model) -> None:  # type: ignore[no-untyped-def]
    """A_log away from its initial log(1..16), whose round trip through -exp happens to be exact."""
    import torch

    gen = torch.Generator().manual_seed(7)
    for layer in model.backbone.layers:
        a = layer.mixer.A_log
        a.copy_(a + torch.randn(a.shape, generator=gen) * 0.5)


def test_mamba_battery(tmp_path: Path) -> None:
    battery(tiny(), tmp_path)
    assert_same_tokens(tmp_path / "f32.gguf", tiny())  # the battery's GGUF: GPT-2 / GPT-NeoX byte-level BPE


def test_the_recurrence_holds_over_256_tokens(tmp_path: Path) -> None:
    """llama.cpp's scan and lmconv's numpy recurrence against transformers' over a long sequence."""
    from lmconv import read_model
    from lmconv.verify.logits import forward

    src = tiny()
    want = hf_logits(src, LONG)
    assert rel(llamacpp_logits(convert(src, tmp_path / "m.gguf"), LONG), want) <= 1e-4
    assert rel(forward(read_model(src), LONG, dtype=np.float64), want) <= 1e-4


def test_a_log_keeps_its_declared_bound_and_the_convolution_its_shape(tmp_path: Path) -> None:
    """GGUF stores A = -exp(A_log): HF → GGUF → HF brings A_log back within 2^-23 (the rule's declared
    bound, which verify applies), and GGUF → HF → GGUF gives back the stored A bit for bit."""
    from gguf import GGUFReader

    from lmconv import read_model
    from lmconv.plugins.families.mamba import A_BOUND
    from lmconv.verify import bound_for, verify_models

    src = build("mamba", tokenizer="gpt2", config=SMALL, customize=trained_a_log, name="mamba-trained-a")
    gguf = convert(src, tmp_path / "m.gguf")
    stored = {t.name: np.array(t.data) for t in GGUFReader(gguf).tensors}
    model = read_model(src)
    a_log = model.tensors["backbone.layers.0.mixer.A_log"].load()
    assert np.array_equal(stored["blk.0.ssm_a"], (-np.exp(a_log.astype(np.float64))).astype(np.float32))
    conv = model.tensors["backbone.layers.0.mixer.conv1d.weight"].load()
    assert conv.shape == (128, 1, 4) and np.array_equal(stored["blk.0.ssm_conv1d.weight"], conv[:, 0, :])

    assert bound_for(A_BOUND.step) is A_BOUND
    report = verify_models(model, read_model(gguf))
    assert report.ok, report.summary()
    checked = {t.name: t for t in report.tensors}["backbone.layers.0.mixer.A_log"]
    assert checked.steps == [A_BOUND.step] and checked.status in ("exact", "within")

    back = convert(gguf, f"{tmp_path / 'back'}/")
    again = read_model(back).tensors["backbone.layers.0.mixer.A_log"].load()
    diff = np.abs(again.astype(np.float64) - a_log)
    assert diff.max() <= A_BOUND.abs and diff.max() > 0  # lossy indeed, and within the bound
    assert rel(hf_logits(back), hf_logits(src)) <= 1e-5

    regguf = convert(back, tmp_path / "again.gguf")  # a new read of the folder: the rule runs again
    restored = {t.name: np.array(t.data) for t in GGUFReader(regguf).tensors}
    assert np.array_equal(restored["blk.0.ssm_a"], stored["blk.0.ssm_a"])  # -exp(log(-A)) is A here
    kept = convert(gguf, tmp_path / "kept.gguf")  # GGUF → GGUF through the IR keeps the stored tensors
    assert all(np.array_equal(np.array(t.data), stored[t.name]) for t in GGUFReader(kept).tensors)


def test_gguf_from_llama_cpp_converter_reads_back_into_transformers(tmp_path: Path) -> None:
    """llama.cpp's converter writes mamba.feed_forward_length = 0 and mamba.attention.head_count = 0
    ("unused, but seemingly required"); lmconv's GGUF reader takes counts of 0 for a broken file, so the
    two keys (which llama.cpp does not read for mamba) are removed with gguf-py's own tool first."""
    src = tiny()
    ref = reference_gguf(src, tmp_path / "ref.gguf", pre="gpt-2")
    clean = tmp_path / "ref-clean.gguf"
    subprocess.run([sys.executable, "-m", "gguf.scripts.gguf_new_metadata", str(ref), str(clean), "--force",
                    "--remove-metadata", "mamba.feed_forward_length", "--remove-metadata", "mamba.attention.head_count"],
                   check=True, capture_output=True)
    back = convert(clean, f"{tmp_path / 'back'}/")
    config = json.loads((back / "config.json").read_text())
    assert (config["intermediate_size"], config["time_step_rank"], config["tie_word_embeddings"]) == (128, 4, True)
    assert rel(hf_logits(back), hf_logits(src)) <= 1e-5


@pytest.mark.parametrize("change, why", [({"expand": 3, "intermediate_size": 192}, "expansion factor of 2"),
                                         ({"use_bias": True}, "use_bias"),
                                         ({"time_step_rank": "many"}, "time_step_rank")])
def test_what_llama_cpp_cannot_run_is_refused(change: dict, why: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from lmconv.cli import main

    src = tiny()
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in src.iterdir():
        if f.name != "config.json":
            (bad / f.name).symlink_to(f)
    (bad / "config.json").write_text(json.dumps({**json.loads((src / "config.json").read_text()), **change}))
    assert main([str(bad), str(tmp_path / "out.gguf"), "--quiet"]) == 3
    err = capsys.readouterr().err.strip()
    assert why in err and "config.json" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out.gguf").exists()


def test_a_falcon_mamba_gguf_is_refused_not_misread() -> None:
    """llama.cpp's converter writes FalconMamba under arch mamba, with RMS norms on dt, B and C
    (ssm.dt_b_c_rms): MambaForCausalLM would compute without them, so that metadata is refused."""
    from lmconv.errors import InputError
    from lmconv.registry import get_registry

    layout = get_registry().architecture_in("gguf", "mamba").layout("gguf")
    meta = {"mamba.embedding_length": 64, "mamba.block_count": 2, "mamba.ssm.inner_size": 128,
            "mamba.ssm.time_step_rank": 4, "mamba.ssm.dt_b_c_rms": False}
    config = layout.config_from_meta(meta)
    assert (config["intermediate_size"], config["expand"], config["time_step_rank"]) == (128, 2, 4)
    with pytest.raises(InputError, match="FalconMamba"):
        layout.config_from_meta({**meta, "mamba.ssm.dt_b_c_rms": True})
