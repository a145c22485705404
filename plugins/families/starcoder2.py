"""StarCoder2 (``Starcoder2ForCausalLM``, GGUF arch ``starcoder2``).

A GQA decoder with LayerNorms that have biases, biases on every projection, a plain two-layer MLP
(``c_fc`` → gelu_pytorch_tanh → ``c_proj``), NeoX-style rotary embeddings (no Q/K permutation) and a
sliding attention window. Every tensor is a rename. llama.cpp's starcoder2 graph has no sliding
window: it attends to the whole context, so beyond ``sliding_window`` tokens its logits leave
transformers' (the conversion says so).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from gguf import MODEL_ARCH, Keys

from lmconv import blocks as B
from lmconv.architectures import Architecture, Config, HParam, Layout
from lmconv.errors import InputError
from lmconv.hookspecs import hookimpl
from lmconv.ir import Model, Tensor
from lmconv.rules import Rule

from ._gguf import arch_name, renames, rope_parameters, rope_scaling_config, rope_scaling_meta

STARCODER2_LAYOUT = (
    "model.embed_tokens.weight",
    "model.layers.{bid}.input_layernorm.weight",
    "model.layers.{bid}.input_layernorm.bias",
    "model.layers.{bid}.self_attn.q_proj.weight",
    "model.layers.{bid}.self_attn.q_proj.bias",
    "model.layers.{bid}.self_attn.k_proj.weight",
    "model.layers.{bid}.self_attn.k_proj.bias",
    "model.layers.{bid}.self_attn.v_proj.weight",
    "model.layers.{bid}.self_attn.v_proj.bias",
    "model.layers.{bid}.self_attn.o_proj.weight",
    "model.layers.{bid}.self_attn.o_proj.bias",
    "model.layers.{bid}.post_attention_layernorm.weight",
    "model.layers.{bid}.post_attention_layernorm.bias",
    "model.layers.{bid}.mlp.c_fc.weight",
    "model.layers.{bid}.mlp.c_fc.bias",
    "model.layers.{bid}.mlp.c_proj.weight",
    "model.layers.{bid}.mlp.c_proj.bias",
    "model.norm.weight",
    "model.norm.bias",
    "lm_head.weight",
)
ARCH = MODEL_ARCH.STARCODER2
HPARAMS = (
    HParam(Keys.LLM.VOCAB_SIZE, "vocab_size"),
    HParam(Keys.LLM.CONTEXT_LENGTH, "max_position_embeddings", default=4096),
    HParam(Keys.LLM.EMBEDDING_LENGTH, "hidden_size", required=True),
    HParam(Keys.LLM.BLOCK_COUNT, "num_hidden_layers", required=True),
    HParam(Keys.LLM.FEED_FORWARD_LENGTH, "intermediate_size", required=True),
    HParam(Keys.Attention.HEAD_COUNT, "num_attention_heads", required=True),
    HParam(Keys.Attention.HEAD_COUNT_KV, "num_key_value_heads", fallbacks=("num_attention_heads",)),
    HParam(Keys.Attention.LAYERNORM_EPS, "norm_epsilon", float, default=1e-5),
    HParam(Keys.Rope.FREQ_BASE, "rope_theta", float, default=10000.0, fallbacks=("rope_parameters.rope_theta",)),
)


class Starcoder2Architecture(Architecture):
    name = "starcoder2"
    hf_architectures = ("Starcoder2ForCausalLM",)
    model_types = ("starcoder2",)
    description = "StarCoder2 (GQA, LayerNorm with biases, biased projections, GELU MLP, sliding window)"
    hf_skip = ("rotary_emb.inv_freq",)
    hf_embedding = "model.embed_tokens.weight"
    required_ints = ("num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size", "vocab_size")
    optional_ints = ("num_key_value_heads", "head_dim", "max_position_embeddings", "sliding_window")

    def heads(self, config: Config) -> tuple[int, int]:
        n_head = int(config["num_attention_heads"])
        return n_head, int(config.get("num_key_value_heads") or n_head)

    def head_dim(self, config: Config) -> int:
        return int(config["hidden_size"]) // int(config["num_attention_heads"])

    def check_consistency(self, config: Config, origin: str | None) -> None:
        n_head, n_kv = self.heads(config)
        hidden = int(config["hidden_size"])
        if hidden % n_head:
            raise InputError(f"hidden_size {hidden} is not a multiple of num_attention_heads {n_head}", path=origin)
        if config.get("head_dim") and int(config["head_dim"]) * n_head != hidden:
            raise InputError(f"head_dim {config['head_dim']} × {n_head} heads is not hidden_size {hidden}, "
                             "which llama.cpp's starcoder2 graph needs", path=origin)
        if n_head % n_kv:
            raise InputError(f"num_attention_heads {n_head} is not a multiple of num_key_value_heads {n_kv}", path=origin)
        if self.head_dim(config) % 2:
            raise InputError(f"head size {self.head_dim(config)} is odd; rotary embeddings need an even one", path=origin)
        if config.get("use_bias", True) is False:
            raise InputError("use_bias is false: llama.cpp's starcoder2 graph needs the norm, output and MLP biases",
                             path=origin)
        kind = rope_parameters(config)["rope_type"]
        if kind not in ("default", "linear", "yarn"):
            raise InputError(f"rope type {kind!r}: llama.cpp's starcoder2 graph runs default, linear or yarn rotary "
                             "embeddings", path=origin)

    def expected_shape(self, hf_name: str, config: Config) -> tuple[int | None, ...] | None:
        n_head, n_kv = self.heads(config)
        hidden, inter, size = config["hidden_size"], config["intermediate_size"], self.head_dim(config)
        q, kv = n_head * size, n_kv * size
        kind = hf_name.rsplit(".", 1)[-1]
        stem = hf_name.removesuffix("." + kind)
        for suffix, weight, bias in (
            (".self_attn.q_proj", (q, hidden), (q,)), (".self_attn.k_proj", (kv, hidden), (kv,)),
            (".self_attn.v_proj", (kv, hidden), (kv,)), (".self_attn.o_proj", (hidden, q), (hidden,)),
            (".mlp.c_fc", (inter, hidden), (inter,)), (".mlp.c_proj", (hidden, inter), (hidden,)),
            ("layernorm", (hidden,), (hidden,)), ("model.norm", (hidden,), (hidden,)),
            ("model.embed_tokens", (None, hidden), None), ("lm_head", (None, hidden), None),
        ):
            if stem.endswith(suffix):
                return weight if kind == "weight" else bias
        return None

    def to_target(self, model: Model, target: str, warn: Callable[[str], None] = lambda m: None
                  ) -> tuple[list[Tensor], dict[str, Any]]:
        out = super().to_target(model, target, warn)
        window = model.config.get("sliding_window")
        context = model.config.get("max_position_embeddings")
        if target == "gguf" and window and (not context or int(window) < int(context)):
            warn(f"sliding_window is {window}: llama.cpp's starcoder2 graph attends to the whole context, so its "
                 f"logits differ from transformers' beyond {window} tokens")
        return out

    # ---- GGUF --------------------------------------------------------------------------
    def gguf_rules(self, config: Config) -> Sequence[Rule]:
        return renames(ARCH, STARCODER2_LAYOUT)

    def gguf_meta(self, config: Config) -> dict[str, Any]:
        a = arch_name(ARCH)
        return {Keys.Rope.DIMENSION_COUNT.format(arch=a): self.head_dim(config), **rope_scaling_meta(config, a)}

    def gguf_config(self, meta: Config, config: dict[str, Any]) -> None:
        rope_scaling_config(meta, arch_name(ARCH), config)

    def layouts(self) -> dict[str, Layout]:
        return {"gguf": Layout(
            "gguf", arch_name(ARCH), self.gguf_rules, HPARAMS, extra_meta=self.gguf_meta, extra_config=self.gguf_config,
            # a GGUF does not say whether transformers used a window; none is the model llama.cpp ran
            config_base={"architectures": ["Starcoder2ForCausalLM"], "model_type": "starcoder2",
                         "hidden_act": "gelu_pytorch_tanh", "use_bias": True, "sliding_window": None},
        )}

    # ---- the reference forward pass ------------------------------------------------------
    def forward(self, model: Model, ids: Sequence[int], dtype: np.dtype) -> np.ndarray:
        cfg = model.config
        W = B.Weights(model, dtype, self.name)
        n_head, n_kv = self.heads(cfg)
        hd = self.head_dim(cfg)
        eps = float(cfg.get("norm_epsilon", 1e-5))
        act = B.activation(cfg.get("hidden_act"), "gelu_pytorch_tanh")
        n = len(ids)
        inv, pos_scale, attn_factor = B.rope_inv_freq(cfg, hd, dtype, seq_len=n)
        rope = B.Rotary(inv, n, dtype, pos_scale, attn_factor)
        window = cfg.get("sliding_window")
        allowed = B.causal_mask(n, int(window) if window else None)
        emb = W("model.embed_tokens.weight")
        h = emb[np.asarray(ids)]
        for i in range(self.n_layer(cfg)):
            p = f"model.layers.{i}."
            x = B.layer_norm(h, W(p + "input_layernorm.weight"), W(p + "input_layernorm.bias"), eps)
            q = B.linear(x, W(p + "self_attn.q_proj.weight"), W.opt(p + "self_attn.q_proj.bias"))
            k = B.linear(x, W(p + "self_attn.k_proj.weight"), W.opt(p + "self_attn.k_proj.bias"))
            v = B.linear(x, W(p + "self_attn.v_proj.weight"), W.opt(p + "self_attn.v_proj.bias"))
            q, k, v = rope(B.heads(q, n_head, hd)), rope(B.heads(k, n_kv, hd)), B.heads(v, n_kv, hd)
            a = B.attention(q, k, v, hd ** -0.5, allowed)
            h = h + B.linear(a, W(p + "self_attn.o_proj.weight"), W.opt(p + "self_attn.o_proj.bias"))
            x = B.layer_norm(h, W(p + "post_attention_layernorm.weight"), W(p + "post_attention_layernorm.bias"), eps)
            x = act(B.linear(x, W(p + "mlp.c_fc.weight"), W.opt(p + "mlp.c_fc.bias")))
            h = h + B.linear(x, W(p + "mlp.c_proj.weight"), W.opt(p + "mlp.c_proj.bias"))
        h = B.layer_norm(h, W("model.norm.weight"), W("model.norm.bias"), eps)
        return h @ (W("lm_head.weight") if W.has("lm_head.weight") else emb).T


@hookimpl
def register_architectures(register: Any) -> None:
    register(Starcoder2Architecture())
