"""IBM Granite 3 (``GraniteForCausalLM``, GGUF arch ``granite``).

A Llama with four scalars: the token embeddings are multiplied by ``embedding_multiplier``, each
attention and MLP output by ``residual_multiplier`` before it joins the residual stream, attention
scores are scaled by ``attention_multiplier`` (instead of 1/sqrt(head size)), and the logits are
divided by ``logits_scaling``. llama.cpp reads them as ``{arch}.embedding_scale``,
``{arch}.residual_scale``, ``{arch}.attention.scale`` and ``{arch}.logit_scale`` (the last one
required; a missing or zero attention scale means 1/sqrt(head size) there). Its rotary is the
normal (interleaved) kind, so Q and K rows are permuted as for Llama, K with the KV head count;
llama3 rope scaling becomes a ``rope_freqs`` tensor. llama.cpp's converter ignores ``head_dim``, so
a head size other than ``hidden_size / num_attention_heads`` is refused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from gguf import MODEL_ARCH, Keys

from lmconv import blocks as B
from lmconv.architectures import Config, HParam, Layout, short_float
from lmconv.hookspecs import hookimpl
from lmconv.ir import Model
from lmconv.rules import Rule

from ._decoder import DecoderFamily
from ._gguf import (
    arch_name,
    decoder_hparams,
    rope_scaling_config,
    rope_scaling_meta,
)

ARCH = MODEL_ARCH.GRANITE
GRANITE_LAYOUT = (
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
    "model.layers.{bid}.mlp.gate_proj.bias",
    "model.layers.{bid}.mlp.up_proj.weight",
    "model.layers.{bid}.mlp.up_proj.bias",
    "model.layers.{bid}.mlp.down_proj.weight",
    "model.layers.{bid}.mlp.down_proj.bias",
    "model.norm.weight",
    "lm_head.weight",
)
#: the multipliers and the GGUF keys llama.cpp reads them from (HF's default for each is 1.0)
SCALES = (
    HParam(Keys.LLM.EMBEDDING_SCALE, "embedding_multiplier", float, default=1.0),
    HParam(Keys.LLM.RESIDUAL_SCALE, "residual_multiplier", float, default=1.0),
    HParam(Keys.LLM.LOGIT_SCALE, "logits_scaling", float, default=1.0),
)
#: rope types llama.cpp's granite graph runs (keys for linear/yarn, a rope_freqs tensor for llama3)
ROPE_TYPES = ("default", "linear", "yarn", "llama3")


class GraniteArchitecture(DecoderFamily):
    name = "granite"
    hf_architectures = ("GraniteForCausalLM",)
    model_types = ("granite",)
    description = "IBM Granite 3 (llama with embedding, residual, attention and logit multipliers)"
    model_arch = ARCH
    free_head_dim = False  # llama.cpp's converter ignores head_dim
    rope_types = ROPE_TYPES

    # ---- GGUF --------------------------------------------------------------------------
    def gguf_rules(self, config: Config) -> Sequence[Rule]:
        return [self.rope_freqs_rule(), *self.renamed(GRANITE_LAYOUT, permute_qk=True)]

    def gguf_meta(self, config: Config) -> dict[str, Any]:
        a = arch_name(ARCH)
        scale = config.get("attention_multiplier", 1.0)
        kv: dict[str, Any] = {Keys.Rope.DIMENSION_COUNT.format(arch=a): self.head_dim(config),
                              Keys.Attention.SCALE.format(arch=a): float(1.0 if scale is None else scale)}
        kv.update(rope_scaling_meta(config, a))
        return kv

    def gguf_config(self, meta: Config, config: dict[str, Any]) -> None:
        a = arch_name(ARCH)
        scale = float(meta.get(Keys.Attention.SCALE.format(arch=a)) or 0.0)
        # llama.cpp: no attention scale (or 0) means 1/sqrt(head size); HF's default would be 1
        config["attention_multiplier"] = short_float(scale) if scale else 1.0 / math.sqrt(self.head_dim(config))
        for hp in SCALES[:2]:  # 0 means "no scaling" to llama.cpp, a factor of 1
            if not config.get(hp.config):
                config[hp.config] = 1.0
        rope_scaling_config(meta, a, config)

    def layouts(self) -> dict[str, Layout]:
        return {"gguf": Layout(
            "gguf", arch_name(ARCH), self.gguf_rules, (*decoder_hparams(), *SCALES),
            extra_meta=self.gguf_meta, extra_config=self.gguf_config,
            config_base={"architectures": ["GraniteForCausalLM"], "model_type": "granite", "hidden_act": "silu"},
        )}

    # ---- the reference forward pass ------------------------------------------------------
    def forward(self, model: Model, ids: Sequence[int], dtype: np.dtype) -> np.ndarray:
        cfg = model.config
        W = B.Weights(model, dtype, self.name)
        n_head, n_kv = self.heads(cfg)
        head_dim = self.head_dim(cfg)
        eps = float(cfg.get("rms_norm_eps", 1e-6))
        act = B.activation(cfg.get("hidden_act"), "silu")
        emb_mult, res_mult, logit_div = (float(cfg.get(hp.config, 1.0)) for hp in SCALES)
        scale = float(cfg.get("attention_multiplier", 1.0))
        n = len(ids)
        inv, pos_scale, attn_factor = B.rope_inv_freq(cfg, head_dim, dtype, seq_len=n)
        rope = B.Rotary(inv, n, dtype, pos_scale, attn_factor)
        allowed = B.causal_mask(n)
        emb_w = W("model.embed_tokens.weight")
        h = emb_w[np.asarray(ids)] * emb_mult
        for i in range(self.n_layer(cfg)):
            p = f"model.layers.{i}."
            x = B.rms_norm(h, W(p + "input_layernorm.weight"), eps)
            q = B.linear(x, W(p + "self_attn.q_proj.weight"), W.opt(p + "self_attn.q_proj.bias"))
            k = B.linear(x, W(p + "self_attn.k_proj.weight"), W.opt(p + "self_attn.k_proj.bias"))
            v = B.linear(x, W(p + "self_attn.v_proj.weight"), W.opt(p + "self_attn.v_proj.bias"))
            q, k, v = rope(B.heads(q, n_head, head_dim)), rope(B.heads(k, n_kv, head_dim)), B.heads(v, n_kv, head_dim)
            a = B.attention(q, k, v, scale, allowed)
            h = h + B.linear(a, W(p + "self_attn.o_proj.weight"), W.opt(p + "self_attn.o_proj.bias")) * res_mult
            x = B.rms_norm(h, W(p + "post_attention_layernorm.weight"), eps)
            g = B.linear(x, W(p + "mlp.gate_proj.weight"), W.opt(p + "mlp.gate_proj.bias"))
            u = B.linear(x, W(p + "mlp.up_proj.weight"), W.opt(p + "mlp.up_proj.bias"))
            h = h + B.linear(act(g) * u, W(p + "mlp.down_proj.weight"), W.opt(p + "mlp.down_proj.bias")) * res_mult
        h = B.rms_norm(h, W("model.norm.weight"), eps)
        head = W("lm_head.weight") if W.has("lm_head.weight") else emb_w
        return (h @ head.T) / logit_div


@hookimpl
def register_architectures(register: Any) -> None:
    register(GraniteArchitecture())
