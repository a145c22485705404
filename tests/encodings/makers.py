"""Already-quantised checkpoints made from a float HF folder, and the reference dequantisations.

Where a reference implementation quantises on CPU from PyPI, it makes the checkpoint: transformers'
FP8 path (``Fp8Quantize``, the inverse of what ``from_pretrained`` dequantises) and compressed-tensors
(``apply_quantization_config`` + ``ModelCompressor``; the scales from ``calculate_qparams`` of each
group's min/max, which is what llm-compressor's min-max observer gives). GPTQModel/AutoGPTQ and AutoAWQ
need CUDA, so GPTQ, AWQ and gpt-oss's MXFP4 are packed here from their published formats (the packers'
docstrings cite them), and decoded by an independent reference: llama.cpp's converter
(``conversion/base.py`` ``dequant_model``, from the llama-cpp-python sdist), compressed-tensors'
AutoAWQ converter and transformers' ``convert_moe_packed_tensors``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np

QUIET_LOGS = {"TRANSFORMERS_VERBOSITY": "error"}


def _config(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "config.json").read_text())


def _write(folder: Path, src: Path, tensors: dict[str, Any], quantization_config: dict[str, Any] | None,
           **config: Any) -> Path:
    """``src``'s companions, ``tensors`` as model.safetensors and the config with ``quantization_config``."""
    from safetensors.numpy import save_file

    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(src, folder, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    cfg = {**_config(src), **config}
    if quantization_config is not None:
        cfg["quantization_config"] = quantization_config
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    return folder


def float_tensors(src: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(src / "model.safetensors"))


def is_linear(name: str, w: np.ndarray) -> bool:
    """The decoder's linear weights (not the embedding, the output head or norms)."""
    return name.endswith(".weight") and w.ndim == 2 and ".layers." in name


# ============================================================================ FP8 (transformers)
def fp8_transformers(src: Path, out: Path, block: list[int] | None) -> Path:
    """transformers' FP8 quantiser (``Fp8Quantize``): e4m3 weights and float32 ``weight_scale_inv`` per
    ``block`` (None: one per tensor), in the fine-grained layout ``from_pretrained`` reads."""
    import torch
    from transformers import FineGrainedFP8Config
    from transformers.integrations.finegrained_fp8 import Fp8Quantize

    qc = FineGrainedFP8Config(weight_block_size=block, modules_to_not_convert=["lm_head"])
    op = Fp8Quantize(types.SimpleNamespace(quantization_config=qc))
    tensors: dict[str, Any] = {}
    for name, w in float_tensors(src).items():
        if is_linear(name, w):
            for k, v in op._quantize_one(name, torch.from_numpy(w)).items():
                fp8 = v.dtype in (torch.float8_e4m3fn, torch.float8_e5m2)
                tensors[k] = v.view(torch.uint8).numpy().view(_np_of(v.dtype)) if fp8 else v.numpy()
        else:
            tensors[name] = w
    qdict = qc.to_dict()
    qdict["quant_method"] = "fp8"
    return _write(out, src, tensors, qdict)


def _np_of(torch_dtype: Any) -> Any:
    import ml_dtypes
    import torch

    return {torch.float8_e4m3fn: ml_dtypes.float8_e4m3fn, torch.float8_e5m2: ml_dtypes.float8_e5m2}[torch_dtype]


def fp8_ceil_grid(src: Path, out: Path, block: tuple[int, int]) -> Path:
    """FP8 with ``block`` scales that do not divide the weights (DeepSeek's layout: a ``ceil`` grid, the
    last blocks short), as the fine-grained format allows and transformers' own quantiser skips."""
    import ml_dtypes

    bm, bn = block
    tensors: dict[str, Any] = {}
    for name, w in float_tensors(src).items():
        if not is_linear(name, w):
            tensors[name] = w
            continue
        r, c = w.shape
        sr, sc = -(-r // bm), -(-c // bn)
        inv = np.empty((sr, sc), np.float32)
        q = np.empty_like(w)
        for i in range(sr):
            for j in range(sc):
                blk = w[i * bm:(i + 1) * bm, j * bn:(j + 1) * bn]
                inv[i, j] = max(float(np.abs(blk).max()), 1e-12) / 448.0
                q[i * bm:(i + 1) * bm, j * bn:(j + 1) * bn] = blk / inv[i, j]
        tensors[name] = np.clip(q, -448, 448).astype(ml_dtypes.float8_e4m3fn)
        tensors[name + "_scale_inv"] = inv
    return _write(out, src, tensors, {"quant_method": "fp8", "activation_scheme": "dynamic",
                                      "weight_block_size": [bm, bn]})


def transformers_state(folder: Path, dtype: str = "float32", arch: str | None = None) -> dict[str, np.ndarray]:
    """What transformers loads from ``folder`` (on CPU it dequantises FP8 and MXFP4 checkpoints)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.set_verbosity_error()
    cls = getattr(transformers, arch) if arch else AutoModelForCausalLM
    model = cls.from_pretrained(str(folder), dtype=getattr(torch, dtype))
    return {k: v.detach().float().numpy() for k, v in model.state_dict().items()}


# ============================================================================ compressed-tensors
def compressed_tensors(src: Path, out: Path, preset: str, *, group_size: int = 32,
                       block: list[int] | None = None) -> Path:
    """``preset`` (W4A16, W4A16_ASYM, W3A16, W8A16, FP8, FP8_DYNAMIC, FP8_BLOCK, INT8, MXFP4A16) applied
    to every Linear but the output head by compressed-tensors, compressed and saved as it saves."""
    import torch
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationConfig,
        QuantizationStatus,
        apply_quantization_config,
        preset_name_to_scheme,
    )
    from compressed_tensors.quantization.utils import calculate_qparams
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.set_verbosity_error()
    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
    scheme = preset_name_to_scheme(preset, ["Linear"])
    if scheme.weights.strategy == "group" and not preset.startswith("MX"):
        scheme.weights.group_size = group_size
    if block is not None:
        scheme.weights.block_structure = block
    apply_quantization_config(model, QuantizationConfig(config_groups={"group_0": scheme}, ignore=["lm_head"]))
    with torch.no_grad():
        for _, mod in model.named_modules():
            sch = getattr(mod, "quantization_scheme", None)
            if sch is None or sch.weights is None:
                continue
            lo, hi = _min_max(mod.weight.data, sch.weights)
            scale, zp = calculate_qparams(lo, hi, sch.weights)
            mod.weight_scale.data = scale.to(mod.weight_scale.dtype).reshape(mod.weight_scale.shape)
            if hasattr(mod, "weight_zero_point"):
                mod.weight_zero_point.data = zp.to(mod.weight_zero_point.dtype).reshape(mod.weight_zero_point.shape)
            mod.quantization_status = QuantizationStatus.FROZEN
    compressor = ModelCompressor.from_pretrained_model(model)
    compressor.compress_model(model)
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(str(out))
    compressor.update_config(str(out))
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, out / f.name)
    return out


def _min_max(w: Any, args: Any) -> tuple[Any, Any]:
    strategy = getattr(args.strategy, "value", args.strategy)
    if strategy == "tensor":
        return w.amin().reshape(1), w.amax().reshape(1)
    if strategy == "channel":
        return w.amin(1, keepdim=True), w.amax(1, keepdim=True)
    if strategy == "group":
        g = w.reshape(w.shape[0], -1, args.group_size)
        return g.amin(-1), g.amax(-1)
    bm, bn = args.block_structure
    b = w.reshape(w.shape[0] // bm, bm, w.shape[1] // bn, bn)
    return b.amin((1, 3)), b.amax((1, 3))


def compressed_tensors_reference(folder: Path) -> dict[str, np.ndarray]:
    """compressed-tensors' own dequantiser (``CompressedTensorsDequantizer``) of ``folder``, in float32."""
    import torch
    from compressed_tensors.entrypoints.convert.converters.ct_dequantizer import (
        CompressedTensorsDequantizer,
    )
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "model.safetensors"))
    modules = {k.rsplit(".", 1)[0] for k in tensors if k.endswith(".weight")}
    plain = [m for m in modules if m + ".weight_scale" not in tensors]  # it matches Linear by name: say which are not
    deq = CompressedTensorsDequantizer(str(folder), ignore=plain, dtype=torch.float32)
    return {k: v.float().numpy() for k, v in deq.process(tensors).items()}


