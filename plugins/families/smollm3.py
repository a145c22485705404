"""SmolLM3 (``SmolLM3ForCausalLM``, GGUF arch ``smollm3``).

A Llama whose attention skips rotary embeddings on some layers ("NoPE"): ``no_rope_layers[i]`` is 0
for those, by default every ``no_rope_layer_interval``-th (4th) layer. llama.cpp has no key for it:
its smollm3 graph hard-codes "no rope on layer i when (i + 1) % 4 == 0", so a config whose pattern
differs (another interval, an explicit list) is refused on the way to GGUF, and a config read back
from GGUF lists that pattern. llama.cpp's smollm3 has no sliding window, no biases and no rope
factors tensor, so sliding layers, biases and llama3/longrope scaling are refused too. Rotary is the
normal (interleaved) kind: Q and K rows are permuted as for Llama, K with the KV head count.
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

from ._decoder import DecoderFamily
from ._gguf import (
    arch_name,
    decoder_hparams,
    rope_scaling_config,
    rope_scaling_meta,
)

ARCH = MODEL_ARCH.SMOLLM3
#: llama.cpp's smollm3: layer i has no rotary when (i + 1) % NO_ROPE_STEP == 0 (its n_no_rope_layer_step)
NO_ROPE_STEP = 4
ROPE_TYPES = ("default", "linear", "yarn")
SMOLLM3_LAYOUT = (
    "model.embed_tokens.weight",
    "model.layers.{bid}.input_layernorm.weight",
    "model.layers.{bid}.self_attn.q_proj.weight",
    "model.layers.{bid}.self_attn.k_proj.weight",
    "model.layers.{bid}.self_attn.v_proj.weight",
    "model.layers.{bid}.self_attn.o_proj.weight",
    "model.layers.{bid}.post_attention_layernorm.weight",
    "model.layers.{bid}.mlp.gate_proj.weight",
    "model.layers.{bid}.mlp.up_proj.weight",
    "model.layers.{bid}.mlp.down_proj.weight",
    "model.norm.weight",
    "lm_head.weight",
)


def rope_layers(config: Config, n_layer: int) -> list[bool]:
    """Which layers apply rotary embeddings, as transformers' SmolLM3Config derives them."""
    given = config.get("no_rope_layers")
    if isinstance(given, list):
        return [bool(x) for x in given]
    step = int(config.get("no_rope_layer_interval") or NO_ROPE_STEP)
    return [(i + 1) % step != 0 for i in range(n_layer)]


def sliding_layers(config: Config, n_layer: int) -> list[bool]:
    """Which layers attend within ``sliding_window`` (transformers: the NoPE ones, when enabled)."""
    if not (config.get("use_sliding_window") and config.get("sliding_window")):
        return [False] * n_layer
    types = config.get("layer_types")
    if isinstance(types, list):
        return [t == "sliding_attention" for t in types]
    return [not r for r in rope_layers(config, n_layer)]


