"""The Qwen families: Qwen2 (``qwen2``), Qwen2-MoE (``qwen2moe``), Qwen3 (``qwen3``), Qwen3-MoE (``qwen3moe``).

All four are the llama decoder (:mod:`.llama`) with NeoX-style rotary in llama.cpp, so Q and K need
no permutation. Qwen2 and Qwen2-MoE have Q/K/V biases; Qwen3 RMS-normalises each head of Q and K
(``q_norm``/``k_norm``, over the head dimension) before the rotary embedding.

The MoE families keep their routed experts one by one on disk (``mlp.experts.E.{gate,up,down}_proj``,
what transformers 5 saves and loads) and fused in memory (``mlp.experts.gate_up_proj``/``down_proj``,
what ``torch.save(model.state_dict())`` writes); both are read, GGUF stacks them, GGUF → HF writes the
on-disk layout. Qwen2-MoE adds a shared expert whose output is scaled by ``sigmoid(shared_expert_gate · x)``.
Routing is softmax then top-k; transformers renormalises the chosen weights when ``norm_topk_prob``,
while llama.cpp never does for qwen2moe and always does for qwen3moe (their real checkpoints agree
with that): a GGUF read back without a stored config gets llama.cpp's choice, and HF → GGUF warns when
the config asks for the other one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from gguf import MODEL_ARCH, Keys

from lmconv import blocks as B
from lmconv.architectures import Config, HParam
from lmconv.errors import InputError
from lmconv.hookspecs import hookimpl
from lmconv.ir import Model, Tensor

from ._gguf import arch_name
from .llama import Experts, LlamaArchitecture, dense_mlp

Array = np.ndarray
QK_NORMS = ("model.layers.{bid}.self_attn.q_norm.weight", "model.layers.{bid}.self_attn.k_norm.weight")
SHARED_EXPERT = (
    "model.layers.{bid}.mlp.shared_expert.gate_proj.weight",
    "model.layers.{bid}.mlp.shared_expert.up_proj.weight",
    "model.layers.{bid}.mlp.shared_expert.down_proj.weight",
    "model.layers.{bid}.mlp.shared_expert_gate.weight",
)
QWEN_EXPERTS = Experts(
    per_expert=("model.layers.{bid}.mlp.experts.{xid}.gate_proj.weight",
                "model.layers.{bid}.mlp.experts.{xid}.up_proj.weight",
                "model.layers.{bid}.mlp.experts.{xid}.down_proj.weight"),
    fused=("model.layers.{bid}.mlp.experts.gate_up_proj", "model.layers.{bid}.mlp.experts.down_proj"),
    router=("model.layers.{bid}.mlp.gate.weight",),
    count=("num_experts", "num_local_experts"), used="num_experts_per_tok", ff="moe_intermediate_size",
)


def sigmoid(x: Array) -> Array:
    return 1.0 / (1.0 + np.exp(-x))


class Qwen2Architecture(LlamaArchitecture):
    name = "qwen2"
    hf_architectures = ("Qwen2ForCausalLM",)
    model_types = ("qwen2",)
    model_arch = MODEL_ARCH.QWEN2
    description = "Qwen2 (llama layout with QKV biases, NeoX rotary: no Q/K permutation)"
    permute_qk = False

    def sliding_window(self, config: Config) -> int | None:
        return super().sliding_window(config) if config.get("use_sliding_window", False) else None

    def bias_flags(self, names: set[str]) -> dict[str, Any]:
        return {}  # Qwen2's Q/K/V always have biases, its other projections never


class Qwen3Architecture(Qwen2Architecture):
    name = "qwen3"
    hf_architectures = ("Qwen3ForCausalLM",)
    model_types = ("qwen3",)
    model_arch = MODEL_ARCH.QWEN3
    description = "Qwen3 (per-head RMSNorm of Q and K before rotary, NeoX rotary, no biases)"

    def hf_layout(self, config: Config) -> Sequence[str]:
        return (*super().hf_layout(config), *QK_NORMS)

    def expected_shape(self, hf_name: str, config: Config) -> tuple[int | None, ...] | None:
        if hf_name.endswith((".self_attn.q_norm.weight", ".self_attn.k_norm.weight")):
            return (self.head_dim(config),)
        return super().expected_shape(hf_name, config)

    def bias_flags(self, names: set[str]) -> dict[str, Any]:
        return {"attention_bias": True} if "model.layers.0.self_attn.q_proj.bias" in names else {}

    def qk_norm(self, W: B.Weights, prefix: str, q: Array, k: Array, eps: float) -> tuple[Array, Array]:
        return (B.rms_norm(q, W(prefix + "self_attn.q_norm.weight"), eps),
                B.rms_norm(k, W(prefix + "self_attn.k_norm.weight"), eps))


class _QwenMoe(LlamaArchitecture):
    """What the two Qwen MoE families share (mixed in before their dense family)."""

    experts = QWEN_EXPERTS
    #: whether llama.cpp's graph for this arch renormalises the top-k weights (it ignores the config)
    llama_cpp_normalizes = False
    required_ints = LlamaArchitecture.required_ints + ("num_experts_per_tok", "moe_intermediate_size")

    def check_consistency(self, config: Config, origin: str | None) -> None:
        super().check_consistency(config, origin)
        step, dense = config.get("decoder_sparse_step", 1), config.get("mlp_only_layers") or []
        if step not in (None, 1) or dense:
            raise InputError(f"decoder_sparse_step {step} and mlp_only_layers {list(dense)} give dense layers, which "
                             f"llama.cpp's {arch_name(self.model_arch)} cannot hold (every layer must be sparse)",
                             path=origin)

    def gguf_hparams(self) -> tuple[HParam, ...]:
        return super().gguf_hparams() + (HParam(Keys.LLM.EXPERT_FEED_FORWARD_LENGTH, "moe_intermediate_size"),)

    def config_base(self) -> dict[str, Any]:
        return {**super().config_base(), "norm_topk_prob": self.llama_cpp_normalizes}

    def gguf_config(self, meta: Config, config: dict[str, Any]) -> None:
        super().gguf_config(meta, config)
        if "moe_intermediate_size" not in config and config.get("num_experts_per_tok"):  # llama.cpp's fallback
            config["moe_intermediate_size"] = int(config["intermediate_size"]) // int(config["num_experts_per_tok"])

    def to_target(self, model: Model, target: str, warn: Callable[[str], None] = lambda m: None
                  ) -> tuple[list[Tensor], dict[str, Any]]:
        asked = bool(model.config.get("norm_topk_prob", False))
        if target == "gguf" and asked != self.llama_cpp_normalizes:
            warn(f"norm_topk_prob is {asked} but llama.cpp's {arch_name(self.model_arch)} "
                 f"{'always' if self.llama_cpp_normalizes else 'never'} renormalises the chosen experts' weights: "
                 "its logits will differ from transformers'")
        return super().to_target(model, target, warn)

    def normalize_topk(self, config: Config) -> bool:
        return bool(config.get("norm_topk_prob", False))

    def is_sparse(self, config: Config, bid: int) -> bool:
        step = int(config.get("decoder_sparse_step") or 1)
        return bid not in (config.get("mlp_only_layers") or []) and (bid + 1) % step == 0

    def ffn(self, W: B.Weights, bid: int, x: Array, config: Config, act: Callable[[Array], Array]) -> Array:
        if not self.is_sparse(config, bid):
            return dense_mlp(W, f"model.layers.{bid}.mlp.", x, act)
        return super().ffn(W, bid, x, config, act)


class Qwen2MoeArchitecture(_QwenMoe, Qwen2Architecture):
    name = "qwen2_moe"
    hf_architectures = ("Qwen2MoeForCausalLM",)
    model_types = ("qwen2_moe",)
    model_arch = MODEL_ARCH.QWEN2MOE
    description = "Qwen2-MoE (Qwen2 with routed experts and a sigmoid-gated shared expert)"
    llama_cpp_normalizes = False

    def hf_layout(self, config: Config) -> Sequence[str]:
        return (*super().hf_layout(config), *SHARED_EXPERT)

    def gguf_hparams(self) -> tuple[HParam, ...]:
        return super().gguf_hparams() + (
            HParam(Keys.LLM.EXPERT_SHARED_FEED_FORWARD_LENGTH, "shared_expert_intermediate_size"),)

    def gguf_config(self, meta: Config, config: dict[str, Any]) -> None:
        super().gguf_config(meta, config)
        config.setdefault("shared_expert_intermediate_size", config["intermediate_size"])  # llama.cpp's fallback

    def shared_ff(self, config: Config) -> int:
        return int(config.get("shared_expert_intermediate_size") or config["intermediate_size"])

    def expected_shape(self, hf_name: str, config: Config) -> tuple[int | None, ...] | None:
        hidden, ff = int(config["hidden_size"]), self.shared_ff(config)
        for suffix, shape in ((".mlp.shared_expert.gate_proj.weight", (ff, hidden)),
                              (".mlp.shared_expert.up_proj.weight", (ff, hidden)),
                              (".mlp.shared_expert.down_proj.weight", (hidden, ff)),
                              (".mlp.shared_expert_gate.weight", (1, hidden))):
            if hf_name.endswith(suffix):
                return shape
        return super().expected_shape(hf_name, config)

    def bias_flags(self, names: set[str]) -> dict[str, Any]:
        return {"qkv_bias": "model.layers.0.self_attn.q_proj.bias" in names}

    def ffn(self, W: B.Weights, bid: int, x: Array, config: Config, act: Callable[[Array], Array]) -> Array:
        out = super().ffn(W, bid, x, config, act)
        if not self.is_sparse(config, bid):
            return out
        p = f"model.layers.{bid}.mlp."
        gate = sigmoid(B.linear(x, W(p + "shared_expert_gate.weight")))
        return out + gate * dense_mlp(W, p + "shared_expert.", x, act)


class Qwen3MoeArchitecture(_QwenMoe, Qwen3Architecture):
    name = "qwen3_moe"
    hf_architectures = ("Qwen3MoeForCausalLM",)
    model_types = ("qwen3_moe",)
    model_arch = MODEL_ARCH.QWEN3MOE
    description = "Qwen3-MoE (Qwen3 with routed experts, no shared expert)"
    llama_cpp_normalizes = True


@hookimpl
def register_architectures(register: Any) -> None:
    for arch in (Qwen2Architecture(), Qwen2MoeArchitecture(), Qwen3Architecture(), Qwen3MoeArchitecture()):
        register(arch)
