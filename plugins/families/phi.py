"""The Phi families: Phi-3 (``Phi3ForCausalLM``, GGUF arch ``phi3``) and Phi-2 (``PhiForCausalLM``,
GGUF arch ``phi2``).

Phi-3 is a llama-like decoder whose HF checkpoint already fuses Q/K/V (``qkv_proj``) and gate/up
(``gate_up_proj``, gate first); llama.cpp keeps both fused (``attn_qkv``, ``ffn_up`` of twice the
feed-forward width), and rotates NeoX-style, so every tensor is a plain rename. LongRoPE scaling
(``rope_type`` ``longrope``, formerly ``su``) becomes two generated tensors, ``rope_factors_long``
and ``rope_factors_short`` (one factor per rotated pair), plus the original context length and the
attention factor as keys; they fold back into ``rope_parameters`` on the way out. transformers picks
the long factors once a sequence is longer than ``original_max_position_embeddings``; llama.cpp once
its context is (and it rounds contexts up to 256). llama.cpp also runs phi3 without the sliding
window transformers applies (``sliding_window``); the conversion warns when that matters.

Phi-2 runs attention and MLP in parallel off one LayerNorm, with biases everywhere (the output head
too), partial rotary embeddings (``partial_rotary_factor``, NeoX-style) and gelu_new.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from gguf import MODEL_ARCH, MODEL_TENSOR, Keys

from lmconv import blocks as B
from lmconv.architectures import Config, HParam, Layout, short_float
from lmconv.errors import InputError
from lmconv.hookspecs import hookimpl
from lmconv.ir import Model, Tensor
from lmconv.rules import Generated, Rule

from ._decoder import DecoderFamily, shape_of
from ._gguf import arch_name, decoder_hparams, renames, tensor_name

PHI3_LAYOUT = (
    "model.embed_tokens.weight",
    "model.layers.{bid}.input_layernorm.weight",
    "model.layers.{bid}.self_attn.qkv_proj.weight",
    "model.layers.{bid}.self_attn.o_proj.weight",
    "model.layers.{bid}.post_attention_layernorm.weight",
    "model.layers.{bid}.mlp.gate_up_proj.weight",
    "model.layers.{bid}.mlp.down_proj.weight",
    "model.norm.weight",
    "lm_head.weight",
)
PHI2_LAYOUT = (
    "model.embed_tokens.weight",
    "model.layers.{bid}.input_layernorm.weight",
    "model.layers.{bid}.input_layernorm.bias",
    "model.layers.{bid}.self_attn.q_proj.weight",
    "model.layers.{bid}.self_attn.q_proj.bias",
    "model.layers.{bid}.self_attn.k_proj.weight",
    "model.layers.{bid}.self_attn.k_proj.bias",
    "model.layers.{bid}.self_attn.v_proj.weight",
    "model.layers.{bid}.self_attn.v_proj.bias",
    "model.layers.{bid}.self_attn.dense.weight",
    "model.layers.{bid}.self_attn.dense.bias",
    "model.layers.{bid}.mlp.fc1.weight",
    "model.layers.{bid}.mlp.fc1.bias",
    "model.layers.{bid}.mlp.fc2.weight",
    "model.layers.{bid}.mlp.fc2.bias",
    "model.final_layernorm.weight",
    "model.final_layernorm.bias",
    "lm_head.weight",
    "lm_head.bias",
)
LONGROPE = ("longrope", "su", "yarn")  # transformers' Phi3Config reads the old "su" and "yarn" as longrope


class _PhiBase(DecoderFamily):
    """What Phi-2 and Phi-3 share: sizes, head checks, the rotated dimensions."""

    free_head_dim = False
    rope_types = None  # each checks its own

    def rope(self, config: Config) -> dict[str, Any]:
        return B.rope_params(config)

    def partial_rotary(self, config: Config) -> float:
        p = self.rope(config)
        return float(p.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)) or 1.0)

    def rope_dims(self, config: Config) -> int:
        """llama.cpp's ``rope.dimension_count``: the rotated dimensions of a head."""
        return int(self.head_dim(config) * self.partial_rotary(config))

    def meta_common(self, config: Config) -> dict[str, Any]:
        return {Keys.Rope.DIMENSION_COUNT.format(arch=arch_name(self.model_arch)): self.rope_dims(config)}

    def config_common(self, meta: Config, config: dict[str, Any]) -> None:
        """``partial_rotary_factor`` and ``rope_parameters`` from the rotated dimensions and base."""
        a = arch_name(self.model_arch)
        head_dim = int(config["hidden_size"]) // int(config["num_attention_heads"])
        n_rot = int(meta.get(Keys.Rope.DIMENSION_COUNT.format(arch=a), head_dim))
        theta = config.get("rope_theta", 10000.0)
        config["rope_parameters"] = {"rope_type": "default", "rope_theta": theta,
                                     "partial_rotary_factor": short_float(n_rot / head_dim)}


