"""OLMo 2 (``Olmo2ForCausalLM``, GGUF arch ``olmo2``).

Unlike Llama, OLMo 2 normalises after each sublayer, not before: the residual stream enters
attention and the MLP as it is, and their outputs pass ``post_attention_layernorm`` and
``post_feedforward_layernorm`` (llama.cpp's ``post_attention_norm`` and ``post_ffw_norm``) before
they join it. Q and K are RMS-normalised over the whole projection (all heads at once:
``q_norm`` has ``n_head · head_dim`` weights), before rotary. llama.cpp runs it with NeoX-style
rotary, so no row permutation; its olmo2 graph requires an ``output.weight``, so a tied head is
written out as a copy of the embedding. It knows no head size other than
``hidden_size / num_attention_heads`` and no attention biases: those are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gguf import MODEL_ARCH, Keys

from lmconv import blocks as B
from lmconv.architectures import Config, Layout
from lmconv.errors import InputError
from lmconv.hookspecs import hookimpl
from lmconv.ir import Model
from lmconv.rules import Rule

from ._decoder import DecoderFamily, Shape
from ._gguf import arch_name, decoder_hparams, renames, rope_scaling_config, rope_scaling_meta

ARCH = MODEL_ARCH.OLMO2
OLMO2_LAYOUT = (
    "model.embed_tokens.weight",
    "model.layers.{bid}.self_attn.q_proj.weight",
    "model.layers.{bid}.self_attn.k_proj.weight",
    "model.layers.{bid}.self_attn.v_proj.weight",
    "model.layers.{bid}.self_attn.o_proj.weight",
    "model.layers.{bid}.self_attn.q_norm.weight",
    "model.layers.{bid}.self_attn.k_norm.weight",
    "model.layers.{bid}.post_attention_layernorm.weight",
    "model.layers.{bid}.mlp.gate_proj.weight",
    "model.layers.{bid}.mlp.up_proj.weight",
    "model.layers.{bid}.mlp.down_proj.weight",
    "model.layers.{bid}.post_feedforward_layernorm.weight",
    "model.norm.weight",
    "lm_head.weight",
)


class Olmo2Architecture(DecoderFamily):
    name = "olmo2"
    hf_architectures = ("Olmo2ForCausalLM",)
    model_types = ("olmo2",)
    description = "OLMo 2 (norms after attention and MLP, Q/K RMSNorm over the whole projection)"
    model_arch = ARCH
    free_head_dim = False
    refused_flags = ("attention_bias",)

    def shape_table(self, config: Config) -> list[tuple[str, Shape, Shape | None]]:
        n_head, n_kv = self.heads(config)
        size = self.head_dim(config)
        return [(".self_attn.q_norm", (n_head * size,), None), (".self_attn.k_norm", (n_kv * size,), None),
                *super().shape_table(config)]

    # ---- GGUF --------------------------------------------------------------------------
    def gguf_rules(self, config: Config) -> Sequence[Rule]:
        return renames(ARCH, OLMO2_LAYOUT)

    def gguf_meta(self, config: Config) -> dict[str, Any]:
        a = arch_name(ARCH)
        return {Keys.Rope.DIMENSION_COUNT.format(arch=a): self.head_dim(config), **rope_scaling_meta(config, a)}

    def gguf_config(self, meta: Config, config: dict[str, Any]) -> None:
        a = arch_name(ARCH)
        if meta.get(Keys.Attention.SLIDING_WINDOW.format(arch=a)):
            # llama.cpp's converter writes OLMo 3 (sliding-window layers) under this arch too
            raise InputError(f"{Keys.Attention.SLIDING_WINDOW.format(arch=a)} is set: an OLMo 3 model, which "
                             "lmconv does not convert (its olmo2 family has no sliding window)")
        rope_scaling_config(meta, a, config)

    def layouts(self) -> dict[str, Layout]:
        return {"gguf": Layout(
            "gguf", arch_name(ARCH), self.gguf_rules, decoder_hparams(),
            extra_meta=self.gguf_meta, extra_config=self.gguf_config, requires_output=True,
            config_base={"architectures": ["Olmo2ForCausalLM"], "model_type": "olmo2", "hidden_act": "silu",
                         "attention_bias": False,
                         # transformers' defaults are OLMo's own ids: the tokenizer's (when given) replace them
                         "bos_token_id": None, "eos_token_id": None, "pad_token_id": None},
        )}

    # ---- the reference forward pass ------------------------------------------------------
    def forward(self, model: Model, ids: Sequence[int], dtype: np.dtype) -> np.ndarray:
        cfg = model.config
        W = B.Weights(model, dtype, self.name)
        n_head, n_kv = self.heads(cfg)
        head_dim = self.head_dim(cfg)
        eps = float(cfg.get("rms_norm_eps", 1e-5))
        act = B.activation(cfg.get("hidden_act"), "silu")
        n = len(ids)
        inv, pos_scale, attn_factor = B.rope_inv_freq(cfg, head_dim, dtype, seq_len=n)
        rope = B.Rotary(inv, n, dtype, pos_scale, attn_factor)
        allowed = B.causal_mask(n)
        emb_w = W("model.embed_tokens.weight")
        h = emb_w[np.asarray(ids)]
        for i in range(self.n_layer(cfg)):
            p = f"model.layers.{i}."
            q = B.rms_norm(B.linear(h, W(p + "self_attn.q_proj.weight")), W(p + "self_attn.q_norm.weight"), eps)
            k = B.rms_norm(B.linear(h, W(p + "self_attn.k_proj.weight")), W(p + "self_attn.k_norm.weight"), eps)
            v = B.linear(h, W(p + "self_attn.v_proj.weight"))
            q, k, v = rope(B.heads(q, n_head, head_dim)), rope(B.heads(k, n_kv, head_dim)), B.heads(v, n_kv, head_dim)
            a = B.linear(B.attention(q, k, v, head_dim ** -0.5, allowed), W(p + "self_attn.o_proj.weight"))
            h = h + B.rms_norm(a, W(p + "post_attention_layernorm.weight"), eps)
            g = B.linear(h, W(p + "mlp.gate_proj.weight"))
            u = B.linear(h, W(p + "mlp.up_proj.weight"))
            m = B.linear(act(g) * u, W(p + "mlp.down_proj.weight"))
            h = h + B.rms_norm(m, W(p + "post_feedforward_layernorm.weight"), eps)
        h = B.rms_norm(h, W("model.norm.weight"), eps)
        head = W("lm_head.weight") if W.has("lm_head.weight") else emb_w
        return h @ head.T


@hookimpl
def register_architectures(register: Any) -> None:
    register(Olmo2Architecture())
