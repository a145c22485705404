"""Already-quantised checkpoints in (issue 18): FP8 (fine-grained block scales), compressed-tensors,
GPTQ, AWQ and gpt-oss's MXFP4 decode into float weights equal to the reference dequantisation, stream
into any target, and a broken one is one line, exit 3, nothing written.

Each encoding: a tiny model quantised by the reference implementation that runs on CPU from PyPI
(transformers' FP8 path, compressed-tensors) or packed here from the published format (GPTQ, AWQ,
MXFP4: their quantisers need CUDA; see tests/encodings/makers.py) → ``lmconv … --dtype f32`` → every
tensor equal to the reference dequantisation (transformers, compressed-tensors, llama.cpp's converter),
bit for bit: the arithmetic is exact or one float32 rounding that the references make too.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from tests.conftest import assert_one_line_error, lmconv, run, staging_leftovers
from tests.encodings import makers

ASSETS: dict[str, Path] = {}


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("encodings")


def decoded(folder: Path, out: Path, *extra: str) -> dict[str, np.ndarray]:
    """``lmconv FOLDER OUT/ --dtype f32`` and what it wrote, read with safetensors."""
    run(folder, f"{out}/", "--dtype", "f32", *extra)
    return load_file(str(out / "model.safetensors"))


def assert_equal_tensors(got: dict[str, np.ndarray], want: dict[str, np.ndarray], *, only: set[str] | None = None) -> int:
    names = set(want) if only is None else only
    assert names <= set(got), sorted(names - set(got))
    for name in sorted(names):
        assert got[name].dtype == np.float32, name
        np.testing.assert_array_equal(got[name], want[name].astype(np.float32), err_msg=name)
    return len(names)


def quant_free_config(out: Path) -> dict[str, object]:
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in cfg and "compression_config" not in cfg
    return cfg


# ============================================================================ FP8
@pytest.mark.parametrize("block", [[32, 32], None], ids=["block-32x32", "per-tensor"])
def test_fp8_from_transformers_decodes_bit_exact(work: Path, tiny_llama: Path, block: list[int] | None) -> None:
    """transformers' FP8 quantiser → lmconv → f32: every tensor is what transformers' own ``from_pretrained``
    dequantises (float32(w) · scale_inv, one rounding), no ``weight_scale_inv`` is left, the config no
    longer claims FP8, and ``inspect`` names the encoding."""
    name = f"fp8-{'x'.join(map(str, block)) if block else 'tensor'}"
    src = makers.fp8_transformers(tiny_llama, work / name, block)
    got = decoded(src, work / f"{name}-out")
    want = makers.transformers_state(src)
    assert sorted(got) == sorted(want)
    assert not [n for n in got if "scale" in n]
    assert_equal_tensors(got, want)
    cfg = quant_free_config(work / f"{name}-out")
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    # the quantisation was real: the decoded weights differ from the float ones by FP8's rounding only
    orig = makers.float_tensors(tiny_llama)["model.layers.0.mlp.up_proj.weight"]
    err = np.abs(got["model.layers.0.mlp.up_proj.weight"] - orig).max() / np.abs(orig).max()
    assert 0 < err < 2 ** -3
    proc = lmconv("inspect", src)
    assert proc.returncode == 0, proc.stderr
    what = "32×32 block scales" if block else "per-tensor scale"
    assert f"encoding: fp8 (e4m3, {what}): 14 tensors decoded" in proc.stdout


def test_fp8_experts_e8m0_and_fp4_match_transformers(work: Path, tiny_llama: Path) -> None:
    """Stacked experts ``[E, rows, cols]`` with ``[E, …]`` scales, uint8 E8M0 scales (``scale_fmt: ue8m0``)
    and FP4 pairs in int8 with 1×32 scales beside 32×32 FP8 blocks: each weight is what transformers'
    ``Fp8Dequantize`` makes of it, and each decodes by rows (a row-wise map of its stored record)."""
    import ml_dtypes
    import torch
    from lmconv import read_model
    from transformers.integrations.finegrained_fp8 import Fp8Dequantize

    rng = np.random.default_rng(5)
    fp8 = (rng.standard_normal((4, 64, 96)) * 100).astype(np.float32).astype(ml_dtypes.float8_e4m3fn)
    stored = {
        "model.experts.w": fp8, "model.experts.w_scale_inv": rng.random((4, 2, 3), np.float32),
        "model.experts.u": fp8, "model.experts.u_scale_inv": rng.integers(100, 140, (4, 2, 3), dtype=np.uint8),
        "model.experts.f": rng.integers(-128, 128, (4, 64, 48), dtype=np.int8),
        "model.experts.f_scale_inv": rng.integers(110, 130, (4, 64, 3), dtype=np.uint8),
    }
    folder = work / "fp8-experts"
    makers._write(folder, tiny_llama, {**makers.float_tensors(tiny_llama), **stored},
                  {"quant_method": "fp8", "weight_block_size": [32, 32], "scale_fmt": "ue8m0"})
    model = read_model(folder)
    row_wise = model.tensors["model.experts.f"].row_source()
    assert row_wise is not None and row_wise[1].dtype.name == "u8"  # decoded row by row from its packed record
    got = decoded(folder, work / "fp8-experts-out")
    deq = Fp8Dequantize(None)
    for name in ("model.experts.w", "model.experts.u", "model.experts.f"):
        w = torch.from_numpy(stored[name].view(np.uint8)).view(torch.float8_e4m3fn) if name != "model.experts.f" \
            else torch.from_numpy(stored[name])
        want = deq._dequantize_one(w, torch.from_numpy(stored[name + "_scale_inv"]), output_dtype=torch.float32)
        assert got[name].shape == tuple(want.shape) == (4, 64, 96)
        np.testing.assert_array_equal(got[name], want.numpy(), err_msg=name)


def test_fp8_ceil_grid_and_gptq_match_llama_cpp(work: Path, llamacpp_refs: dict[str, object]) -> None:
    """References from llama.cpp's converter (``dequant_model``): FP8 with 48×48 block scales that do not
    divide the weights (the last blocks short, as DeepSeek's layout allows), and GPTQ at 2, 4 and 8 bits
    with act-order, in the v1 and v2 checkpoint formats."""
    fp8, ref = llamacpp_refs["fp8"]  # type: ignore[misc]
    got = decoded(fp8, work / "fp8-ceil-out")
    assert got["model.layers.0.mlp.gate_proj.weight"].shape == (128, 64)
    assert assert_equal_tensors(got, ref) == len(ref) == 21
    for folder, expected, ref in llamacpp_refs["gptq"]:  # type: ignore[attr-defined]
        got = decoded(folder, work / f"{folder.name}-out")
        assert sorted(got) == sorted(ref), folder.name
        assert assert_equal_tensors(got, ref) == len(ref) == 21
        # and both are the weight the format defines (float64 product, exact in float32)
        assert_equal_tensors(got, expected)


@pytest.mark.parametrize("bits,act_order", [(3, True), (4, False)])
def test_gptq_bit_streams(work: Path, tiny_llama: Path, bits: int, act_order: bool) -> None:
    """3-bit GPTQ packs values across word boundaries (llama.cpp's converter refuses it), and a checkpoint
    without act-order may omit ``g_idx``: both decode to the weight the format defines."""
    folder, expected = makers.gptq_model(tiny_llama, work / f"gptq{bits}", bits, 32, act_order=act_order, seed=bits)
    if not act_order:
        tensors = load_file(str(folder / "model.safetensors"))
        save_file({k: v for k, v in tensors.items() if not k.endswith(".g_idx")}, str(folder / "model.safetensors"))
    got = decoded(folder, work / f"gptq{bits}-out")
    assert assert_equal_tensors(got, expected) == 14
    assert not [n for n in got if n.endswith((".qweight", ".qzeros", ".scales", ".g_idx"))]
    quant_free_config(work / f"gptq{bits}-out")


# ============================================================================ FP8 → GGUF q8_0
def test_fp8_block_llama_to_q8_0_runs_in_llama_cpp(work: Path, tiny_llama: Path) -> None:
    """FP8 block-scaled llama → GGUF q8_0 in one step: llama.cpp (f32 KV cache) on it is within the q8_0
    bound of transformers on the dequantised FP8 model, and the re-quantising warning is given."""
    from tests.families.support import (
        IDS,
        QUANT_LOGIT_BOUNDS,
        hf_logits,
        llamacpp_logits,
        rel,
    )

    src = makers.fp8_transformers(tiny_llama, work / "fp8-gguf", [32, 32])
    out = work / "fp8-q8_0.gguf"
    proc = lmconv(src, out, "--quant", "q8_0")
    assert proc.returncode == 0, proc.stderr
    assert "re-quantising 14 weights decoded from fp8 (e4m3, 32×32 block scales) → q8_0" in proc.stderr
    ids = [i % 512 for i in IDS]
    got, want = llamacpp_logits(out, ids), hf_logits(src, ids)
    err = rel(got, want)
    assert err <= QUANT_LOGIT_BOUNDS["q8_0"], f"llama.cpp on the q8_0 GGUF vs transformers on FP8: {err:.2e}"
    assert float(np.mean(got.argmax(-1) == want.argmax(-1))) >= 0.9
    from gguf import GGUFReader

    types = {t.name: t.tensor_type.name for t in GGUFReader(out).tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and not [n for n in types if "scale" in n]
    from lmconv import read_model
    from lmconv.verify import verify_models

    report = verify_models(read_model(src), read_model(out))  # each weight within q8_0's bound of the decoded FP8
    assert report.ok, report.summary()
    assert {s for t in report.tensors for s in t.steps} == {"quant:q8_0"}


# ============================================================================ compressed-tensors
CT_PRESETS = {  # preset → (block_structure, what inspect says)
    "W4A16": (None, "pack-quantized int4, groups of 32"),
    "W4A16_ASYM": (None, "pack-quantized int4 asymmetric, groups of 32"),
    "W3A16": (None, "pack-quantized int3, groups of 32"),
    "W8A16": (None, "pack-quantized int8, groups of 32"),
    "FP8": (None, "float-quantized fp8 e4m3, per-tensor"),
    "FP8_DYNAMIC": (None, "float-quantized fp8 e4m3, per-channel"),
    "FP8_BLOCK": ([32, 32], "float-quantized fp8 e4m3, 32×32 blocks"),
    "INT8": (None, "int-quantized int8, per-channel"),
    "MXFP4A16": (None, "mxfp4-pack-quantized mxfp4, groups of 32"),
}


def test_compressed_tensors_decode_bit_exact(work: Path, tiny_llama: Path) -> None:
    """compressed-tensors' own quantisation of each preset → lmconv → f32: every weight is what
    compressed-tensors' dequantiser gives; activation scales are dropped, nothing else is lost."""
    for preset, (block, detail) in CT_PRESETS.items():
        folder = makers.compressed_tensors(tiny_llama, work / f"ct-{preset}", preset, block=block)
        want = makers.compressed_tensors_reference(folder)
        got = decoded(folder, work / f"ct-{preset}-out")
        assert sorted(got) == sorted(k for k in want if not k.endswith(".input_scale")), preset
        assert assert_equal_tensors(got, want, only=set(got)) == 21, preset
        quant_free_config(work / f"ct-{preset}-out")
        from lmconv import read_model
        from lmconv.encodings import describe_encodings

        assert describe_encodings(read_model(folder)) == [f"compressed-tensors ({detail}): 14 tensors decoded"], preset


def test_compressed_tensors_group_index(work: Path, tiny_llama: Path) -> None:
    """Older compressed-tensors act-order checkpoints carry ``weight_g_idx``: column ``c`` takes the scale
    of group ``g_idx[c]`` (checked against that formula on a W4A16 checkpoint given a shuffled index)."""
    folder = makers.compressed_tensors(tiny_llama, work / "ct-gidx", "W4A16")
    tensors = load_file(str(folder / "model.safetensors"))
    rng = np.random.default_rng(3)
    expected = {}
    from lmconv.plugins.encodings.common import unpack_bits

    for name in [k for k in tensors if k.endswith(".weight_packed")]:
        mod = name[: -len(".weight_packed")]
        rows, cols = (int(v) for v in tensors[f"{mod}.weight_shape"])
        assert tensors[name].shape[0] == rows
        g_idx = rng.permutation(np.arange(cols) // 32).astype(np.int32)
        tensors[f"{mod}.weight_g_idx"] = g_idx
        q = unpack_bits(tensors[name], 4, cols).astype(np.float64) - 8
        expected[f"{mod}.weight"] = q * tensors[f"{mod}.weight_scale"].astype(np.float64)[:, g_idx]
    save_file(tensors, str(folder / "model.safetensors"))
    got = decoded(folder, work / "ct-gidx-out")
    assert assert_equal_tensors(got, expected) == 14


# ============================================================================ AWQ
def test_awq_gemm_matches_compressed_tensors_converter(work: Path, tiny_llama: Path) -> None:
    """AutoAWQ's GEMM packing (nibble order 0 2 4 6 1 3 5 7, zero points) → lmconv → f32 is the exact
    ``(q - z) · scale``; compressed-tensors' AutoAWQ converter and dequantiser, which compute in the
    scales' float16, give the same numbers rounded to float16."""
    folder, expected = makers.awq_model(tiny_llama, work / "awq", 32)
    got = decoded(folder, work / "awq-out")
    assert assert_equal_tensors(got, expected) == 14
    ref = makers.awq_reference(folder, 32)
    for name in expected:
        np.testing.assert_array_equal(got[name].astype(np.float16), ref[name].astype(np.float16), err_msg=name)
    assert sorted(got) == sorted(ref)
    quant_free_config(work / "awq-out")


# ============================================================================ MXFP4 (gpt-oss)
GPT_OSS = {"hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "head_dim": 32, "num_local_experts": 4, "num_experts_per_tok": 2,
           "sliding_window": 4, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "initializer_range": 0.1,
           "rope_parameters": {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                               "truncate": True, "original_max_position_embeddings": 4096, "rope_theta": 150000.0}}


def _gpt_oss_experts(model: object) -> None:
    import torch

    gen = torch.Generator().manual_seed(7)
    for layer in model.model.layers:  # type: ignore[attr-defined]
        ex = layer.mlp.experts
        ex.gate_up_proj.mul_(6.0)  # so that the SwiGLU's clamps bite
        ex.gate_up_proj_bias.copy_(torch.randn(ex.gate_up_proj_bias.shape, generator=gen) * 0.5)
        ex.down_proj_bias.copy_(torch.randn(ex.down_proj_bias.shape, generator=gen) * 0.5)


@pytest.fixture(scope="module")
def mxfp4_gpt_oss(work: Path) -> Path:
    from tests.families.support import build

    src = build("gpt_oss", config=GPT_OSS, customize=_gpt_oss_experts, seed=11, name="gpt-oss-truncate-true")
    return makers.mxfp4_gpt_oss(src, work / "gpt-oss-mxfp4")


@pytest.fixture(scope="module")
def llamacpp_refs(work: Path, tiny_llama: Path, mxfp4_gpt_oss: Path) -> dict[str, object]:
    """Everything llama.cpp's converter is the reference of, made in one process (it imports torch and
    transformers): its dequantisation of an FP8 checkpoint and four GPTQ ones, and its GGUF of the MXFP4
    gpt-oss (its BPE check knows only published tokenizers: the pre-tokenizer is named, gpt-oss's)."""
    fp8 = makers.fp8_ceil_grid(tiny_llama, work / "fp8-ceil", (48, 48))
    gptq = [makers.gptq_model(tiny_llama, work / f"gptq-{b}-{a}-{v}", b, 32, act_order=a, sym=s, v2=v, seed=b)
            for b, a, s, v in ((4, True, True, False), (2, True, False, False), (8, False, True, False),
                               (4, True, False, True))]
    gguf = work / "mxfp4-llamacpp.gguf"
    refs = makers.llamacpp([fp8] + [g for g, _ in gptq], [(mxfp4_gpt_oss, gguf, "gpt-4o")])
    return {"fp8": (fp8, refs[0]), "gptq": [(g, e, r) for (g, e), r in zip(gptq, refs[1:])], "mxfp4_gguf": gguf}


def test_mxfp4_decodes_as_transformers_does(work: Path, mxfp4_gpt_oss: Path) -> None:
    """gpt-oss's MXFP4 experts → f32: transformers' ``convert_moe_packed_tensors`` of the same blocks, bit
    for bit, and the whole model as transformers loads it; the blocks, scales and config claim are gone."""
    got = decoded(mxfp4_gpt_oss, work / "mxfp4-out")
    stored = load_file(str(mxfp4_gpt_oss / "model.safetensors"))
    experts = [k[: -len("_blocks")] for k in stored if k.endswith("_blocks")]
    assert len(experts) == 4
    for name in experts:
        np.testing.assert_array_equal(got[name], makers.mxfp4_transformers(stored[name + "_blocks"], stored[name + "_scales"]),
                                      err_msg=name)
    want = makers.transformers_state(mxfp4_gpt_oss)
    assert sorted(got) == sorted(want)
    assert_equal_tensors(got, want)
    quant_free_config(work / "mxfp4-out")


def test_mxfp4_to_gguf_keeps_llama_cpp_blocks(work: Path, mxfp4_gpt_oss: Path, llamacpp_refs: dict[str, object]) -> None:
    """MXFP4 → GGUF: the experts stay MXFP4, byte for byte the blocks llama.cpp's own converter writes
    (its gpt-oss repacking), every other tensor equal too; llama.cpp runs the file, within the q8_0
    bound of transformers (its MXFP4 kernels quantise the activations to 8 bits, as q8_0's do)."""
    from gguf import GGUFReader

    from tests.families.support import (
        IDS,
        QUANT_LOGIT_BOUNDS,
        hf_logits,
        llamacpp_logits,
        rel,
    )

    ours = work / "mxfp4.gguf"
    run(mxfp4_gpt_oss, ours)
    ref = llamacpp_refs["mxfp4_gguf"]
    a = {t.name: t for t in GGUFReader(ours).tensors}
    b = {t.name: t for t in GGUFReader(ref).tensors}
    assert sorted(a) == sorted(b)
    exps = [n for n in b if n.endswith("_exps.weight")]
    assert len(exps) == 6
    for name in sorted(b):
        assert a[name].tensor_type == b[name].tensor_type, name
        assert np.asarray(a[name].data).tobytes() == np.asarray(b[name].data).tobytes(), name
    assert {b[n].tensor_type.name for n in exps} == {"MXFP4"}
    from lmconv import read_model
    from lmconv.verify import verify_models

    report = verify_models(read_model(mxfp4_gpt_oss), read_model(ours))  # read back: the same numbers
    assert report.ok and all(t.status == "exact" for t in report.tensors), report.summary()
    ids = [i % 512 for i in IDS]
    got, want = llamacpp_logits(ours, ids), hf_logits(mxfp4_gpt_oss, ids)
    err = rel(got, want)
    assert err <= QUANT_LOGIT_BOUNDS["q8_0"], f"llama.cpp on the MXFP4 GGUF vs transformers: {err:.2e}"
    assert float(np.mean(got.argmax(-1) == want.argmax(-1))) >= 0.9


# ============================================================================ bad input
def _edit(src: Path, dst: Path, *, tensors=None, config=None) -> Path:  # type: ignore[no-untyped-def]
    """A copy of ``src`` with ``tensors(dict of numpy arrays)`` and ``config(dict)`` applied in place
    (tensors go through torch: numpy's safetensors cannot read FP8)."""
    import torch
    from safetensors.torch import load_file as torch_load
    from safetensors.torch import save_file as torch_save

    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    if tensors is not None:
        t = torch_load(str(dst / "model.safetensors"))
        tensors(t)
        torch_save({k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in t.items()},
                   str(dst / "model.safetensors"))
    if config is not None:
        c = json.loads((dst / "config.json").read_text())
        config(c)
        (dst / "config.json").write_text(json.dumps(c))
    return dst


def _set(d: dict, key: str, value: object) -> None:  # type: ignore[type-arg]
    d[key] = value


def _nan_scale(t: dict) -> None:  # type: ignore[type-arg]
    s = t["model.layers.1.mlp.down_proj.weight_scale_inv"].clone()
    s[0, 0] = float("nan")
    t["model.layers.1.mlp.down_proj.weight_scale_inv"] = s


BAD = {  # case → (base, tensor edit, config edit, words the one line must hold)
    "fp8-scale-shape": ("fp8", lambda t: _set(t, "model.layers.0.self_attn.q_proj.weight_scale_inv", np.ones((2, 3), np.float32)),
                        None, ["q_proj.weight_scale_inv", "shape [2, 3]", "expected [2, 2]"]),
    "fp8-nan-scale": ("fp8", _nan_scale, None, ["down_proj.weight_scale_inv", "NaN"]),
    "fp8-missing-scale": ("fp8", lambda t: t.pop("model.layers.0.mlp.up_proj.weight_scale_inv"), None,
                          ["up_proj.weight", "scale tensor", "missing"]),
    "fp8-bad-block-size": ("fp8", None, lambda c: c["quantization_config"].update(weight_block_size=[32]),
                           ["quantization_config", "weight_block_size"]),
    "gptq-missing-qzeros": ("gptq", lambda t: t.pop("model.layers.1.self_attn.k_proj.qzeros"), None,
                            ["k_proj.qweight", "k_proj.qzeros"]),
    "gptq-bits": ("gptq", None, lambda c: c["quantization_config"].update(bits=5), ["bits 5", "gptq"]),
    "gptq-g-idx-shape": ("gptq", lambda t: _set(t, "model.layers.0.mlp.down_proj.g_idx", np.zeros(64, np.int32)), None,
                         ["down_proj.g_idx", "expected [128]"]),
    "gptq-g-idx-range": ("gptq", lambda t: _set(t, "model.layers.0.mlp.down_proj.g_idx", np.full(128, 9, np.int32)), None,
                         ["down_proj.g_idx", "group numbers"]),
    "gptq-marlin": ("gptq", None, lambda c: c["quantization_config"].update(checkpoint_format="marlin"), ["marlin"]),
    "awq-scales-shape": ("awq", lambda t: _set(t, "model.layers.0.mlp.gate_proj.scales", np.ones((2, 64), np.float16)),
                         None, ["gate_proj.scales", "expected [2, 128]"]),
    "awq-gemv": ("awq", None, lambda c: c["quantization_config"].update(version="gemv"), ["gemv"]),
    "ct-missing-scale": ("ct", lambda t: t.pop("model.layers.0.mlp.up_proj.weight_scale"), None,
                         ["up_proj.weight_packed", "weight_scale"]),
    "ct-nvfp4": ("ct", None, lambda c: c["quantization_config"]["config_groups"]["group_0"].update(format="nvfp4-pack-quantized"),
                 ["nvfp4-pack-quantized", "not supported"]),
    "ct-sparsity": ("ct", None, lambda c: c["quantization_config"].update(sparsity_config={"format": "sparse-24-bitmask"}),
                    ["sparsity_config"]),
    "unknown-method": ("fp8", None, lambda c: c["quantization_config"].update(quant_method="bitsandbytes"),
                       ["quant_method 'bitsandbytes' is not supported"]),
    "no-config": ("gptq", None, lambda c: c.pop("quantization_config"), ["qweight", "no quantization_config"]),
    "mxfp4-scales-shape": ("mxfp4", lambda t: _set(t, "model.layers.1.mlp.experts.down_proj_scales", np.full((4, 64, 1), 127, np.uint8)),
                           None, ["down_proj_scales", "expected u8[4, 64, 2]"]),
    "mxfp4-nan-scale": ("mxfp4", lambda t: _set(t, "model.layers.0.mlp.experts.gate_up_proj_scales",
                                                np.full((4, 128, 2), 0xFF, np.uint8)), None, ["gate_up_proj_scales", "NaN"]),
    "mxfp4-missing-scales": ("mxfp4", lambda t: t.pop("model.layers.0.mlp.experts.down_proj_scales"), None,
                             ["down_proj_blocks", "down_proj_scales"]),
}


@pytest.fixture(scope="module")
def bad_bases(work: Path, tiny_llama: Path, mxfp4_gpt_oss: Path) -> dict[str, Path]:
    return {
        "fp8": makers.fp8_transformers(tiny_llama, work / "bad-fp8", [32, 32]),
        "gptq": makers.gptq_model(tiny_llama, work / "bad-gptq", 4, 32, act_order=True)[0],
        "awq": makers.awq_model(tiny_llama, work / "bad-awq", 32)[0],
        "ct": makers.compressed_tensors(tiny_llama, work / "bad-ct", "W4A16"),
        "mxfp4": mxfp4_gpt_oss,
    }


def test_bad_encodings_are_one_line_and_write_nothing(work: Path, bad_bases: dict[str, Path],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Each broken checkpoint: exit 3, one line naming the file and the tensor (or the config), no
    traceback, and the existing target untouched (``--force`` was given), nothing left beside it."""
    from lmconv.cli import main

    for case, (base, tensors, config, words) in BAD.items():
        src = _edit(bad_bases[base], work / f"bad-{case}", tensors=tensors, config=config)
        out_dir = work / f"bad-{case}-target"
        out_dir.mkdir()
        dst = out_dir / "out.safetensors"
        dst.write_bytes(b"the old file")
        capsys.readouterr()
        code = main([str(src), str(dst), "--dtype", "f32", "--force", "--no-companions"])
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert code == 3, (case, err)
        assert len(lines) == 1 and lines[0].startswith("lmconv: error: ") and "Traceback" not in err, (case, err)
        assert str(src) in lines[0], (case, lines[0])
        for w in words:
            assert w in lines[0], (case, w, lines[0])
        assert dst.read_bytes() == b"the old file", case
        assert sorted(p.name for p in out_dir.iterdir()) == ["out.safetensors"] and not staging_leftovers(out_dir), case


def test_bad_encoding_through_the_real_cli(work: Path, bad_bases: dict[str, Path]) -> None:
    """The same contract from a subprocess (the real exit code and streams), for convert and inspect."""
    src = _edit(bad_bases["fp8"], work / "bad-cli", tensors=BAD["fp8-scale-shape"][1])
    proc = lmconv(src, work / "bad-cli.gguf", "--quant", "q8_0")
    assert_one_line_error(proc, 3, "q_proj.weight_scale_inv", "shape")
    assert not (work / "bad-cli.gguf").exists()
    assert_one_line_error(lmconv("inspect", src), 3, "q_proj.weight_scale_inv")


def test_fp8_dtype_claim_is_rewritten(work: Path, tiny_llama: Path) -> None:
    """A config whose ``torch_dtype`` claims the stored FP8 type says what the other weights are after decoding."""
    src = _edit(makers.fp8_transformers(tiny_llama, work / "fp8-claim-base", [32, 32]), work / "fp8-claim",
                config=lambda c: c.update(torch_dtype="float8_e4m3fn", dtype="float8_e4m3fn"))
    run(src, f"{work / 'fp8-claim-out'}/")
    cfg = quant_free_config(work / "fp8-claim-out")
    assert cfg["torch_dtype"] == cfg["dtype"] == "float32"
