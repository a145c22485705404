"""GPT-2 (``GPT2LMHeadModel``, GGUF arch ``gpt2``).

HF GPT-2 stores its projections as Conv1D, ``[in, out]``; llama.cpp wants the usual ``[out, in]``
(numpy order), so those four weights are transposed both ways. The causal-mask buffers
(``attn.bias``, ``attn.masked_bias``) are not weights and are left out; the output projection is
tied to the token embedding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gguf import MODEL_ARCH, Keys

from lmconv import blocks as B
from lmconv.architectures import Architecture, Config, HParam, Layout
from lmconv.errors import InputError, UsageError
from lmconv.hookspecs import hookimpl
from lmconv.ir import Model
from lmconv.rules import Rule, Transpose

from ._gguf import arch_name, gguf_name, renames

GPT2_LAYOUT = (
    "transformer.wte.weight",
    "transformer.wpe.weight",
    "transformer.h.{bid}.ln_1.weight",
    "transformer.h.{bid}.ln_1.bias",
    "transformer.h.{bid}.attn.c_attn.weight",
    "transformer.h.{bid}.attn.c_attn.bias",
    "transformer.h.{bid}.attn.c_proj.weight",
    "transformer.h.{bid}.attn.c_proj.bias",
    "transformer.h.{bid}.ln_2.weight",
    "transformer.h.{bid}.ln_2.bias",
    "transformer.h.{bid}.mlp.c_fc.weight",
    "transformer.h.{bid}.mlp.c_fc.bias",
    "transformer.h.{bid}.mlp.c_proj.weight",
    "transformer.h.{bid}.mlp.c_proj.bias",
    "transformer.ln_f.weight",
    "transformer.ln_f.bias",
    "lm_head.weight",
)
CONV1D = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")
HPARAMS = (
    HParam(Keys.LLM.VOCAB_SIZE, "vocab_size"),
    HParam(Keys.LLM.CONTEXT_LENGTH, "n_positions", default=1024, fallbacks=("n_ctx",)),
    HParam(Keys.LLM.EMBEDDING_LENGTH, "n_embd", required=True),
    HParam(Keys.LLM.BLOCK_COUNT, "n_layer", required=True),
    HParam(Keys.Attention.HEAD_COUNT, "n_head", required=True),
    HParam(Keys.Attention.LAYERNORM_EPS, "layer_norm_epsilon", float, default=1e-5),
)


class GPT2Architecture(Architecture):
    name = "gpt2"
    hf_architectures = ("GPT2LMHeadModel",)
    model_types = ("gpt2",)
    description = "GPT-2 (LayerNorm, GELU, learned positions, Conv1D projections)"
    hf_skip = (".attn.bias", ".attn.masked_bias")
    hf_embedding = "transformer.wte.weight"
    required_ints = ("n_layer", "n_head", "n_embd", "vocab_size")
    optional_ints = ("n_inner", "n_positions", "n_ctx")

    def expected_shape(self, hf_name: str, config: Config) -> tuple[int | None, ...] | None:
        """Conv1D weights are [in, out]."""
        e = config["n_embd"]
        inner = config.get("n_inner") or 4 * e
        kind = hf_name.rsplit(".", 1)[-1]
        for suffix, weight, bias in (
            (".attn.c_attn", (e, 3 * e), (3 * e,)), (".attn.c_proj", (e, e), (e,)),
            (".mlp.c_fc", (e, inner), (inner,)), (".mlp.c_proj", (inner, e), (e,)),
            (".ln_1", (e,), (e,)), (".ln_2", (e,), (e,)), ("transformer.ln_f", (e,), (e,)),
            ("transformer.wte", (None, e), None), ("transformer.wpe", (None, e), None), ("lm_head", (None, e), None),
        ):
            if hf_name.removesuffix("." + kind).endswith(suffix):
                return weight if kind == "weight" else bias
        return None

    def check_consistency(self, config: Config, origin: str | None) -> None:
        if config["n_embd"] % config["n_head"]:
            raise InputError(f"n_embd {config['n_embd']} is not a multiple of n_head {config['n_head']}", path=origin)

    def infer_config(self, model: Model) -> dict[str, Any]:
        """Everything but the head count is in the shapes (Conv1D c_fc is [n_embd, n_inner])."""
        t = model.tensors
        wte, wpe, fc = t.get("transformer.wte.weight"), t.get("transformer.wpe.weight"), t.get("transformer.h.0.mlp.c_fc.weight")
        if wte is None or wpe is None or fc is None:
            return {}
        layers = {n.split(".")[2] for n in t if n.startswith("transformer.h.")}
        n_embd = wte.shape[1]
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": wte.shape[0], "n_embd": n_embd,
                "n_positions": wpe.shape[0], "n_ctx": wpe.shape[0], "n_layer": len(layers),
                "n_inner": None if fc.shape[1] == 4 * n_embd else fc.shape[1]}

    # ---- GGUF --------------------------------------------------------------------------
    def gguf_rules(self, config: Config) -> Sequence[Rule]:
        arch = MODEL_ARCH.GPT2
        return [Transpose(hf, gguf_name(arch, hf)) if hf.endswith(CONV1D) else renames(arch, [hf])[0]
                for hf in GPT2_LAYOUT]

    def gguf_meta(self, config: Config) -> dict[str, Any]:
        n_embd = int(config["n_embd"])
        return {Keys.LLM.FEED_FORWARD_LENGTH.format(arch="gpt2"): int(config.get("n_inner") or 4 * n_embd)}

    def gguf_config(self, meta: Config, config: dict[str, Any]) -> None:
        ff = int(meta.get(Keys.LLM.FEED_FORWARD_LENGTH.format(arch="gpt2"), 4 * config["n_embd"]))
        config["n_ctx"] = config["n_positions"]
        config["n_inner"] = None if ff == 4 * config["n_embd"] else ff

    def layouts(self) -> dict[str, Layout]:
        return {"gguf": Layout(
            "gguf", arch_name(MODEL_ARCH.GPT2), self.gguf_rules, HPARAMS,
            extra_meta=self.gguf_meta, extra_config=self.gguf_config,
            config_base={"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "activation_function": "gelu_new",
                         "tie_word_embeddings": True},
        )}

    # ---- the reference forward pass ------------------------------------------------------
    def forward(self, model: Model, ids: Sequence[int], dtype: np.dtype) -> np.ndarray:
        cfg = model.config
        W = B.Weights(model, dtype, self.name)
        n_embd, n_head = int(cfg["n_embd"]), int(cfg["n_head"])
        eps = float(cfg.get("layer_norm_epsilon", 1e-5))
        act = B.activation(cfg.get("activation_function"), "gelu_new")
        hd = n_embd // n_head
        n = len(ids)
        n_pos = int(cfg.get("n_positions") or cfg.get("n_ctx") or 1024)
        if n > n_pos:
            raise UsageError(f"{n} tokens exceed the model's {n_pos} positions")
        allowed = B.causal_mask(n)
        scale = hd ** -0.5 if cfg.get("scale_attn_weights", True) else 1.0
        wte = W("transformer.wte.weight")
        h = wte[np.asarray(ids)] + W("transformer.wpe.weight")[:n]
        for i in range(self.n_layer(cfg)):
            p = f"transformer.h.{i}."
            x = B.layer_norm(h, W(p + "ln_1.weight"), W(p + "ln_1.bias"), eps)
            qkv = x @ W(p + "attn.c_attn.weight") + W(p + "attn.c_attn.bias")  # Conv1D: [in, out]
            q, k, v = (B.heads(m, n_head, hd) for m in np.split(qkv, 3, axis=-1))
            s = scale / (i + 1) if cfg.get("scale_attn_by_inverse_layer_idx") else scale
            a = B.attention(q, k, v, s, allowed)
            h = h + a @ W(p + "attn.c_proj.weight") + W(p + "attn.c_proj.bias")
            x = B.layer_norm(h, W(p + "ln_2.weight"), W(p + "ln_2.bias"), eps)
            x = act(x @ W(p + "mlp.c_fc.weight") + W(p + "mlp.c_fc.bias"))
            h = h + x @ W(p + "mlp.c_proj.weight") + W(p + "mlp.c_proj.bias")
        h = B.layer_norm(h, W("transformer.ln_f.weight"), W("transformer.ln_f.bias"), eps)
        head = W("lm_head.weight") if W.has("lm_head.weight") else wte
        return h @ head.T


@hookimpl
def register_architectures(register: Any) -> None:
    register(GPT2Architecture())
