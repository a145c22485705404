"""What the family plugins take from gguf-py: llama.cpp's tensor names and metadata keys.

A family that gguf-py knows lists its HF tensor names once; the GGUF names come from gguf-py's
``TensorNameMap`` (:func:`renames`), the metadata keys from ``gguf.Keys`` (:func:`decoder_hparams`).
Nothing here is retyped from llama.cpp.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

import gguf
import numpy as np
from gguf import MODEL_ARCH, Keys

from lmconv import blocks as B
from lmconv.architectures import HParam, short_float
from lmconv.errors import InputError
from lmconv.rules import Rename, Rule

SUFFIXES = (".weight", ".bias")


def arch_name(model_arch: MODEL_ARCH) -> str:
    """GGUF's ``general.architecture`` value of a gguf-py architecture ("llama")."""
    return gguf.MODEL_ARCH_NAMES[model_arch]


@lru_cache(maxsize=None)
def _name_map(model_arch: MODEL_ARCH) -> Any:
    return gguf.get_tensor_name_map(model_arch, 1)


def gguf_name(model_arch: MODEL_ARCH, hf: str) -> str:
    """llama.cpp's name for the HF tensor name pattern ``hf`` (``{bid}`` for the block index)."""
    got = _name_map(model_arch).get_name(hf.replace("{bid}", "0"), try_suffixes=SUFFIXES)
    if got is None:
        raise ValueError(f"gguf-py has no {arch_name(model_arch)} name for {hf!r}")
    return got.replace("blk.0.", "blk.{bid}.") if "{bid}" in hf else got


def tensor_name(tensor: gguf.MODEL_TENSOR, suffix: str = ".weight") -> str:
    """llama.cpp's name of a tensor kind (``blk.{bid}.ffn_down_exps.weight``)."""
    return gguf.TENSOR_NAMES[tensor] + suffix


def renames(model_arch: MODEL_ARCH, hf_names: Iterable[str]) -> list[Rule]:
    """One :class:`Rename` per HF name, to its llama.cpp name."""
    return [Rename(hf, gguf_name(model_arch, hf)) for hf in hf_names]


def decoder_hparams(*, rms: bool = True) -> tuple[HParam, ...]:
    """The keys every llama-like decoder writes: sizes, heads, norm epsilon, rotary base."""
    eps = (HParam(Keys.Attention.LAYERNORM_RMS_EPS, "rms_norm_eps", float, default=1e-6) if rms else
           HParam(Keys.Attention.LAYERNORM_EPS, "layer_norm_eps", float, default=1e-5))
    return (
        HParam(Keys.LLM.VOCAB_SIZE, "vocab_size"),
        HParam(Keys.LLM.CONTEXT_LENGTH, "max_position_embeddings", default=2048),
        HParam(Keys.LLM.EMBEDDING_LENGTH, "hidden_size", required=True),
        HParam(Keys.LLM.BLOCK_COUNT, "num_hidden_layers", required=True),
        HParam(Keys.LLM.FEED_FORWARD_LENGTH, "intermediate_size", required=True),
        HParam(Keys.Attention.HEAD_COUNT, "num_attention_heads", required=True),
        HParam(Keys.Attention.HEAD_COUNT_KV, "num_key_value_heads", fallbacks=("num_attention_heads",)),
        eps,
        HParam(Keys.Rope.FREQ_BASE, "rope_theta", float, default=10000.0, fallbacks=("rope_parameters.rope_theta",)),
    )