class SmolLM3Architecture(DecoderFamily):
    name = "smollm3"
    hf_architectures = ("SmolLM3ForCausalLM",)
    model_types = ("smollm3",)
    description = "SmolLM3 (llama without rotary on every 4th layer)"
    model_arch = ARCH
    optional_ints = ("num_key_value_heads", "head_dim", "max_position_embeddings", "no_rope_layer_interval")
    rope_types = ROPE_TYPES
    refused_flags = ("attention_bias", "mlp_bias")

    # ---- config ------------------------------------------------------------------------
    def check_consistency(self, config: Config, origin: str | None) -> None:
        super().check_consistency(config, origin)
        n_layer = self.n_layer(config)
        given = config.get("no_rope_layers")
        if given is not None and (not isinstance(given, list) or len(given) != n_layer
                                  or any(x not in (0, 1) for x in given)):
            raise InputError(f"no_rope_layers must list 0 or 1 for each of the {n_layer} layers", path=origin)
        llama_cpp = [(i + 1) % NO_ROPE_STEP != 0 for i in range(n_layer)]
        if rope_layers(config, n_layer) != llama_cpp:
            raise InputError(f"no_rope_layers {[int(r) for r in rope_layers(config, n_layer)]} is not llama.cpp's "
                             f"smollm3 pattern (no rotary on every {NO_ROPE_STEP}th layer), which it cannot change",
                             path=origin)
        if any(sliding_layers(config, n_layer)):
            raise InputError(f"sliding-window layers (sliding_window {config.get('sliding_window')}): "
                             "llama.cpp's smollm3 has none", path=origin)

    # ---- GGUF --------------------------------------------------------------------------
    def gguf_rules(self, config: Config) -> Sequence[Rule]:
        return self.renamed(SMOLLM3_LAYOUT, permute_qk=True)

    def gguf_meta(self, config: Config) -> dict[str, Any]:
        a = arch_name(ARCH)
        n_head, _ = self.heads(config)
        size = self.head_dim(config)
        kv: dict[str, Any] = {Keys.Rope.DIMENSION_COUNT.format(arch=a): size}
        if size != int(config["hidden_size"]) // n_head:
            kv[Keys.Attention.KEY_LENGTH.format(arch=a)] = size
            kv[Keys.Attention.VALUE_LENGTH.format(arch=a)] = size
        kv.update(rope_scaling_meta(config, a))
        return kv

    def gguf_config(self, meta: Config, config: dict[str, Any]) -> None:
        a = arch_name(ARCH)
        config["head_dim"] = int(meta.get(Keys.Attention.KEY_LENGTH.format(arch=a),
                                          config["hidden_size"] // config["num_attention_heads"]))
        config["no_rope_layers"] = [int((i + 1) % NO_ROPE_STEP != 0) for i in range(config["num_hidden_layers"])]
        rope_scaling_config(meta, a, config)

    def layouts(self) -> dict[str, Layout]:
        return {"gguf": Layout(
            "gguf", arch_name(ARCH), self.gguf_rules, decoder_hparams(),
            extra_meta=self.gguf_meta, extra_config=self.gguf_config,
            config_base={"architectures": ["SmolLM3ForCausalLM"], "model_type": "smollm3", "hidden_act": "silu",
                         "no_rope_layer_interval": NO_ROPE_STEP, "use_sliding_window": False,
                         # transformers' defaults are Llama 3's ids, outside a smaller vocabulary: the
                         # tokenizer's own (when the GGUF has them) replace these
                         "bos_token_id": None, "eos_token_id": None, "pad_token_id": None},
        )}

    # ---- the reference forward pass ------------------------------------------------------
    def forward(self, model: Model, ids: Sequence[int], dtype: np.dtype) -> np.ndarray:
        cfg = model.config
        W = B.Weights(model, dtype, self.name)
        n_head, n_kv = self.heads(cfg)
        head_dim = self.head_dim(cfg)
        n_layer = self.n_layer(cfg)
        eps = float(cfg.get("rms_norm_eps", 1e-6))
        act = B.activation(cfg.get("hidden_act"), "silu")
        n = len(ids)
        inv, pos_scale, attn_factor = B.rope_inv_freq(cfg, head_dim, dtype, seq_len=n)
        rope = B.Rotary(inv, n, dtype, pos_scale, attn_factor)
        with_rope, sliding = rope_layers(cfg, n_layer), sliding_layers(cfg, n_layer)
        full, windowed = B.causal_mask(n), B.causal_mask(n, int(cfg.get("sliding_window") or 0) or None)
        emb_w = W("model.embed_tokens.weight")
        h = emb_w[np.asarray(ids)]
        for i in range(n_layer):
            p = f"model.layers.{i}."
            x = B.rms_norm(h, W(p + "input_layernorm.weight"), eps)
            q = B.linear(x, W(p + "self_attn.q_proj.weight"), W.opt(p + "self_attn.q_proj.bias"))
            k = B.linear(x, W(p + "self_attn.k_proj.weight"), W.opt(p + "self_attn.k_proj.bias"))
            v = B.linear(x, W(p + "self_attn.v_proj.weight"), W.opt(p + "self_attn.v_proj.bias"))
            q, k, v = B.heads(q, n_head, head_dim), B.heads(k, n_kv, head_dim), B.heads(v, n_kv, head_dim)
            if with_rope[i]:
                q, k = rope(q), rope(k)
            a = B.attention(q, k, v, head_dim ** -0.5, windowed if sliding[i] else full)
            h = h + B.linear(a, W(p + "self_attn.o_proj.weight"), W.opt(p + "self_attn.o_proj.bias"))
            x = B.rms_norm(h, W(p + "post_attention_layernorm.weight"), eps)
            g = B.linear(x, W(p + "mlp.gate_proj.weight"), W.opt(p + "mlp.gate_proj.bias"))
            u = B.linear(x, W(p + "mlp.up_proj.weight"), W.opt(p + "mlp.up_proj.bias"))
            h = h + B.linear(act(g) * u, W(p + "mlp.down_proj.weight"), W.opt(p + "mlp.down_proj.bias"))
        h = B.rms_norm(h, W("model.norm.weight"), eps)
        head = W("lm_head.weight") if W.has("lm_head.weight") else emb_w
        return h @ head.T


@hookimpl
def register_architectures(register: Any) -> None:
    register(SmolLM3Architecture())
