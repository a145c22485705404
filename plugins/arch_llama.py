"""The llama family: LlamaForCausalLM and Mistral (GGUF arch ``llama``), Qwen2 (``qwen2``).

llama.cpp's llama graph expects Q and K rows in an interleaved rotary order, so
their weights (and biases) are permuted on the way in — K with the KV head count —
and un-permuted on the way out. Qwen2 uses NeoX-style rotary in llama.cpp and needs
no permutation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from lmconv.architectures import MappedArchitecture, rope_permute, rope_unpermute
from lmconv.errors import InputError
from lmconv.hookspecs import hookimpl

LLAMA_LAYOUT = (
    "model.embed_tokens.weight",
    "model.layers.{bid}.input_layernorm.weight",
    "model.layers.{bid}.self_attn.q_proj.weight",
    "model.layers.{bid}.self_attn.q_proj.bias",
    "model.layers.{bid}.self_attn.k_proj.weight",
    "model.layers.{bid}.self_attn.k_proj.bias",
    "model.layers.{bid}.self_attn.v_proj.weight",
    "model.layers.{bid}.self_attn.v_proj.bias",
    "model.layers.{bid}.self_attn.o_proj.weight",
    "model.layers.{bid}.self_attn.o_proj.bias",
    "model.layers.{bid}.post_attention_layernorm.weight",
    "model.layers.{bid}.mlp.gate_proj.weight",
    "model.layers.{bid}.mlp.up_proj.weight",
    "model.layers.{bid}.mlp.down_proj.weight",
    "model.norm.weight",
    "lm_head.weight",
)


def _rope_theta(config: dict[str, Any]) -> float:
    if "rope_theta" in config:
        return float(config["rope_theta"])
    params = config.get("rope_parameters") or {}
    if isinstance(params, dict) and "rope_theta" in params:
        return float(params["rope_theta"])
    return 10000.0


class LlamaArchitecture(MappedArchitecture):
    hf_architectures = ("LlamaForCausalLM", "MistralForCausalLM")
    gguf_arch = "llama"
    model_arch = "LLAMA"
    hf_layout = LLAMA_LAYOUT
    hf_skip = ("rotary_emb.inv_freq",)
    hf_embedding = "model.embed_tokens.weight"
    description = "Llama / Mistral (GQA, RMSNorm, SwiGLU, rotary)"
    permute_qk = True
    model_type = "llama"
    required_ints = ("num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size", "vocab_size")
    optional_ints = ("num_key_value_heads", "head_dim", "max_position_embeddings")

    def check_consistency(self, config: dict[str, Any], origin: str | None) -> None:
        n_head, n_kv = self._heads(config)
        if not config.get("head_dim") and config["hidden_size"] % n_head:
            raise InputError(f"hidden_size {config['hidden_size']} is not a multiple of num_attention_heads {n_head}",
                             path=origin)
        if n_head % n_kv:
            raise InputError(f"num_attention_heads {n_head} is not a multiple of num_key_value_heads {n_kv}", path=origin)
        if self.permute_qk and self.head_dim(config) % 2:
            raise InputError(f"head size {self.head_dim(config)} is odd; rotary embeddings need an even one", path=origin)

    def expected_shape(self, hf_name: str, config: dict[str, Any]) -> tuple[int | None, ...] | None:
        n_head, n_kv = self._heads(config)
        hidden, inter, size = config["hidden_size"], config["intermediate_size"], self.head_dim(config)
        q, kv = n_head * size, n_kv * size
        kind = hf_name.rsplit(".", 1)[-1]
        for suffix, weight, bias in (
            (".self_attn.q_proj", (q, hidden), (q,)), (".self_attn.k_proj", (kv, hidden), (kv,)),
            (".self_attn.v_proj", (kv, hidden), (kv,)), (".self_attn.o_proj", (hidden, q), (hidden,)),
            (".mlp.gate_proj", (inter, hidden), (inter,)), (".mlp.up_proj", (inter, hidden), (inter,)),
            (".mlp.down_proj", (hidden, inter), (hidden,)),
            ("layernorm", (hidden,), None), ("model.norm", (hidden,), None),
            ("model.embed_tokens", (None, hidden), None), ("lm_head", (None, hidden), None),
        ):
            if hf_name.removesuffix("." + kind).endswith(suffix):
                return weight if kind == "weight" else bias
        return None

    def n_layer(self, config: dict[str, Any]) -> int:
        return int(config["num_hidden_layers"])

    def _heads(self, config: dict[str, Any]) -> tuple[int, int]:
        n_head = int(config["num_attention_heads"])
        return n_head, int(config.get("num_key_value_heads") or n_head)

    def head_dim(self, config: dict[str, Any]) -> int:
        return int(config.get("head_dim") or int(config["hidden_size"]) // int(config["num_attention_heads"]))

    def _rope_heads(self, hf_name: str, config: dict[str, Any]) -> int | None:
        """Head count of the rotary permutation for Q (all heads) and K (KV heads); None otherwise."""
        if not self.permute_qk:
            return None
        n_head, n_kv = self._heads(config)
        if ".self_attn.q_proj." in hf_name:
            return n_head
        if ".self_attn.k_proj." in hf_name:
            return n_kv
        return None

    def to_gguf_layout(self, hf_name: str, config: dict[str, Any]) -> Any:
        heads = self._rope_heads(hf_name, config)
        return None if heads is None else (lambda a, c: rope_permute(a, heads))

    def from_gguf_layout(self, hf_name: str, config: dict[str, Any]) -> Any:
        heads = self._rope_heads(hf_name, config)
        return None if heads is None else (lambda a, c: rope_unpermute(a, heads))

    def config_to_gguf(self, config: dict[str, Any]) -> dict[str, Any]:
        a = self.gguf_arch
        n_head, n_kv = self._heads(config)
        kv: dict[str, Any] = {
            f"{a}.vocab_size": int(config["vocab_size"]),
            f"{a}.context_length": int(config.get("max_position_embeddings") or 2048),
            f"{a}.embedding_length": int(config["hidden_size"]),
            f"{a}.block_count": self.n_layer(config),
            f"{a}.feed_forward_length": int(config["intermediate_size"]),
            f"{a}.attention.head_count": n_head,
            f"{a}.attention.head_count_kv": n_kv,
            f"{a}.attention.layer_norm_rms_epsilon": float(config.get("rms_norm_eps", 1e-6)),
            f"{a}.rope.freq_base": _rope_theta(config),
            f"{a}.rope.dimension_count": self.head_dim(config),
        }
        if self.head_dim(config) != int(config["hidden_size"]) // n_head:
            kv[f"{a}.attention.key_length"] = self.head_dim(config)
            kv[f"{a}.attention.value_length"] = self.head_dim(config)
        scaling = config.get("rope_scaling") or {}
        if isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type")) == "linear":
            kv[f"{a}.rope.scaling.type"] = "linear"
            kv[f"{a}.rope.scaling.factor"] = float(scaling["factor"])
        return kv

    def gguf_to_config(self, kv: dict[str, Any]) -> dict[str, Any]:
        a = self.gguf_arch
        hidden = int(kv[f"{a}.embedding_length"])
        n_head = int(kv[f"{a}.attention.head_count"])
        theta = float(str(np.float32(kv.get(f"{a}.rope.freq_base", 10000.0))))
        config: dict[str, Any] = {
            "architectures": [self.hf_architectures[0]],
            "model_type": self.model_type,
            "hidden_size": hidden,
            "intermediate_size": int(kv[f"{a}.feed_forward_length"]),
            "num_hidden_layers": int(kv[f"{a}.block_count"]),
            "num_attention_heads": n_head,
            "num_key_value_heads": int(kv.get(f"{a}.attention.head_count_kv", n_head)),
            "max_position_embeddings": int(kv.get(f"{a}.context_length", 2048)),
            "rms_norm_eps": float(str(np.float32(kv.get(f"{a}.attention.layer_norm_rms_epsilon", 1e-6)))),
            "rope_theta": theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": theta},
            "hidden_act": "silu",
            "head_dim": int(kv.get(f"{a}.attention.key_length", hidden // n_head)),
        }
        if f"{a}.vocab_size" in kv:
            config["vocab_size"] = int(kv[f"{a}.vocab_size"])
        if kv.get(f"{a}.rope.scaling.type") == "linear":
            config["rope_scaling"] = {"rope_type": "linear", "factor": float(kv[f"{a}.rope.scaling.factor"])}
        return config


class Qwen2Architecture(LlamaArchitecture):
    hf_architectures = ("Qwen2ForCausalLM",)
    gguf_arch = "qwen2"
    model_arch = "QWEN2"
    description = "Qwen2 (llama layout with QKV biases, NeoX rotary: no Q/K permutation)"
    permute_qk = False
    model_type = "qwen2"


@hookimpl
def register_architectures(register: Any) -> None:
    register(LlamaArchitecture())
    register(Qwen2Architecture())
