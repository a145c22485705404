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
from lmconv.architectures import Architecture, Config, Layout
from lmconv.errors import InputError
from lmconv.hookspecs import hookimpl
from lmconv.ir import Model, Tensor
from lmconv.rules import Rule

from ._gguf import arch_name, decoder_hparams, renames, rope_parameters, rope_scaling_config, rope_scaling_meta

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
ROPE_TYPES = ("default", "linear", "yarn")


class Olmo2Architecture(Architecture):
    name = "olmo2"
    hf_architectures = ("Olmo2ForCausalLM",)
    model_types = ("olmo2",)
    description = "OLMo 2 (norms after attention and MLP, Q/K RMSNorm over the whole projection)"
    hf_skip = ("rotary_emb.inv_freq",)
    hf_embedding = "model.embed_tokens.weight"
    required_ints = ("num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size", "vocab_size")
    optional_ints = ("num_key_value_heads", "head_dim", "max_position_embeddings")

    # ---- config ------------------------------------------------------------------------
    def heads(self, config: Config) -> tuple[int, int]:
        n_head = int(config["num_attention_heads"])
        return n_head, int(config.get("num_key_value_heads") or n_head)

    def head_dim(self, config: Config) -> int:
        return int(config["hidden_size"]) // int(config["num_attention_heads"])

    def check_consistency(self, config: Config, origin: str | None) -> None:
        n_head, n_kv = self.heads(config)
        hidden = config["hidden_size"]
        if hidden % n_head:
            raise InputError(f"hidden_size {hidden} is not a multiple of num_attention_heads {n_head}", path=origin)
        if config.get("head_dim") and config["head_dim"] != hidden // n_head:
            raise InputError(f"head_dim {config['head_dim']} is not hidden_size / num_attention_heads "
                             f"({hidden // n_head}); llama.cpp's olmo2 has no other head size", path=origin)
        if n_head % n_kv:
            raise InputError(f"num_attention_heads {n_head} is not a multiple of num_key_value_heads {n_kv}", path=origin)
        if self.head_dim(config) % 2:
            raise InputError(f"head size {self.head_dim(config)} is odd; rotary embeddings need an even one", path=origin)
        if config.get("attention_bias"):
            raise InputError("attention_bias is set: llama.cpp's olmo2 has no attention biases", path=origin)
        kind = rope_parameters(config)["rope_type"]
        if kind not in ROPE_TYPES:
            raise InputError(f"rope type {kind!r} is not one llama.cpp's olmo2 runs ({', '.join(ROPE_TYPES)})",
                             path=origin)

    def expected_shape(self, hf_name: str, config: Config) -> tuple[int | None, ...] | None:
        n_head, n_kv = self.heads(config)
        hidden, inter, size = config["hidden_size"], config["intermediate_size"], self.head_dim(config)
        q, kv = n_head * size, n_kv * size
        for suffix, shape in (
            (".self_attn.q_proj.weight", (q, hidden)), (".self_attn.k_proj.weight", (kv, hidden)),
            (".self_attn.v_proj.weight", (kv, hidden)), (".self_attn.o_proj.weight", (hidden, q)),
            (".self_attn.q_norm.weight", (q,)), (".self_attn.k_norm.weight", (kv,)),
            (".mlp.gate_proj.weight", (inter, hidden)), (".mlp.up_proj.weight", (inter, hidden)),
            (".mlp.down_proj.weight", (hidden, inter)), ("layernorm.weight", (hidden,)), ("model.norm.weight", (hidden,)),
            ("model.embed_tokens.weight", (None, hidden)), ("lm_head.weight", (None, hidden)),
        ):
            if hf_name.endswith(suffix):
                return shape
        return None

    def untied_tensors(self, model: Model) -> list[Tensor]:
        """llama.cpp's olmo2 requires ``output.weight``: a tied head is written as the embedding's copy."""
        out = super().untied_tensors(model)
        if not any(t.name == self.hf_output for t in out):
            emb = next((t for t in out if t.name == self.hf_embedding), None)
            if emb is not None:
                out.append(emb.replace(name=self.hf_output, aliases=()))
        return out

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
            extra_meta=self.gguf_meta, extra_config=self.gguf_config,
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