# =========================================================================== Phi-3
class Phi3Architecture(_PhiBase):
    name = "phi3"
    hf_architectures = ("Phi3ForCausalLM",)
    model_types = ("phi3",)
    model_arch = MODEL_ARCH.PHI3
    description = "Phi-3 (fused QKV and gate/up, RMSNorm, LongRoPE factors as tensors)"

    def rope(self, config: Config) -> dict[str, Any]:
        p = B.rope_params(config)
        if p["rope_type"] in LONGROPE:
            p["rope_type"] = "longrope"
        return p

    def original_context(self, config: Config) -> int:
        p = self.rope(config)
        return int(p.get("original_max_position_embeddings") or config.get("original_max_position_embeddings")
                   or config.get("max_position_embeddings") or 4096)

    def check_consistency(self, config: Config, origin: str | None) -> None:
        super().check_consistency(config, origin)
        p = self.rope(config)
        if p["rope_type"] not in ("default", "longrope"):
            raise InputError(f"rope type {p['rope_type']!r}: a phi3 model has default or longrope rotary embeddings",
                             path=origin)
        if p["rope_type"] == "longrope":
            half = self.rope_dims(config) // 2
            for key in ("long_factor", "short_factor"):
                f = p.get(key)
                if not isinstance(f, list) or len(f) != half or not all(isinstance(x, (int, float)) for x in f):
                    raise InputError(f"rope_parameters.{key} must be a list of {half} numbers (one per rotated pair) "
                                     "for longrope scaling", path=origin)

    def expected_shape(self, hf_name: str, config: Config) -> tuple[int | None, ...] | None:
        n_head, n_kv = self.heads(config)
        hidden, inter, size = config["hidden_size"], config["intermediate_size"], self.head_dim(config)
        q, kv = n_head * size, n_kv * size
        return shape_of(hf_name, (
            (".self_attn.qkv_proj", (q + 2 * kv, hidden), None), (".self_attn.o_proj", (hidden, q), None),
            (".mlp.gate_up_proj", (2 * inter, hidden), None), (".mlp.down_proj", (hidden, inter), None),
            ("layernorm", (hidden,), None), ("model.norm", (hidden,), None),
            ("model.embed_tokens", (None, hidden), None), ("lm_head", (None, hidden), None),
        ))

    def to_target(self, model: Model, target: str, warn: Callable[[str], None] = lambda m: None
                  ) -> tuple[list[Tensor], dict[str, Any]]:
        out = super().to_target(model, target, warn)
        window = model.config.get("sliding_window")
        context = model.config.get("max_position_embeddings")
        if target == "gguf" and window and (not context or int(window) < int(context)):
            warn(f"sliding_window is {window}: llama.cpp runs phi3 without a sliding window, so its logits differ "
                 f"from transformers' beyond {window} tokens")
        return out

    # ---- GGUF --------------------------------------------------------------------------
    def rope_factors(self, config: Config, key: str) -> np.ndarray | None:
        p = self.rope(config)
        if p["rope_type"] != "longrope" or not p.get(key):
            return None
        return np.asarray(p[key], dtype=np.float32)

    def fold_rope_factors(self, values: np.ndarray, config: Config, key: str) -> dict[str, Any]:
        values = np.asarray(values, dtype=np.float32).reshape(-1)
        mine = self.rope_factors(config, key)
        if mine is not None and mine.shape == values.shape and np.array_equal(mine, values):
            return {}
        half = self.rope_dims(config) // 2
        if values.size != half:
            raise InputError(f"{tensor_name(MODEL_TENSOR.ROPE_FACTORS_LONG if key == 'long_factor' else MODEL_TENSOR.ROPE_FACTORS_SHORT)} "
                             f"has {values.size} factors, not one per rotated pair ({half})")
        params = dict(config.get("rope_parameters") or {})
        params.setdefault("rope_theta", self.rope(config)["rope_theta"])
        params.update(rope_type="longrope", original_max_position_embeddings=self.original_context(config))
        params[key] = [short_float(x) for x in values]
        return {"rope_parameters": params}

    def gguf_rules(self, config: Config) -> Sequence[Rule]:
        rules: list[Rule] = [
            Generated(tensor_name(MODEL_TENSOR.ROPE_FACTORS_LONG), lambda c: self.rope_factors(c, "long_factor"),
                      lambda v, c: self.fold_rope_factors(v, c, "long_factor")),
            Generated(tensor_name(MODEL_TENSOR.ROPE_FACTORS_SHORT), lambda c: self.rope_factors(c, "short_factor"),
                      lambda v, c: self.fold_rope_factors(v, c, "short_factor")),
        ]
        return rules + renames(self.model_arch, PHI3_LAYOUT)

    def attention_factor(self, config: Config) -> float:
        """transformers' LongRoPE scale of cos/sin: the given one, else from max/original context."""
        p = self.rope(config)
        if p.get("attention_factor") is not None:
            return float(p["attention_factor"])
        orig = self.original_context(config)
        factor = p.get("factor")
        factor = float(factor) if factor is not None else float(config.get("max_position_embeddings") or orig) / orig
        return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(orig))

    def gguf_meta(self, config: Config) -> dict[str, Any]:
        a = arch_name(self.model_arch)
        kv = self.meta_common(config)
        kv[Keys.Rope.SCALING_ORIG_CTX_LEN.format(arch=a)] = self.original_context(config)
        # llama.cpp reads 0 as "no sliding window" (and runs phi3 without one in any case)
        kv[Keys.Attention.SLIDING_WINDOW.format(arch=a)] = int(config.get("sliding_window") or 0)
        if self.rope_factors(config, "long_factor") is not None:
            kv[Keys.Rope.SCALING_ATTN_FACTOR.format(arch=a)] = self.attention_factor(config)
        return kv

    def gguf_config(self, meta: Config, config: dict[str, Any]) -> None:
        a = arch_name(self.model_arch)
        self.config_common(meta, config)
        window = int(meta.get(Keys.Attention.SLIDING_WINDOW.format(arch=a)) or 0)
        config["sliding_window"] = window or None
        orig = int(config.get("original_max_position_embeddings") or config.get("max_position_embeddings") or 4096)
        config["original_max_position_embeddings"] = orig
        config["rope_parameters"]["original_max_position_embeddings"] = orig
        attn = meta.get(Keys.Rope.SCALING_ATTN_FACTOR.format(arch=a))
        if attn is not None:  # kept only when it is not the one transformers computes anyway
            probe = {**config, "rope_parameters": {**config["rope_parameters"], "rope_type": "longrope"}}
            if not math.isclose(float(attn), self.attention_factor(probe), rel_tol=1e-6):
                config["rope_parameters"]["attention_factor"] = short_float(attn)

    def layouts(self) -> dict[str, Layout]:
        hparams = decoder_hparams() + (
            HParam(Keys.Rope.SCALING_ORIG_CTX_LEN, "original_max_position_embeddings",
                   fallbacks=("rope_parameters.original_max_position_embeddings", "max_position_embeddings")),
        )
        return {"gguf": Layout(
            "gguf", arch_name(self.model_arch), self.gguf_rules, hparams,
            extra_meta=self.gguf_meta, extra_config=self.gguf_config,
            config_base={"architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "hidden_act": "silu",
                         "pad_token_id": None},  # Phi3Config's default of 32000 is no row of a smaller vocabulary
        )}

    # ---- the reference forward pass ------------------------------------------------------
    def forward(self, model: Model, ids: Sequence[int], dtype: np.dtype) -> np.ndarray:
        cfg = model.config
        W = B.Weights(model, dtype, self.name)
        n_head, n_kv = self.heads(cfg)
        hd = self.head_dim(cfg)
        q_size, kv_size = n_head * hd, n_kv * hd
        inter = int(cfg["intermediate_size"])
        eps = float(cfg.get("rms_norm_eps", 1e-5))
        act = B.activation(cfg.get("hidden_act"), "silu")
        n = len(ids)
        inv, pos_scale, attn_factor = B.rope_inv_freq(cfg, hd, dtype, params=self.rope(cfg), seq_len=n)
        rope = B.Rotary(inv, n, dtype, pos_scale, attn_factor)
        window = cfg.get("sliding_window")
        allowed = B.causal_mask(n, int(window) if window else None)
        emb = W("model.embed_tokens.weight")
        h = emb[np.asarray(ids)]
        for i in range(self.n_layer(cfg)):
            p = f"model.layers.{i}."
            x = B.rms_norm(h, W(p + "input_layernorm.weight"), eps)
            qkv = B.linear(x, W(p + "self_attn.qkv_proj.weight"))
            q, k, v = qkv[:, :q_size], qkv[:, q_size:q_size + kv_size], qkv[:, q_size + kv_size:]
            q, k, v = rope(B.heads(q, n_head, hd)), rope(B.heads(k, n_kv, hd)), B.heads(v, n_kv, hd)
            h = h + B.linear(B.attention(q, k, v, hd ** -0.5, allowed), W(p + "self_attn.o_proj.weight"))
            x = B.rms_norm(h, W(p + "post_attention_layernorm.weight"), eps)
            gu = B.linear(x, W(p + "mlp.gate_up_proj.weight"))
            h = h + B.linear(act(gu[:, :inter]) * gu[:, inter:], W(p + "mlp.down_proj.weight"))
        h = B.rms_norm(h, W("model.norm.weight"), eps)
        return h @ (W("lm_head.weight") if W.has("lm_head.weight") else emb).T


