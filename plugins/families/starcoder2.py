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
from lmconv.architectures import Config, HParam, Layout
from lmconv.errors import InputError
from lmconv.hookspecs import hookimpl
from lmconv.ir import Model, Tensor
from lmconv.rules import Rule

from ._decoder import DecoderFamily, Shape
from ._gguf import arch_name, renames, rope_scaling_config, rope_scaling_meta

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


class Starcoder2Architecture(DecoderFamily):
    name = "starcoder2"
    hf_architectures = ("Starcoder2ForCausalLM",)
    model_types = ("starcoder2",)
    description = "StarCoder2 (GQA, LayerNorm with biases, biased projections, GELU MLP, sliding window)"
    model_arch = ARCH
    optional_ints = ("num_key_value_heads", "head_dim", "max_position_embeddings", "sliding_window")
    free_head_dim = False

    def check_consistency(self, config: Config, origin: str | None) -> None:
        super().check_consistency(config, origin)
        if config.get("use_bias", True) is False:
            raise InputError("use_bias is false: llama.cpp's starcoder2 graph needs the norm, output and MLP biases",
                             path=origin)

    def shape_table(self, config: Config) -> list[tuple[str, Shape, Shape | None]]:
        """A two-matrix MLP (``c_fc``, ``c_proj``) and LayerNorms, all with biases."""
        hidden, inter = int(config["hidden_size"]), int(config["intermediate_size"])
        attention = [row for row in super().shape_table(config) if ".self_attn." in row[0] or "embed" in row[0]
                     or "lm_head" in row[0]]
        return [*attention, (".mlp.c_fc", (inter, hidden), (inter,)), (".mlp.c_proj", (hidden, inter), (hidden,)),
                ("layernorm", (hidden,), (hidden,)), ("model.norm", (hidden,), (hidden,))]

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
