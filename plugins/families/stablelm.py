"""StableLM (``StableLmForCausalLM``, GGUF arch ``stablelm``).

A decoder with LayerNorms (weight and bias), SwiGLU MLP, partial NeoX-style rotary embeddings
(``partial_rotary_factor``, 0.25 by default), optional Q/K/V biases (``use_qkv_bias``), optional
per-head LayerNorms of Q and K (``qk_layernorm``: one LayerNorm per head in HF, stacked into one
``[heads, head_dim]`` tensor in llama.cpp), and optionally a parallel residual (attention and MLP
both read the input LayerNorm; no ``post_attention_layernorm``: llama.cpp takes the missing
``ffn_norm`` as that). A GGUF read back says which of these it has by its tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gguf import MODEL_ARCH, MODEL_TENSOR, Keys

from lmconv import blocks as B
from lmconv.architectures import Config, HParam, Layout, short_float
from lmconv.hookspecs import hookimpl
from lmconv.ir import Model, Tensor
from lmconv.rules import Rule, Stack

from ._decoder import DecoderFamily, Shape
from ._gguf import arch_name, renames, tensor_name

ARCH = MODEL_ARCH.STABLELM
STABLELM_LAYOUT = (
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
    "model.layers.{bid}.post_attention_layernorm.weight",
    "model.layers.{bid}.post_attention_layernorm.bias",
    "model.layers.{bid}.mlp.gate_proj.weight",
    "model.layers.{bid}.mlp.up_proj.weight",
    "model.layers.{bid}.mlp.down_proj.weight",
    "model.norm.weight",
    "model.norm.bias",
    "lm_head.weight",
)
Q_NORMS = "model.layers.{bid}.self_attn.q_layernorm.norms.{xid}.weight"
K_NORMS = "model.layers.{bid}.self_attn.k_layernorm.norms.{xid}.weight"
HPARAMS = (
    HParam(Keys.LLM.VOCAB_SIZE, "vocab_size"),
    HParam(Keys.LLM.CONTEXT_LENGTH, "max_position_embeddings", default=4096),
    HParam(Keys.LLM.EMBEDDING_LENGTH, "hidden_size", required=True),
    HParam(Keys.LLM.BLOCK_COUNT, "num_hidden_layers", required=True),
    HParam(Keys.LLM.FEED_FORWARD_LENGTH, "intermediate_size", required=True),
    HParam(Keys.Attention.HEAD_COUNT, "num_attention_heads", required=True),
    HParam(Keys.Attention.HEAD_COUNT_KV, "num_key_value_heads", fallbacks=("num_attention_heads",)),
    HParam(Keys.Attention.LAYERNORM_EPS, "layer_norm_eps", float, default=1e-5),
    HParam(Keys.Rope.FREQ_BASE, "rope_theta", float, default=10000.0, fallbacks=("rope_parameters.rope_theta",)),
    HParam(Keys.LLM.USE_PARALLEL_RESIDUAL, "use_parallel_residual", bool, default=False),
)


class StableLmArchitecture(DecoderFamily):
    name = "stablelm"
    hf_architectures = ("StableLmForCausalLM",)
    model_types = ("stablelm",)
    description = "StableLM 2 (LayerNorm, partial rotary, optional QKV bias, per-head Q/K norms, parallel residual)"
    model_arch = ARCH
    free_head_dim = False
    rope_types = ("default",)  # lmconv converts stablelm with plain rotary embeddings only

    def rope_dims(self, config: Config) -> int:
        p = B.rope_params(config)
        partial = float(p.get("partial_rotary_factor", config.get("partial_rotary_factor", 0.25)) or 0.25)
        return int(self.head_dim(config) * partial)

    def shape_table(self, config: Config) -> list[tuple[str, Shape, Shape | None]]:
        """LayerNorms with biases; an MLP without."""
        hidden, inter = int(config["hidden_size"]), int(config["intermediate_size"])
        table = [row for row in super().shape_table(config) if "norm" not in row[0] and ".mlp." not in row[0]]
        return [*table, (".mlp.gate_proj", (inter, hidden), None), (".mlp.up_proj", (inter, hidden), None),
                (".mlp.down_proj", (hidden, inter), None), ("layernorm", (hidden,), (hidden,)),
                ("model.norm", (hidden,), (hidden,))]

    def expected_shape(self, hf_name: str, config: Config) -> Shape | None:
        if "_layernorm.norms." in hf_name:  # one Q/K norm per head
            return (self.head_dim(config),)
        return super().expected_shape(hf_name, config)

    # ---- GGUF --------------------------------------------------------------------------
    def gguf_rules(self, config: Config) -> Sequence[Rule]:
        return renames(ARCH, STABLELM_LAYOUT) + [
            Stack(Q_NORMS, tensor_name(MODEL_TENSOR.ATTN_Q_NORM), count=lambda c: self.heads(c)[0]),
            Stack(K_NORMS, tensor_name(MODEL_TENSOR.ATTN_K_NORM), count=lambda c: self.heads(c)[1]),
        ]

    def gguf_meta(self, config: Config) -> dict[str, Any]:
        return {Keys.Rope.DIMENSION_COUNT.format(arch=arch_name(ARCH)): self.rope_dims(config)}

    def gguf_config(self, meta: Config, config: dict[str, Any]) -> None:
        head_dim = int(config["hidden_size"]) // int(config["num_attention_heads"])
        n_rot = int(meta.get(Keys.Rope.DIMENSION_COUNT.format(arch=arch_name(ARCH)), head_dim // 4))
        config["rope_parameters"] = {"rope_type": "default", "rope_theta": config.get("rope_theta", 10000.0),
                                     "partial_rotary_factor": short_float(n_rot / head_dim)}

    def from_target(self, tensors: Sequence[Tensor], config: dict[str, Any], target: str,
                    origin: str | None = None) -> tuple[list[Tensor], dict[str, Any]]:
        """The optional parts (Q/K/V biases, Q/K norms, the FFN norm of a sequential residual) come
        from the tensors the file has."""
        if target == "gguf":
            names = {t.name for t in tensors}

            def has(kind: MODEL_TENSOR, suffix: str = ".weight") -> bool:
                return tensor_name(kind, suffix).format(bid=0) in names

            config = {**config, "use_qkv_bias": has(MODEL_TENSOR.ATTN_Q, ".bias"),
                      "qk_layernorm": has(MODEL_TENSOR.ATTN_Q_NORM),
                      "use_parallel_residual": not has(MODEL_TENSOR.FFN_NORM)}
        return super().from_target(tensors, config, target, origin)

    def layouts(self) -> dict[str, Layout]:
        return {"gguf": Layout(
            "gguf", arch_name(ARCH), self.gguf_rules, HPARAMS, extra_meta=self.gguf_meta, extra_config=self.gguf_config,
            requires_output=True,
            config_base={"architectures": ["StableLmForCausalLM"], "model_type": "stablelm", "hidden_act": "silu"},
        )}

    # ---- the reference forward pass ------------------------------------------------------
    def forward(self, model: Model, ids: Sequence[int], dtype: np.dtype) -> np.ndarray:
        cfg = model.config
        W = B.Weights(model, dtype, self.name)
        n_head, n_kv = self.heads(cfg)
        hd = self.head_dim(cfg)
        eps = float(cfg.get("layer_norm_eps", 1e-5))
        act = B.activation(cfg.get("hidden_act"), "silu")
        n = len(ids)
        params = {**B.rope_params(cfg), "partial_rotary_factor": self.rope_dims(cfg) / hd}
        inv, pos_scale, attn_factor = B.rope_inv_freq(cfg, hd, dtype, params=params, seq_len=n)
        rope = B.Rotary(inv, n, dtype, pos_scale, attn_factor)
        allowed = B.causal_mask(n)
        parallel = bool(cfg.get("use_parallel_residual"))

        def head_norm(x: np.ndarray, pattern: str, count: int, p: str) -> np.ndarray:
            w = np.stack([W(pattern.format(bid=p, xid=j)) for j in range(count)])
            return B.layer_norm(x, None, None, eps) * w[:, None, :]

        emb = W("model.embed_tokens.weight")
        h = emb[np.asarray(ids)]
        for i in range(self.n_layer(cfg)):
            p = f"model.layers.{i}."
            x = B.layer_norm(h, W(p + "input_layernorm.weight"), W(p + "input_layernorm.bias"), eps)
            q = B.heads(B.linear(x, W(p + "self_attn.q_proj.weight"), W.opt(p + "self_attn.q_proj.bias")), n_head, hd)
            k = B.heads(B.linear(x, W(p + "self_attn.k_proj.weight"), W.opt(p + "self_attn.k_proj.bias")), n_kv, hd)
            v = B.heads(B.linear(x, W(p + "self_attn.v_proj.weight"), W.opt(p + "self_attn.v_proj.bias")), n_kv, hd)
            if cfg.get("qk_layernorm"):
                q, k = head_norm(q, Q_NORMS, n_head, str(i)), head_norm(k, K_NORMS, n_kv, str(i))
            a = B.linear(B.attention(rope(q), rope(k), v, hd ** -0.5, allowed), W(p + "self_attn.o_proj.weight"),
                         W.opt(p + "self_attn.o_proj.bias"))
            if not parallel:
                h = h + a
                x = B.layer_norm(h, W(p + "post_attention_layernorm.weight"), W(p + "post_attention_layernorm.bias"), eps)
            m = B.linear(act(B.linear(x, W(p + "mlp.gate_proj.weight"))) * B.linear(x, W(p + "mlp.up_proj.weight")),
                         W(p + "mlp.down_proj.weight"))
            h = h + a + m if parallel else h + m
        h = B.layer_norm(h, W("model.norm.weight"), W("model.norm.bias"), eps)
        return h @ (W("lm_head.weight") if W.has("lm_head.weight") else emb).T


@hookimpl
def register_architectures(register: Any) -> None:
    register(StableLmArchitecture())
