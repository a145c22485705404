"""The gpt-oss family (GptOssForCausalLM; GGUF arch gpt-oss): the battery (its q8_0 leg checked in
the layout llama.cpp stores the experts in); a GGUF from llama.cpp's own converter, bit for bit the
one lmconv writes, read back into transformers; the experts' de-interleave and transposes; quantised
experts carried GGUF → GGUF untouched; non-default sliding layers; and the configs llama.cpp cannot
express (warned about) or that are broken (refused).

The tiny model: hidden 64, 2 layers (sliding, full; window 4 so that it matters within 16 tokens), 4
query heads of 32 (q width 128 ≠ hidden, as in the real models) over 2 KV heads, 4 experts of 64
(rows divide into 32-blocks for q8_0), top-2, gpt-oss's YaRN. The experts' fused weights are scaled
so that the SwiGLU's clamps at ±7 bite (about 8 % of the gates, 16 % of the ups), and their biases,
which transformers initialises to zero, are random.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.families.support import (
    IDS,
    QUANT_LOGIT_BOUNDS,
    assert_same_layout,
    battery,
    build,
    convert,
    hf_logits,
    llamacpp_logits,
    reference_gguf,
    rel,
)

#: gpt-oss's own rotary settings (GptOssConfig's default)
ROPE = {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
        "original_max_position_embeddings": 4096, "rope_theta": 150000.0}
SMALL = {"hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 32, "num_local_experts": 4, "num_experts_per_tok": 2,
         "sliding_window": 4, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "initializer_range": 0.1}
# The q8_0 leg compares llama.cpp, which also rounds the activations, with transformers. With seed 0,
# layer 1 routes token 9 on a near tie (router logits 0.024 apart at the top-2 boundary) that this
# rounding flips (0.44 relative on that row); seed 11 keeps every boundary 0.11 or more apart.
SEED = 11
PRE = "gpt-4o"  # llama.cpp's pre-tokenizer of gpt-oss's o200k BPE (the fixture's trained BPE is unknown to it)


def _experts(model: object) -> None:
    import torch

    gen = torch.Generator().manual_seed(7)
    for layer in model.model.layers:  # type: ignore[attr-defined]
        ex = layer.mlp.experts
        ex.gate_up_proj.mul_(6.0)
        ex.gate_up_proj_bias.copy_(torch.randn(ex.gate_up_proj_bias.shape, generator=gen) * 0.5)
        ex.down_proj_bias.copy_(torch.randn(ex.down_proj_bias.shape, generator=gen) * 0.5)


def tiny(truncate: bool) -> Path:
    """llama.cpp rounds YaRN's correction range as transformers does with ``truncate: true``: the
    battery's model says so; the other one has gpt-oss's own ``truncate: false``."""
    return build("gpt_oss", config={**SMALL, "rope_parameters": {**ROPE, "truncate": truncate}}, customize=_experts,
                 seed=SEED, name=f"gpt-oss-truncate-{str(truncate).lower()}")


# ------------------------------------------------------------------ the battery
def test_gpt_oss_battery(tmp_path: Path) -> None:
    """The standard battery (f32: llama.cpp, numpy forward, GGUF → HF, bit-exact round trip; f16 and
    q8_0). Its q8_0 verify compares ``gate_up_proj`` (rebuilt from two stored tensors: gate and up
    interleaved back) part by part in the stored layout, where q8_0's blocks ran; the blocks are also
    checked here to be exactly gguf-py's q8_0 of the de-interleaved, transposed weights."""
    from gguf import GGMLQuantizationType, GGUFReader, quants
    from safetensors.numpy import load_file

    from lmconv import read_model
    from lmconv.verify import verify_models

    src = tiny(truncate=True)
    fig = battery(src, tmp_path)
    assert fig.llamacpp_vs_hf <= 1e-5 and fig.numpy_vs_hf <= 1e-5

    q = tmp_path / "q8_0.gguf"
    report = verify_models(read_model(src), read_model(q))
    fused = [t for t in report.tensors if t.name.endswith(".mlp.experts.gate_up_proj")]
    assert len(fused) == 2 and all(t.ok and t.status == "within" and t.layout == "gguf" for t in fused), report.summary()
    stored = {t.name: t for t in GGUFReader(q).tensors}
    weights = load_file(str(src / "model.safetensors"))
    for bid in range(2):
        fused_w = weights[f"model.layers.{bid}.mlp.experts.gate_up_proj"]
        for part, start in (("gate", 0), ("up", 1)):
            t = stored[f"blk.{bid}.ffn_{part}_exps.weight"]
            mine = np.ascontiguousarray(fused_w[:, :, start::2].transpose(0, 2, 1))
            assert t.tensor_type == GGMLQuantizationType.Q8_0
            assert bytes(np.asarray(t.data)) == quants.quantize(mine, GGMLQuantizationType.Q8_0).tobytes()

    # GGUF → GGUF: the quantised experts are de-quantised to be re-interleaved into HF's layout, and
    # written back as the very blocks they were (the rules' derivation), not re-quantised.
    again = convert(q, tmp_path / "again.gguf")
    assert {t.name: bytes(np.asarray(t.data)) for t in GGUFReader(again).tensors} == \
        {n: bytes(np.asarray(t.data)) for n, t in stored.items()}