# ----------------------------------------------------------------------------- rotary scaling
def rope_parameters(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config's rotary settings wherever transformers put them (``rope_parameters`` in v5,
    ``rope_scaling`` and a top-level ``rope_theta`` before), ``rope_type`` always set."""
    return B.rope_params(config)


def rope_scaling_meta(config: Mapping[str, Any], arch: str) -> dict[str, Any]:
    """GGUF's rope scaling keys for a config, as llama.cpp's converter writes them: linear and yarn
    as keys; longrope as a type (its factors are tensors); llama3 as a ``rope_freqs`` tensor instead."""
    p = rope_parameters(config)
    kind, factor = p["rope_type"], p.get("factor")
    kv: dict[str, Any] = {}
    if kind == "linear" and factor is not None:
        kv[Keys.Rope.SCALING_TYPE.format(arch=arch)] = "linear"
        kv[Keys.Rope.SCALING_FACTOR.format(arch=arch)] = float(factor)
    elif kind == "yarn" and factor is not None:
        kv[Keys.Rope.SCALING_TYPE.format(arch=arch)] = "yarn"
        kv[Keys.Rope.SCALING_FACTOR.format(arch=arch)] = float(factor)
        kv[Keys.Rope.SCALING_ORIG_CTX_LEN.format(arch=arch)] = int(p["original_max_position_embeddings"])
        for key, hf in ((Keys.Rope.SCALING_YARN_EXT_FACTOR, "extrapolation_factor"),
                        (Keys.Rope.SCALING_YARN_ATTN_FACTOR, "attention_factor"),
                        (Keys.Rope.SCALING_YARN_BETA_FAST, "beta_fast"), (Keys.Rope.SCALING_YARN_BETA_SLOW, "beta_slow")):
            if p.get(hf) is not None:
                kv[key.format(arch=arch)] = float(p[hf])
    elif kind in ("longrope", "su"):
        kv[Keys.Rope.SCALING_TYPE.format(arch=arch)] = "longrope"
    return kv


def rope_scaling_config(meta: Mapping[str, Any], arch: str, config: dict[str, Any]) -> None:
    """Back from :func:`rope_scaling_meta`: ``rope_parameters`` (and ``rope_theta``) in transformers 5's form."""
    theta = config.get("rope_theta", 10000.0)
    params: dict[str, Any] = {"rope_type": "default", "rope_theta": theta}
    kind = meta.get(Keys.Rope.SCALING_TYPE.format(arch=arch))
    if kind == "linear":
        params.update(rope_type="linear", factor=short_float(meta[Keys.Rope.SCALING_FACTOR.format(arch=arch)]))
    elif kind == "yarn":
        params.update(rope_type="yarn", factor=short_float(meta[Keys.Rope.SCALING_FACTOR.format(arch=arch)]),
                      original_max_position_embeddings=int(meta[Keys.Rope.SCALING_ORIG_CTX_LEN.format(arch=arch)]))
        for key, hf in ((Keys.Rope.SCALING_YARN_EXT_FACTOR, "extrapolation_factor"),
                        (Keys.Rope.SCALING_YARN_ATTN_FACTOR, "attention_factor"),
                        (Keys.Rope.SCALING_YARN_BETA_FAST, "beta_fast"), (Keys.Rope.SCALING_YARN_BETA_SLOW, "beta_slow")):
            if key.format(arch=arch) in meta:
                params[hf] = short_float(meta[key.format(arch=arch)])
    config["rope_parameters"] = params


def llama3_rope_factors(config: Mapping[str, Any], head_dim: int) -> np.ndarray | None:
    """llama.cpp's ``rope_freqs`` for a ``llama3`` rope type: per rotated pair, the factor its
    frequency is divided by (1 for short wavelengths, ``factor`` for long ones, a ramp between)."""
    p = rope_parameters(config)
    if str(p["rope_type"]).lower() != "llama3":
        return None
    inv = 1.0 / (float(p["rope_theta"]) ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    scaled = B.llama3_inv_freq(inv.astype(np.float64), p)
    return (inv.astype(np.float64) / scaled).astype(np.float32)


def fold_llama3_rope_factors(values: np.ndarray, config: Mapping[str, Any], head_dim: int) -> dict[str, Any]:
    """The ``llama3`` rope parameters a ``rope_freqs`` tensor stands for. The config's own ones when
    they give this very tensor (a GGUF that carries its config); otherwise they are recovered from the
    factors, with ``low_freq_factor`` 1 (the factors fix only the ratios of the three lengths), and
    checked by computing the tensor again."""
    values = np.asarray(values, dtype=np.float32).reshape(-1)
    mine = llama3_rope_factors(config, head_dim)
    if mine is not None and mine.shape == values.shape and np.allclose(mine, values, rtol=1e-6, atol=0):
        return {}
    p = rope_parameters(config)
    theta = float(p["rope_theta"])
    inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim)).astype(np.float64)
    wavelen = 2 * np.pi / inv
    factor = float(values.max())
    if values.shape != inv.shape or factor < 1:
        raise InputError(f"rope_freqs.weight has {values.size} factors, not the {inv.size} of a head of {head_dim}")
    mid = (values > 1 + 1e-6) & (values < factor * (1 - 1e-6))
    if mid.sum() >= 2:
        # 1/r = (1 - s)/factor + s, and s = old/(high - low)/wavelen - low/(high - low): linear in 1/wavelen
        s = (1 / values[mid] - 1 / factor) / (1 - 1 / factor)
        slope, intercept = np.polyfit(1 / wavelen[mid], s, 1)
        high = 1 - 1 / intercept
        old = slope * (high - 1)
    else:  # no ramp points: any lengths between the neighbouring wavelengths will do; llama's defaults of 4 and 1
        high = 4.0
        long = wavelen[values >= factor * (1 - 1e-6)]
        short = wavelen[values <= 1 + 1e-6]
        old = float(long.min()) if long.size else float(short.max() * high)
    found = {**p, "rope_type": "llama3", "factor": short_float(factor), "low_freq_factor": 1.0,
             "high_freq_factor": short_float(high), "original_max_position_embeddings": int(round(old))}
    again = llama3_rope_factors({"rope_parameters": found}, head_dim)
    if again is None or not np.allclose(again, values, rtol=1e-4, atol=0):
        raise InputError("rope_freqs.weight does not follow llama3 rope scaling; cannot tell its parameters")
    return {"rope_parameters": found}