# ============================================================================ bit streams
def pack_stream(values: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned ``bits``-bit values ``[..., n]`` → int32 words ``[..., n·bits/32]``: value ``i`` at bit ``i·bits``
    of the row's little-endian stream (GPTQ's packing, 3-bit values straddling words, and compressed-tensors')."""
    v = np.asarray(values, np.uint32)
    bit_planes = ((v[..., None] >> np.arange(bits, dtype=np.uint32)) & 1).astype(np.uint8)
    stream = bit_planes.reshape(*v.shape[:-1], -1)
    assert stream.shape[-1] % 32 == 0
    return np.packbits(stream, axis=-1, bitorder="little").view("<u4").astype(np.uint32).view(np.int32)


# ============================================================================ GPTQ
def gptq_pack(w: np.ndarray, bits: int, group_size: int, *, act_order: bool, sym: bool, v2: bool,
              rng: np.random.Generator) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One linear ``w [out, in]`` in GPTQ's checkpoint layout (AutoGPTQ/GPTQModel ``QuantLinear.pack``):
    ``qweight [in·bits/32, out]`` (a bit stream down each column), ``qzeros [groups, out·bits/32]`` (``zero - 1``
    in the v1 ``gptq`` format), ``scales [groups, out]`` float16 and ``g_idx [in]`` (act-order: the columns
    are quantised in a random order, groups of ``group_size`` in that order). Returns the tensors and the
    weight they stand for (float64, as the format defines it)."""
    out_f, in_f = w.shape
    maxq = (1 << bits) - 1
    order = rng.permutation(in_f) if act_order else np.arange(in_f)
    g_idx = np.empty(in_f, np.int32)
    g_idx[order] = np.arange(in_f) // group_size
    groups = -(-in_f // group_size)
    scales = np.empty((groups, out_f), np.float16)
    zeros = np.empty((groups, out_f), np.int64)
    q = np.empty((out_f, in_f), np.int64)
    for g in range(groups):
        cols = g_idx == g
        wg = w[:, cols].astype(np.float64)
        if sym:
            s = 2 * np.abs(wg).max(1) / maxq
            z = np.full(out_f, (maxq + 1) // 2)
        else:
            lo, hi = np.minimum(wg.min(1), 0), np.maximum(wg.max(1), 0)
            s = (hi - lo) / maxq
            z = np.clip(np.round(-lo / np.where(s > 0, s, 1)), 1, maxq)  # zero ≥ 1: v1 stores zero - 1
        s16 = np.where(s > 0, s, 1).astype(np.float16)
        scales[g], zeros[g] = s16, z
        q[:, cols] = np.clip(np.round(wg / s16.astype(np.float64)[:, None]) + z[:, None], 0, maxq)
    stored_zeros = zeros if v2 else (zeros - 1) & maxq
    tensors = {"qweight": pack_stream(q, bits).T.copy(), "qzeros": pack_stream(stored_zeros, bits),
               "scales": scales, "g_idx": g_idx}
    dequant = scales.astype(np.float64)[g_idx].T * (q - zeros[g_idx].T)
    return tensors, dequant


def gptq_model(src: Path, out: Path, bits: int, group_size: int, *, act_order: bool, sym: bool = True,
               v2: bool = False, seed: int = 0) -> tuple[Path, dict[str, np.ndarray]]:
    """Every decoder linear of ``src`` as GPTQ; returns the folder and each weight it stands for."""
    rng = np.random.default_rng(seed)
    tensors: dict[str, Any] = {}
    expected: dict[str, np.ndarray] = {}
    for name, w in float_tensors(src).items():
        if is_linear(name, w):
            mod = name[: -len(".weight")]
            packed, expected[name] = gptq_pack(w, bits, group_size, act_order=act_order, sym=sym, v2=v2, rng=rng)
            tensors.update({f"{mod}.{k}": v for k, v in packed.items()})
        else:
            tensors[name] = w
    qc = {"quant_method": "gptq", "bits": bits, "group_size": group_size, "desc_act": act_order, "sym": sym,
          "checkpoint_format": "gptq_v2" if v2 else "gptq"}
    return _write(out, src, tensors, qc), expected


# ============================================================================ AWQ
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def awq_words(values: np.ndarray) -> np.ndarray:
    """4-bit values ``[rows, cols]`` → AutoAWQ's GEMM words ``[rows, cols/8]``: nibble ``p`` of word ``k``
    holds column ``8k + AWQ_ORDER[p]`` (AutoAWQ ``WQLinear_GEMM.from_linear``)."""
    v = np.asarray(values, np.uint32).reshape(values.shape[0], -1, 8)[..., AWQ_ORDER]
    return (v << (4 * np.arange(8, dtype=np.uint32))).sum(-1, dtype=np.uint32).view(np.int32)


def awq_model(src: Path, out: Path, group_size: int) -> tuple[Path, dict[str, np.ndarray]]:
    """Every decoder linear of ``src`` as AutoAWQ GEMM int4 with zero points (``qweight [in, out/8]``,
    ``qzeros [in/group, out/8]``, ``scales [in/group, out]`` float16); returns each weight it stands for."""
    tensors: dict[str, Any] = {}
    expected: dict[str, np.ndarray] = {}
    for name, w in float_tensors(src).items():
        if not is_linear(name, w):
            tensors[name] = w
            continue
        mod = name[: -len(".weight")]
        wt = w.T.astype(np.float64)  # [in, out]
        g = wt.reshape(-1, group_size, wt.shape[1])
        lo, hi = np.minimum(g.min(1), 0), np.maximum(g.max(1), 0)
        s = ((hi - lo) / 15).astype(np.float16)
        s = np.where(s > 0, s, np.float16(1))
        z = np.clip(np.round(-lo / s.astype(np.float64)), 0, 15)
        q = np.clip(np.round(g / s.astype(np.float64)[:, None]) + z[:, None], 0, 15).reshape(wt.shape)
        tensors[f"{mod}.qweight"] = awq_words(q)
        tensors[f"{mod}.qzeros"] = awq_words(z)
        tensors[f"{mod}.scales"] = s
        rows = np.arange(wt.shape[0]) // group_size
        expected[name] = ((q - z[rows]) * s.astype(np.float64)[rows]).T
    qc = {"quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": True, "version": "gemm"}
    return _write(out, src, tensors, qc), expected


def awq_reference(folder: Path, group_size: int) -> dict[str, np.ndarray]:
    """compressed-tensors' AutoAWQ converter (unpack, AWQ_REVERSE_ORDER, zero points) into its
    pack-quantized form, then its own dequantiser: float16 arithmetic, as the float16 scales are."""
    import torch
    from compressed_tensors.entrypoints.convert.converters.autoawq import (
        AutoAWQConverter,
    )
    from compressed_tensors.entrypoints.convert.converters.ct_dequantizer import (
        CompressedTensorsDequantizer,
    )
    from safetensors.torch import load_file, save_file

    conv = AutoAWQConverter(bits=4, group_size=group_size, zero_point=True)
    tensors = conv.process(load_file(str(folder / "model.safetensors")))
    ct = folder.with_name(folder.name + "-ct")
    shutil.rmtree(ct, ignore_errors=True)
    ct.mkdir()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(ct / "model.safetensors"))
    cfg = _config(folder)
    cfg["quantization_config"] = conv.update_config(None).model_dump(mode="json")
    (ct / "config.json").write_text(json.dumps(cfg))
    modules = {k.rsplit(".", 1)[0] for k in tensors if k.endswith((".weight", ".weight_packed"))}
    plain = [m for m in modules if m + ".weight_scale" not in tensors]
    deq = CompressedTensorsDequantizer(str(ct), ignore=plain, dtype=torch.float32)
    return {k: v.float().numpy() for k, v in deq.process(tensors).items()}


# ============================================================================ MXFP4
E2M1 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def mxfp4_quantise(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``w [..., rows, cols]`` → gpt-oss's ``blocks [..., rows, cols/32, 16]`` and ``scales [..., rows, cols/32]``
    (OCP Microscaling v1.0: shared exponent ``floor(log2(amax)) - 2``, E2M1 elements rounded to nearest,
    E8M0 scale = exponent + 127; two codes a byte, element ``2i`` in the low nibble)."""
    *lead, rows, cols = w.shape
    g = w.reshape(*lead, rows, cols // 32, 32).astype(np.float64)
    amax = np.abs(g).max(-1)
    e = np.clip(np.floor(np.log2(np.where(amax > 0, amax, 2.0 ** -127))) - 2, -127, 127)
    x = g / np.exp2(e)[..., None]
    code = np.abs(np.abs(x)[..., None] - E2M1).argmin(-1).astype(np.uint8)
    code |= ((x < 0) & (code > 0)).astype(np.uint8) << 3
    return (code[..., 0::2] | (code[..., 1::2] << 4)).astype(np.uint8), (e + 127).astype(np.uint8)


def mxfp4_gpt_oss(src: Path, out: Path) -> Path:
    """A float gpt-oss folder with its experts stored as the released checkpoints store them: the
    transpose of ``gate_up_proj``/``down_proj`` as ``*_blocks``/``*_scales``, ``quant_method: mxfp4``."""
    tensors: dict[str, Any] = {}
    for name, w in float_tensors(src).items():
        if name.endswith(("mlp.experts.gate_up_proj", "mlp.experts.down_proj")):
            tensors[name + "_blocks"], tensors[name + "_scales"] = mxfp4_quantise(np.swapaxes(w, -1, -2))
        else:
            tensors[name] = w
    qc = {"quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                                                "model.embed_tokens", "lm_head"]}
    return _write(out, src, tensors, qc)


def mxfp4_transformers(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """transformers' own MXFP4 dequantisation (``convert_moe_packed_tensors``), float32."""
    import torch
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    return convert_moe_packed_tensors(torch.from_numpy(blocks.copy()), torch.from_numpy(scales.copy()),
                                      dtype=torch.float32).numpy()


# ============================================================================ llama.cpp's converter
LLAMA_CPP = r"""
import json, sys
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/gguf-py"]
import torch
from safetensors.torch import load_file, save_file
import conversion.base as base
import convert_hf_to_gguf as converter

dequant, ggufs = json.loads(sys.argv[2])
for folder, out in dequant:
    model = type("Converter", (), {})()  # the attributes dequant_model reads, nothing else
    model.hparams = json.load(open(folder + "/config.json"))
    model.lazy, model._is_nvfp4, model._fp8_as_q8, model._fp8_dequantized = False, False, False, set()
    model.model_tensors = {k: (lambda v=v: v) for k, v in load_file(folder + "/model.safetensors").items()}
    base.ModelBase.dequant_model(model)
    save_file({k: f().float().contiguous() for k, f in model.model_tensors.items()}, out)
for folder, out, pre in ggufs:  # its BPE check knows published tokenizers only: name the pre-tokenizer
    base.TextModel.get_vocab_base_pre = lambda self, tokenizer, pre=pre: pre
    sys.argv = ["convert_hf_to_gguf.py", folder, "--outfile", out, "--outtype", "f32"]
    converter.main()
"""


def llamacpp(dequant: list[Path], ggufs: list[tuple[Path, Path, str]] = ()) -> list[dict[str, np.ndarray]]:  # type: ignore[assignment]
    """llama.cpp's converter, in one process: its own dequantisation (``ModelBase.dequant_model``: FP8
    ``dequant_simple``, GPTQ ``dequant_gptq``, compressed-tensors ``dequant_packed``) of each folder of
    ``dequant`` (returned, float32), and ``convert_hf_to_gguf.py FOLDER --outfile OUT`` for each of ``ggufs``."""
    from safetensors.numpy import load_file

    from tests.families.support import llama_cpp_tree

    tree = llama_cpp_tree()
    jobs = [(str(f), str(f.with_name(f.name + "-llamacpp.safetensors"))) for f in dequant]
    spec = json.dumps([jobs, [(str(f), str(o), p) for f, o, p in ggufs]])
    proc = subprocess.run([sys.executable, "-c", LLAMA_CPP, str(tree), spec], capture_output=True, text=True,
                          timeout=900, check=False, env={**os.environ, "NO_LOCAL_GGUF": "1", **QUIET_LOGS})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [load_file(out) for _, out in jobs]
