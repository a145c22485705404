"""Falcon (``FalconForCausalLM``, GGUF arch ``falcon``): the 7B-style multi-query model and the
"new decoder architecture" of Falcon-40B/180B (grouped KV heads, two LayerNorms per block).

Attention and MLP run in parallel off the block's LayerNorm(s) (``ln_attn`` feeds attention and
``ln_mlp`` the MLP in the new architecture; llama.cpp calls them ``attn_norm_2`` and ``attn_norm``).
HF fuses Q/K/V in groups, one per KV head: that head's queries, then its key, then its value;
llama.cpp wants all queries, then all keys, then all values (the "jploski" layout), so the fused
weight's rows are regrouped both ways (a row move: quantised blocks pass untouched). The number of
KV heads is 1 for multi-query models, ``num_kv_heads`` for the new architecture, and every head
otherwise. llama.cpp's falcon graph has no ALiBi, no biases and no sequential residual: such
configs are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gguf import MODEL_ARCH, MODEL_TENSOR, Keys

from lmconv import blocks as B
from lmconv.architectures import Architecture, Config, HParam, Layout
from lmconv.errors import InputError
from lmconv.hookspecs import hookimpl
from lmconv.ir import Model, Tensor
from lmconv.rules import Arrays, Map, Rule

from ._gguf import arch_name, gguf_name, renames, tensor_name

ARCH = MODEL_ARCH.FALCON
COMMON = (
    "transformer.word_embeddings.weight",
    "transformer.h.{bid}.self_attention.dense.weight",
    "transformer.h.{bid}.mlp.dense_h_to_4h.weight",
    "transformer.h.{bid}.mlp.dense_4h_to_h.weight",
    "transformer.ln_f.weight",
    "transformer.ln_f.bias",
    "lm_head.weight",
)
ONE_NORM = ("transformer.h.{bid}.input_layernorm.weight", "transformer.h.{bid}.input_layernorm.bias")
TWO_NORMS = ("transformer.h.{bid}.ln_attn.weight", "transformer.h.{bid}.ln_attn.bias",
             "transformer.h.{bid}.ln_mlp.weight", "transformer.h.{bid}.ln_mlp.bias")
QKV = "transformer.h.{bid}.self_attention.query_key_value.weight"
HPARAMS = (
    HParam(Keys.LLM.VOCAB_SIZE, "vocab_size"),
    HParam(Keys.LLM.CONTEXT_LENGTH, "max_position_embeddings", default=2048),
    HParam(Keys.LLM.EMBEDDING_LENGTH, "hidden_size", required=True),
    HParam(Keys.LLM.BLOCK_COUNT, "num_hidden_layers", required=True),
    HParam(Keys.Attention.HEAD_COUNT, "num_attention_heads", required=True),
    HParam(Keys.Attention.LAYERNORM_EPS, "layer_norm_epsilon", float, default=1e-5),
    HParam(Keys.Rope.FREQ_BASE, "rope_theta", float, default=10000.0, fallbacks=("rope_parameters.rope_theta",)),
)


class FalconArchitecture(Architecture):
    name = "falcon"
    hf_architectures = ("FalconForCausalLM",)
    model_types = ("falcon",)
    description = "Falcon 7B-style multi-query and the new decoder architecture (parallel attention, fused QKV)"
    hf_skip = ("rotary_emb.inv_freq",)
    hf_embedding = "transformer.word_embeddings.weight"
    required_ints = ("num_hidden_layers", "num_attention_heads", "hidden_size", "vocab_size")
    optional_ints = ("num_kv_heads", "ffn_hidden_size", "max_position_embeddings", "num_ln_in_parallel_attn")

    # ---- config ------------------------------------------------------------------------
    def kv_heads(self, config: Config) -> int:
        """The KV heads the fused weight holds (transformers' ``_split_heads``)."""
        n_head = int(config["num_attention_heads"])
        if config.get("new_decoder_architecture"):
            return int(config.get("num_kv_heads") or n_head)
        return 1 if config.get("multi_query", True) else n_head

    def two_norms(self, config: Config) -> bool:
        return bool(config.get("new_decoder_architecture")) and (config.get("num_ln_in_parallel_attn") or 2) == 2

    def head_dim(self, config: Config) -> int:
        return int(config["hidden_size"]) // int(config["num_attention_heads"])

    def ffn(self, config: Config) -> int:
        return int(config.get("ffn_hidden_size") or 4 * int(config["hidden_size"]))

    def check_consistency(self, config: Config, origin: str | None) -> None:
        if config.get("alibi"):
            raise InputError("alibi is set: ALiBi Falcon models are not supported (llama.cpp's falcon graph is rotary)",
                             path=origin)
        if config.get("parallel_attn", True) is False:
            raise InputError("parallel_attn is false: llama.cpp's falcon graph runs attention and MLP in parallel only",
                             path=origin)
        if config.get("bias"):
            raise InputError("bias is set: llama.cpp's falcon graph has no bias tensors", path=origin)
        n_head, hidden = int(config["num_attention_heads"]), int(config["hidden_size"])
        if hidden % n_head:
            raise InputError(f"hidden_size {hidden} is not a multiple of num_attention_heads {n_head}", path=origin)
        if n_head % self.kv_heads(config):
            raise InputError(f"num_attention_heads {n_head} is not a multiple of num_kv_heads {self.kv_heads(config)}",
                             path=origin)
        if self.head_dim(config) % 2:
            raise InputError(f"head size {self.head_dim(config)} is odd; rotary embeddings need an even one", path=origin)
        if config.get("num_ln_in_parallel_attn") not in (None, 1, 2):
            raise InputError(f"num_ln_in_parallel_attn is {config['num_ln_in_parallel_attn']}; falcon has 1 or 2",
                             path=origin)
        kind = B.rope_params(config)["rope_type"]
        if kind != "default":
            raise InputError(f"rope type {kind!r}: lmconv converts falcon models with plain rotary embeddings only",
                             path=origin)

    def expected_shape(self, hf_name: str, config: Config) -> tuple[int | None, ...] | None:
        hidden, n_head, size = int(config["hidden_size"]), int(config["num_attention_heads"]), self.head_dim(config)
        qkv = (n_head + 2 * self.kv_heads(config)) * size
        ff = self.ffn(config)
        kind = hf_name.rsplit(".", 1)[-1]
        stem = hf_name.removesuffix("." + kind)
        for suffix, weight, bias in (
            (".self_attention.query_key_value", (qkv, hidden), (qkv,)), (".self_attention.dense", (hidden, hidden), (hidden,)),
            (".mlp.dense_h_to_4h", (ff, hidden), (ff,)), (".mlp.dense_4h_to_h", (hidden, ff), (hidden,)),
            ("layernorm", (hidden,), (hidden,)), (".ln_attn", (hidden,), (hidden,)), (".ln_mlp", (hidden,), (hidden,)),
            ("transformer.ln_f", (hidden,), (hidden,)),
            ("transformer.word_embeddings", (None, hidden), None), ("lm_head", (None, hidden), None),
        ):
            if stem.endswith(suffix):
                return weight if kind == "weight" else bias
        return None

    # ---- GGUF --------------------------------------------------------------------------
    def regroup(self, arrays: Arrays, config: Config) -> Arrays:
        """HF's per-KV-head groups [q…q k v] → llama.cpp's [all q, all k, all v]."""
        w = arrays[0]
        n_kv, size = self.kv_heads(config), self.head_dim(config)
        g = int(config["num_attention_heads"]) // n_kv
        x = w.reshape(n_kv, g + 2, size, *w.shape[1:])
        return [np.concatenate([x[:, :g].reshape(-1, *w.shape[1:]), x[:, g].reshape(-1, *w.shape[1:]),
                                x[:, g + 1].reshape(-1, *w.shape[1:])])]

    def ungroup(self, arrays: Arrays, config: Config) -> Arrays:
        w = arrays[0]
        n_kv, size = self.kv_heads(config), self.head_dim(config)
        n_head = int(config["num_attention_heads"])
        g = n_head // n_kv
        rest = w.shape[1:]
        q = w[:n_head * size].reshape(n_kv, g, size, *rest)
        k = w[n_head * size:(n_head + n_kv) * size].reshape(n_kv, 1, size, *rest)
        v = w[(n_head + n_kv) * size:].reshape(n_kv, 1, size, *rest)
        return [np.ascontiguousarray(np.concatenate([q, k, v], axis=1).reshape(w.shape))]

    def gguf_rules(self, config: Config) -> Sequence[Rule]:
        norms = TWO_NORMS if self.two_norms(config) else ONE_NORM
        return renames(ARCH, COMMON + norms) + [
            Map([QKV], [gguf_name(ARCH, QKV)], self.regroup, self.ungroup, name="falcon_qkv", blocks_ok=True)]

    def gguf_meta(self, config: Config) -> dict[str, Any]:
        a = arch_name(ARCH)
        return {Keys.Attention.HEAD_COUNT_KV.format(arch=a): self.kv_heads(config),
                Keys.LLM.FEED_FORWARD_LENGTH.format(arch=a): self.ffn(config),
                Keys.LLM.TENSOR_DATA_LAYOUT.format(arch=a): "jploski"}

    def gguf_config(self, meta: Config, config: dict[str, Any]) -> None:
        a = arch_name(ARCH)
        n_head = int(config["num_attention_heads"])
        config["num_kv_heads"] = int(meta.get(Keys.Attention.HEAD_COUNT_KV.format(arch=a), n_head))
        config["ffn_hidden_size"] = int(meta.get(Keys.LLM.FEED_FORWARD_LENGTH.format(arch=a), 4 * config["hidden_size"]))
        config["rope_parameters"] = {"rope_type": "default", "rope_theta": config.get("rope_theta", 10000.0)}

    def from_target(self, tensors: Sequence[Tensor], config: dict[str, Any], target: str,
                    origin: str | None = None) -> tuple[list[Tensor], dict[str, Any]]:
        """A GGUF without a stored config says which Falcon it is by its tensors and KV heads: a second
        norm is the new architecture with two norms; one KV head the multi-query 7B layout; as many
        as the queries, plain multi-head; any other count the new architecture with one norm."""
        if target == "gguf" and "new_decoder_architecture" not in config:
            n_head = int(config["num_attention_heads"])
            n_kv = int(config.get("num_kv_heads") or n_head)
            two = tensor_name(MODEL_TENSOR.ATTN_NORM_2).format(bid=0) in {t.name for t in tensors}
            new = two or 1 < n_kv < n_head
            config = {**config, "new_decoder_architecture": new, "multi_query": not new and n_kv == 1,
                      "num_kv_heads": n_kv if new else n_head}  # transformers' FalconConfig sets every head otherwise
            if new:
                config["num_ln_in_parallel_attn"] = 2 if two else 1
        return super().from_target(tensors, config, target, origin)

    def layouts(self) -> dict[str, Layout]:
        return {"gguf": Layout(
            "gguf", arch_name(ARCH), self.gguf_rules, HPARAMS, extra_meta=self.gguf_meta, extra_config=self.gguf_config,
            config_base={"architectures": ["FalconForCausalLM"], "model_type": "falcon", "activation": "gelu",
                         "alibi": False, "bias": False, "parallel_attn": True},
        )}

    # ---- the reference forward pass ------------------------------------------------------
    def forward(self, model: Model, ids: Sequence[int], dtype: np.dtype) -> np.ndarray:
        cfg = model.config
        W = B.Weights(model, dtype, self.name)
        n_head, n_kv, hd = int(cfg["num_attention_heads"]), self.kv_heads(cfg), self.head_dim(cfg)
        g = n_head // n_kv
        eps = float(cfg.get("layer_norm_epsilon", 1e-5))
        act = B.activation(cfg.get("activation"), "gelu")
        n = len(ids)
        inv, pos_scale, attn_factor = B.rope_inv_freq(cfg, hd, dtype, seq_len=n)
        rope = B.Rotary(inv, n, dtype, pos_scale, attn_factor)
        allowed = B.causal_mask(n)
        two = self.two_norms(cfg)
        emb = W("transformer.word_embeddings.weight")
        h = emb[np.asarray(ids)]
        for i in range(self.n_layer(cfg)):
            p = f"transformer.h.{i}."
            if two:
                xa = B.layer_norm(h, W(p + "ln_attn.weight"), W(p + "ln_attn.bias"), eps)
                xm = B.layer_norm(h, W(p + "ln_mlp.weight"), W(p + "ln_mlp.bias"), eps)
            else:
                xa = xm = B.layer_norm(h, W(p + "input_layernorm.weight"), W(p + "input_layernorm.bias"), eps)
            qkv = B.linear(xa, W(p + "self_attention.query_key_value.weight")).reshape(n, n_kv, g + 2, hd)
            q = qkv[:, :, :g].reshape(n, n_head, hd).transpose(1, 0, 2)
            k = qkv[:, :, g].transpose(1, 0, 2)
            v = qkv[:, :, g + 1].transpose(1, 0, 2)
            a = B.linear(B.attention(rope(q), rope(k), v, hd ** -0.5, allowed), W(p + "self_attention.dense.weight"))
            m = B.linear(act(B.linear(xm, W(p + "mlp.dense_h_to_4h.weight"))), W(p + "mlp.dense_4h_to_h.weight"))
            h = h + a + m
        h = B.layer_norm(h, W("transformer.ln_f.weight"), W("transformer.ln_f.bias"), eps)
        return h @ (W("lm_head.weight") if W.has("lm_head.weight") else emb).T


@hookimpl
def register_architectures(register: Any) -> None:
    register(FalconArchitecture())