# =========================================================================== Phi-2
PHI2_HPARAMS = (
    HParam(Keys.LLM.VOCAB_SIZE, "vocab_size"),
    HParam(Keys.LLM.CONTEXT_LENGTH, "max_position_embeddings", default=2048, fallbacks=("n_positions",)),
    HParam(Keys.LLM.EMBEDDING_LENGTH, "hidden_size", required=True),
    HParam(Keys.LLM.BLOCK_COUNT, "num_hidden_layers", required=True),
    HParam(Keys.LLM.FEED_FORWARD_LENGTH, "intermediate_size", required=True),
    HParam(Keys.Attention.HEAD_COUNT, "num_attention_heads", required=True),
    HParam(Keys.Attention.HEAD_COUNT_KV, "num_key_value_heads", fallbacks=("num_attention_heads",)),
    HParam(Keys.Attention.LAYERNORM_EPS, "layer_norm_eps", float, default=1e-5),
    HParam(Keys.Rope.FREQ_BASE, "rope_theta", float, default=10000.0, fallbacks=("rope_parameters.rope_theta",)),
)


class PhiArchitecture(_PhiBase):
    name = "phi"
    hf_architectures = ("PhiForCausalLM",)
    model_types = ("phi",)
    model_arch = MODEL_ARCH.PHI2
    description = "Phi-1/1.5/2 (parallel attention and MLP off one LayerNorm, partial rotary, biases, gelu_new)"

    def partial_rotary(self, config: Config) -> float:
        p = B.rope_params(config)
        return float(p.get("partial_rotary_factor", config.get("partial_rotary_factor", 0.5)) or 0.5)

    def check_consistency(self, config: Config, origin: str | None) -> None:
        super().check_consistency(config, origin)
        if config.get("qk_layernorm"):
            raise InputError("qk_layernorm is set: llama.cpp's phi2 graph has no Q/K layer norms", path=origin)
        if B.rope_params(config)["rope_type"] != "default":
            raise InputError(f"rope type {B.rope_params(config)['rope_type']!r}: llama.cpp's phi2 graph runs plain "
                             "rotary embeddings only", path=origin)

    def expected_shape(self, hf_name: str, config: Config) -> tuple[int | None, ...] | None:
        n_head, n_kv = self.heads(config)
        hidden, inter, size = config["hidden_size"], config["intermediate_size"], self.head_dim(config)
        q, kv = n_head * size, n_kv * size
        return shape_of(hf_name, (
            (".self_attn.q_proj", (q, hidden), (q,)), (".self_attn.k_proj", (kv, hidden), (kv,)),
            (".self_attn.v_proj", (kv, hidden), (kv,)), (".self_attn.dense", (hidden, q), (hidden,)),
            (".mlp.fc1", (inter, hidden), (inter,)), (".mlp.fc2", (hidden, inter), (hidden,)),
            ("layernorm", (hidden,), (hidden,)),
            ("model.embed_tokens", (None, hidden), None), ("lm_head", (None, hidden), (None,)),
        ))

    def gguf_rules(self, config: Config) -> Sequence[Rule]:
        return renames(self.model_arch, PHI2_LAYOUT)

    def gguf_meta(self, config: Config) -> dict[str, Any]:
        # llama.cpp's converter marks Phi-2 vocabularies as adding no BOS token
        return {**self.meta_common(config), Keys.Tokenizer.ADD_BOS: False}

    def layouts(self) -> dict[str, Layout]:
        return {"gguf": Layout(
            "gguf", arch_name(self.model_arch), self.gguf_rules, PHI2_HPARAMS,
            extra_meta=self.gguf_meta, extra_config=self.config_common,
            requires_output=True,  # llama.cpp's phi2 graph needs output.weight even for a tied model
            config_base={"architectures": ["PhiForCausalLM"], "model_type": "phi", "hidden_act": "gelu_new",
                         "qk_layernorm": False},
        )}

    def forward(self, model: Model, ids: Sequence[int], dtype: np.dtype) -> np.ndarray:
        cfg = model.config
        W = B.Weights(model, dtype, self.name)
        n_head, n_kv = self.heads(cfg)
        hd = self.head_dim(cfg)
        eps = float(cfg.get("layer_norm_eps", 1e-5))
        act = B.activation(cfg.get("hidden_act"), "gelu_new")
        n = len(ids)
        params = {**B.rope_params(cfg), "partial_rotary_factor": self.partial_rotary(cfg)}
        inv, pos_scale, attn_factor = B.rope_inv_freq(cfg, hd, dtype, params=params, seq_len=n)
        rope = B.Rotary(inv, n, dtype, pos_scale, attn_factor)
        allowed = B.causal_mask(n)
        emb = W("model.embed_tokens.weight")
        h = emb[np.asarray(ids)]
        for i in range(self.n_layer(cfg)):
            p = f"model.layers.{i}."
            x = B.layer_norm(h, W(p + "input_layernorm.weight"), W(p + "input_layernorm.bias"), eps)
            q = B.linear(x, W(p + "self_attn.q_proj.weight"), W(p + "self_attn.q_proj.bias"))
            k = B.linear(x, W(p + "self_attn.k_proj.weight"), W(p + "self_attn.k_proj.bias"))
            v = B.linear(x, W(p + "self_attn.v_proj.weight"), W(p + "self_attn.v_proj.bias"))
            q, k, v = rope(B.heads(q, n_head, hd)), rope(B.heads(k, n_kv, hd)), B.heads(v, n_kv, hd)
            a = B.linear(B.attention(q, k, v, hd ** -0.5, allowed), W(p + "self_attn.dense.weight"),
                         W(p + "self_attn.dense.bias"))
            m = B.linear(act(B.linear(x, W(p + "mlp.fc1.weight"), W(p + "mlp.fc1.bias"))),
                         W(p + "mlp.fc2.weight"), W(p + "mlp.fc2.bias"))
            h = h + a + m
        h = B.layer_norm(h, W("model.final_layernorm.weight"), W("model.final_layernorm.bias"), eps)
        head = W("lm_head.weight") if W.has("lm_head.weight") else emb
        return B.linear(h, head, W.opt("lm_head.bias"))


@hookimpl
def register_architectures(register: Any) -> None:
    register(Phi3Architecture())
    register(PhiArchitecture())
