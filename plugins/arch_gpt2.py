"""GPT-2 (``GPT2LMHeadModel``, GGUF arch ``gpt2``).

HF GPT-2 stores its projections as Conv1D, ``[in, out]``; llama.cpp wants the usual
``[out, in]`` (numpy order), so those four weights are transposed both ways.
The causal-mask buffers (``attn.bias``, ``attn.masked_bias``) are not weights and
are left out; the output projection is tied to the token embedding.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from lmconv.architectures import MappedArchitecture
from lmconv.errors import InputError
from lmconv.hookspecs import hookimpl

GPT2_LAYOUT = (
    "transformer.wte.weight",
    "transformer.wpe.weight",
    "transformer.h.{bid}.ln_1.weight",
    "transformer.h.{bid}.ln_1.bias",
    "transformer.h.{bid}.attn.c_attn.weight",
    "transformer.h.{bid}.attn.c_attn.bias",
    "transformer.h.{bid}.attn.c_proj.weight",
    "transformer.h.{bid}.attn.c_proj.bias",
    "transformer.h.{bid}.ln_2.weight",
    "transformer.h.{bid}.ln_2.bias",
    "transformer.h.{bid}.mlp.c_fc.weight",
    "transformer.h.{bid}.mlp.c_fc.bias",
    "transformer.h.{bid}.mlp.c_proj.weight",
    "transformer.h.{bid}.mlp.c_proj.bias",
    "transformer.ln_f.weight",
    "transformer.ln_f.bias",
    "lm_head.weight",
)
CONV1D = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")


def _transpose(a: np.ndarray, config: dict[str, Any]) -> np.ndarray:
    return np.ascontiguousarray(a.T)


class GPT2Architecture(MappedArchitecture):
    hf_architectures = ("GPT2LMHeadModel",)
    gguf_arch = "gpt2"
    model_arch = "GPT2"
    hf_layout = GPT2_LAYOUT
    hf_skip = (".attn.bias", ".attn.masked_bias")
    hf_embedding = "transformer.wte.weight"
    description = "GPT-2 (LayerNorm, GELU, learned positions, Conv1D projections)"
    required_ints = ("n_layer", "n_head", "n_embd", "vocab_size")
    optional_ints = ("n_inner", "n_positions", "n_ctx")

    def expected_shape(self, hf_name: str, config: dict[str, Any]) -> tuple[int | None, ...] | None:
        """Conv1D weights are [in, out]."""
        e = config["n_embd"]
        inner = config.get("n_inner") or 4 * e
        kind = hf_name.rsplit(".", 1)[-1]
        for suffix, weight, bias in (
            (".attn.c_attn", (e, 3 * e), (3 * e,)), (".attn.c_proj", (e, e), (e,)),
            (".mlp.c_fc", (e, inner), (inner,)), (".mlp.c_proj", (inner, e), (e,)),
            (".ln_1", (e,), (e,)), (".ln_2", (e,), (e,)), ("transformer.ln_f", (e,), (e,)),
            ("transformer.wte", (None, e), None), ("transformer.wpe", (None, e), None), ("lm_head", (None, e), None),
        ):
            if hf_name.removesuffix("." + kind).endswith(suffix):
                return weight if kind == "weight" else bias
        return None

    def check_consistency(self, config: dict[str, Any], origin: str | None) -> None:
        if config["n_embd"] % config["n_head"]:
            raise InputError(f"n_embd {config['n_embd']} is not a multiple of n_head {config['n_head']}", path=origin)

    def n_layer(self, config: dict[str, Any]) -> int:
        return int(config["n_layer"])

    def to_gguf_layout(self, hf_name: str, config: dict[str, Any]) -> Any:
        return _transpose if hf_name.endswith(CONV1D) else None

    from_gguf_layout = to_gguf_layout

    def layout_shape(self, hf_name: str, shape: tuple[int, ...], config: dict[str, Any], forward: bool) -> tuple[int, ...]:
        return tuple(reversed(shape)) if hf_name.endswith(CONV1D) else shape

    def config_to_gguf(self, config: dict[str, Any]) -> dict[str, Any]:
        n_embd = int(config["n_embd"])
        return {
            "gpt2.vocab_size": int(config["vocab_size"]),
            "gpt2.context_length": int(config.get("n_ctx") or config.get("n_positions") or 1024),
            "gpt2.embedding_length": n_embd,
            "gpt2.feed_forward_length": int(config.get("n_inner") or 4 * n_embd),
            "gpt2.block_count": self.n_layer(config),
            "gpt2.attention.head_count": int(config["n_head"]),
            "gpt2.attention.layer_norm_epsilon": float(config.get("layer_norm_epsilon", 1e-5)),
        }

    def gguf_to_config(self, kv: dict[str, Any]) -> dict[str, Any]:
        n_embd = int(kv["gpt2.embedding_length"])
        ff = int(kv.get("gpt2.feed_forward_length", 4 * n_embd))
        ctx = int(kv.get("gpt2.context_length", 1024))
        config: dict[str, Any] = {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "n_embd": n_embd,
            "n_layer": int(kv["gpt2.block_count"]),
            "n_head": int(kv["gpt2.attention.head_count"]),
            "n_positions": ctx,
            "n_ctx": ctx,
            "n_inner": None if ff == 4 * n_embd else ff,
            "layer_norm_epsilon": float(str(np.float32(kv.get("gpt2.attention.layer_norm_epsilon", 1e-5)))),
            "activation_function": "gelu_new",
            "tie_word_embeddings": True,
        }
        if "gpt2.vocab_size" in kv:
            config["vocab_size"] = int(kv["gpt2.vocab_size"])
        return config


@hookimpl
def register_architectures(register: Any) -> None:
    register(GPT2Architecture())