# ------------------------------------------------------------------ llama.cpp's own converter
@pytest.fixture(scope="module")
def llama_cpp_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return reference_gguf(tiny(truncate=False), tmp_path_factory.mktemp("llama-cpp") / "gpt-oss.gguf", pre=PRE)


def test_gguf_from_llama_cpp_converter(llama_cpp_gguf: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """llama.cpp's GGUF (no config of ours inside) → HF: transformers' logits within 1e-5 of the
    source's, with gpt-oss's ``truncate: false`` and the default sliding layers recovered. Our GGUF of
    the model holds llama.cpp's names, shapes and keys, and the very same tensor data (the experts'
    de-interleave and transposes included)."""
    from gguf import GGUFReader

    from lmconv.cli import main

    src = tiny(truncate=False)
    want = hf_logits(src)
    back = convert(llama_cpp_gguf, f"{tmp_path / 'back'}/")
    assert rel(hf_logits(back), want) <= 1e-5
    config = json.loads((back / "config.json").read_text())
    assert config["rope_parameters"]["truncate"] is False
    assert config["layer_types"] == ["sliding_attention", "full_attention"] and config["sliding_window"] == 4
    assert (config["num_local_experts"], config["num_experts_per_tok"], config["head_dim"]) == (4, 2, 32)

    ours = tmp_path / "ours.gguf"
    assert main([str(src), str(ours)]) == 0
    assert "truncate is false" in capsys.readouterr().err
    assert_same_layout(ours, llama_cpp_gguf)
    theirs = {t.name: np.asarray(t.data) for t in GGUFReader(llama_cpp_gguf).tensors}
    mine = {t.name: np.asarray(t.data) for t in GGUFReader(ours).tensors}
    assert mine.keys() == theirs.keys() and all(np.array_equal(mine[n], theirs[n]) for n in mine)
    # What the warning is about: llama.cpp's rounded YaRN ramp (1e-6 on the battery's truncate-true model).
    assert rel(llamacpp_logits(ours), want) > 1e-4


def test_experts_are_deinterleaved_and_transposed(llama_cpp_gguf: Path) -> None:
    """Expert e of llama.cpp's stacks, against transformers' fused tensors (``x @ W`` layouts, gate in
    the even columns of ``gate_up_proj``, up in the odd ones); the router and the sinks are renamed."""
    from gguf import GGUFReader
    from safetensors.numpy import load_file

    weights = load_file(str(tiny(truncate=False) / "model.safetensors"))
    g = {t.name: np.asarray(t.data) for t in GGUFReader(llama_cpp_gguf).tensors}
    p = "model.layers.1."
    fused, fused_b = weights[p + "mlp.experts.gate_up_proj"], weights[p + "mlp.experts.gate_up_proj_bias"]
    down, down_b = weights[p + "mlp.experts.down_proj"], weights[p + "mlp.experts.down_proj_bias"]
    assert g["blk.1.ffn_gate_exps.weight"].shape == (4, 64, 64) and g["blk.1.ffn_down_exps.weight"].shape == (4, 64, 64)
    for e in range(4):
        assert np.array_equal(g["blk.1.ffn_gate_exps.weight"][e], fused[e][:, 0::2].T)
        assert np.array_equal(g["blk.1.ffn_up_exps.weight"][e], fused[e][:, 1::2].T)
        assert np.array_equal(g["blk.1.ffn_down_exps.weight"][e], down[e].T)
    assert np.array_equal(g["blk.1.ffn_gate_exps.bias"], fused_b[:, 0::2])
    assert np.array_equal(g["blk.1.ffn_up_exps.bias"], fused_b[:, 1::2])
    assert np.array_equal(g["blk.1.ffn_down_exps.bias"], down_b)
    assert np.array_equal(g["blk.1.ffn_gate_inp.bias"], weights[p + "mlp.router.bias"])
    assert np.array_equal(g["blk.1.attn_sinks.weight"], weights[p + "self_attn.sinks"])


def test_mxfp4_experts_as_llama_cpp_ships_gpt_oss(tmp_path: Path) -> None:
    """The released gpt-oss GGUFs keep the experts in GGML's MXFP4 (llama.cpp's converter repacks the
    checkpoint's blocks): such a file (here made from our f32 GGUF by gguf-py's MXFP4 quantiser) reads
    back into an HF folder on which transformers computes what lmconv's forward computes on the file,
    and close to what llama.cpp computes; GGUF → GGUF writes the MXFP4 blocks back untouched."""
    import gguf
    from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter, quants

    from lmconv import read_model
    from lmconv.verify.logits import forward

    f32 = convert(tiny(truncate=True), tmp_path / "f32.gguf")
    reader, mx, mxfp4 = GGUFReader(f32), tmp_path / "mxfp4.gguf", GGMLQuantizationType.MXFP4
    writer = GGUFWriter(mx, "gpt-oss")
    for name, f in reader.fields.items():
        if not name.startswith("GGUF.") and name != "general.architecture":
            kind, array = f.types[0], f.types[0] == gguf.GGUFValueType.ARRAY
            writer.add_key_value(name, f.contents(), kind, sub_type=f.types[-1] if array else None)
    for t in reader.tensors:
        data = np.asarray(t.data)
        if t.name.endswith("_exps.weight"):
            writer.add_tensor(t.name, quants.quantize(data, mxfp4), raw_dtype=mxfp4)
        else:
            writer.add_tensor(t.name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    stored = {t.name: (t.tensor_type.name, bytes(np.asarray(t.data))) for t in GGUFReader(mx).tensors}
    assert stored["blk.0.ffn_gate_exps.weight"][0] == "MXFP4"

    want = hf_logits(convert(mx, f"{tmp_path / 'back'}/"))
    assert rel(forward(read_model(mx), IDS, dtype=np.float64), want) <= 1e-4
    got = llamacpp_logits(mx)  # its MXFP4 products round the activations to 8 bits, as with q8_0
    assert rel(got, want) <= QUANT_LOGIT_BOUNDS["q8_0"] and float(np.mean(got.argmax(-1) == want.argmax(-1))) >= 0.9
    again = convert(mx, tmp_path / "again.gguf")
    assert {t.name: (t.tensor_type.name, bytes(np.asarray(t.data))) for t in GGUFReader(again).tensors} == stored


# ------------------------------------------------------------------ sliding layers, configs
def test_non_default_sliding_layers(tmp_path: Path) -> None:
    """Full attention first, sliding second (not llama.cpp's default pattern): the per-layer pattern is
    written, llama.cpp and lmconv's forward follow it, and the logits differ from the default order's
    (so the window matters)."""
    from gguf import GGUFReader

    from lmconv import read_model
    from lmconv.verify.logits import forward

    src = tiny(truncate=True)
    swapped = shutil.copytree(src, tmp_path / "swapped")
    config = json.loads((swapped / "config.json").read_text())
    (swapped / "config.json").write_text(json.dumps({**config, "layer_types": ["full_attention", "sliding_attention"]}))
    want = hf_logits(swapped)
    assert rel(want, hf_logits(src)) > 1e-2
    gguf = convert(swapped, tmp_path / "m.gguf")
    pattern = GGUFReader(gguf).fields["gpt-oss.attention.sliding_window_pattern"].contents()
    assert pattern == [False, True]
    got = llamacpp_logits(gguf)
    assert rel(got, want) <= 1e-4 and np.array_equal(got.argmax(-1), want.argmax(-1))
    assert rel(forward(read_model(swapped), IDS, dtype=np.float64), want) <= 1e-4


def test_swiglu_constants_follow_the_config_and_are_warned_about(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """lmconv's forward uses the config's swiglu_alpha/limit as transformers does; llama.cpp hard-codes
    1.702 and 7.0, so HF → GGUF warns."""
    from lmconv import read_model
    from lmconv.cli import main
    from lmconv.verify.logits import forward

    src = tiny(truncate=True)
    odd = shutil.copytree(src, tmp_path / "odd")
    config = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**config, "swiglu_alpha": 1.0, "swiglu_limit": 3.0}))
    want = hf_logits(odd)
    assert rel(want, hf_logits(src)) > 1e-2
    assert rel(forward(read_model(odd), IDS, dtype=np.float64), want) <= 1e-4
    assert main([str(odd), str(tmp_path / "odd.gguf")]) == 0
    assert "llama.cpp's gpt-oss graph computes 1.702 and 7.0" in capsys.readouterr().err


@pytest.mark.parametrize(("change", "message"), [
    ({"num_experts_per_tok": 5}, "more than the 4 experts"),
    ({"layer_types": ["sliding_attention"]}, "layer_types must list 2"),
    ({"num_local_experts": 0}, "num_local_experts"),
])
def test_broken_config_is_refused(change: dict[str, object], message: str, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    from lmconv.cli import main

    src, folder = tiny(truncate=True), tmp_path / "m"
    folder.mkdir()
    for f in src.iterdir():
        if f.name != "config.json":
            (folder / f.name).symlink_to(f)
    (folder / "config.json").write_text(json.dumps({**json.loads((src / "config.json").read_text()), **change}))
    assert main([str(folder), str(tmp_path / "m.gguf")]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "config.json" in err[0], err
    assert not (tmp_path / "m.gguf").exists()
