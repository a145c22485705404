"""The llama family: LlamaForCausalLM and MistralForCausalLM, and Mixtral (MixtralForCausalLM, the
same decoder with a mixture of experts). llama.cpp runs all three as GGUF arch ``llama``.

llama.cpp's llama graph expects Q and K rows in an interleaved rotary order, so their weights (and
biases) are permuted on the way in, K with the KV head count, and un-permuted on the way out.

Mixtral's experts: transformers 5 *saves* them one by one
(``block_sparse_moe.experts.E.w1/w2/w3.weight``, what ``from_pretrained`` loads) but holds them fused
in memory (``mlp.experts.gate_up_proj [E, 2·ff, hidden]``, ``mlp.experts.down_proj [E, hidden, ff]``),
which is what ``torch.save(model.state_dict())`` writes. Both are read; GGUF stacks them
(``blk.N.ffn_{gate,up,down}_exps.weight``) and GGUF → HF writes the on-disk per-expert layout. The
stacking moves whole rows, so quantised experts unstack and restack without being dequantised.

:class:`LlamaArchitecture` is also the base other llama-like families build on: :meth:`hf_layout`
(the HF names), :attr:`experts` (an :class:`Experts`), :meth:`qk_norm` and :meth:`ffn` (forward-pass
hooks), :meth:`bias_flags` (config flags a GGUF's tensors imply).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import MODEL_ARCH, MODEL_TENSOR, Keys

from lmconv import blocks as B
from lmconv.architectures import Config, HParam, Layout
from lmconv.errors import InputError
from lmconv.hookspecs import hookimpl
from lmconv.ir import Model, Tensor
from lmconv.rules import Arrays, Map, Rename, Rule, Shape, Stack, config_int

from ._decoder import DecoderFamily
from ._gguf import (
    arch_name,
    decoder_hparams,
    rope_scaling_config,
    rope_scaling_meta,
    tensor_name,
)

LLAMA_LAYOUT = (
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
    "model.layers.{bid}.mlp.up_proj.weight",
    "model.layers.{bid}.mlp.down_proj.weight",
    "model.norm.weight",
    "lm_head.weight",
)
#: the llama layout without its dense MLP (what a mixture-of-experts decoder shares with it)
DECODER_LAYOUT = tuple(n for n in LLAMA_LAYOUT if ".mlp." not in n)
Array = np.ndarray


# =========================================================================== experts
def _split_gate_up(arrays: Arrays, config: Config) -> Arrays:
    """``gate_up_proj [E, 2·ff, hidden]`` → gate and up ``[E, ff, hidden]`` (whole rows: blocks too)."""
    a = arrays[0]
    half = a.shape[1] // 2
    return [np.ascontiguousarray(a[:, :half]), np.ascontiguousarray(a[:, half:])]


def _join_gate_up(arrays: Arrays, config: Config) -> Arrays:
    return [np.concatenate(arrays, axis=1)]


def _split_gate_up_shapes(shapes: list[Shape], config: Config) -> list[Shape]:
    e, rows, *rest = shapes[0]
    if len(shapes[0]) != 3 or rows % 2:
        raise InputError(f"a fused gate_up_proj of shape {list(shapes[0])} does not split into gate and up halves")
    return [(e, rows // 2, *rest)] * 2


def _join_gate_up_shapes(shapes: list[Shape], config: Config) -> list[Shape]:
    e, rows, *rest = shapes[0]
    return [(e, rows + shapes[1][1], *rest)]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    return re.compile(re.escape(pattern).replace(re.escape("{bid}"), r"\d+").replace(re.escape("{xid}"), r"\d+"))


@dataclass(frozen=True)
class Experts:
    """Where a family keeps its routed experts in HF checkpoints, and how GGUF stacks them.

    ``per_expert`` are the on-disk names (gate, up, down; ``{bid}`` layer, ``{xid}`` expert) that
    ``save_pretrained`` writes and GGUF → HF writes back; ``fused`` are transformers 5's in-memory
    ``gate_up_proj``/``down_proj`` (read only); ``router`` the router weight's names, the on-disk
    one first. ``count`` are the config keys of the expert count (the first is written back; the
    others are read too: transformers' ``attribute_map`` aliases), ``used`` and ``ff`` those of the
    experts each token uses and of an expert's intermediate size.
    """

    per_expert: tuple[str, str, str]
    fused: tuple[str, str]
    router: tuple[str, ...]
    count: tuple[str, ...]
    used: str
    ff: str

    def n_experts(self, config: Config) -> int | None:
        return next((config[k] for k in self.count if config.get(k) is not None), None)

    def rules(self) -> list[Rule]:
        gate, up, down = (tensor_name(t) for t in (MODEL_TENSOR.FFN_GATE_EXP, MODEL_TENSOR.FFN_UP_EXP,
                                                    MODEL_TENSOR.FFN_DOWN_EXP))
        count = config_int(*self.count)
        # GGUF → HF: the first rule naming a GGUF tensor takes it, so the per-expert Stacks come first
        rules: list[Rule] = [Stack(src, dst, count) for src, dst in zip(self.per_expert, (gate, up, down))]
        rules.append(Map((self.fused[0],), (gate, up), _split_gate_up, _join_gate_up,
                         forward_shapes=_split_gate_up_shapes, inverse_shapes=_join_gate_up_shapes,
                         name="split_gate_up", blocks_ok=True))
        rules.append(Rename(self.fused[1], down))
        rules += [Rename(r, tensor_name(MODEL_TENSOR.FFN_GATE_INP)) for r in self.router]
        return rules

    def hparams(self) -> tuple[HParam, ...]:
        return (HParam(Keys.LLM.EXPERT_COUNT, self.count[0], fallbacks=self.count[1:]),
                HParam(Keys.LLM.EXPERT_USED_COUNT, self.used))

    def check(self, config: Config, origin: str | None) -> None:
        n, k = self.n_experts(config), config[self.used]
        if n is None:
            raise InputError(f"{self.count[0]} is missing from the config of a mixture-of-experts model", path=origin)
        if type(n) is not int or not 1 <= n < 2**20:
            raise InputError(f"{self.count[0]} is {n!r} in the config; it must be a whole number of at least 1",
                             path=origin)
        if k > n:
            raise InputError(f"{self.used} {k} is more than the {n} experts", path=origin)

    def expected_shape(self, hf_name: str, config: Config) -> tuple[int | None, ...] | None:
        n, ff, hidden = int(self.n_experts(config) or 0), int(config[self.ff]), int(config["hidden_size"])
        shapes = {self.per_expert[0]: (ff, hidden), self.per_expert[1]: (ff, hidden), self.per_expert[2]: (hidden, ff),
                  self.fused[0]: (n, 2 * ff, hidden), self.fused[1]: (n, hidden, ff),
                  **{r: (n, hidden) for r in self.router}}
        for pattern, shape in shapes.items():
            if _pattern_regex(pattern).fullmatch(hf_name):
                return shape
        return None

    # ---- the forward pass ------------------------------------------------------------
    def weights(self, W: B.Weights, bid: int) -> Callable[[int], tuple[Array, Array, Array]]:
        """Expert ``e`` of layer ``bid`` → its gate, up and down weights, from either layout."""
        if W.has(self.per_expert[0].format(bid=bid, xid=0)):
            return lambda e: tuple(W(p.format(bid=bid, xid=e)) for p in self.per_expert)  # type: ignore[return-value]
        gate_up, down = W(self.fused[0].format(bid=bid)), W(self.fused[1].format(bid=bid))
        half = gate_up.shape[1] // 2
        return lambda e: (gate_up[e, :half], gate_up[e, half:], down[e])

    def router_weight(self, W: B.Weights, bid: int) -> Array:
        return W(*(r.format(bid=bid) for r in self.router))

    def __call__(self, W: B.Weights, bid: int, x: Array, config: Config, act: Callable[[Array], Array], *,
                 normalize: bool) -> Array:
        """The routed experts' output: softmax over the router logits, the top ``used`` experts,
        their weights renormalised when ``normalize``."""
        idx, w = B.top_k_routing(B.linear(x, self.router_weight(W, bid)), int(config[self.used]), normalize=normalize)
        expert = self.weights(W, bid)

        def run(e: int, xs: Array) -> Array:
            g, u, d = expert(e)
            return B.linear(act(B.linear(xs, g)) * B.linear(xs, u), d)

        return B.moe(x, idx, w, run)


def dense_mlp(W: B.Weights, prefix: str, x: Array, act: Callable[[Array], Array]) -> Array:
    """``down(act(gate(x)) · up(x))`` with the weights (and optional biases) under ``prefix``."""
    g = B.linear(x, W(prefix + "gate_proj.weight"), W.opt(prefix + "gate_proj.bias"))
    u = B.linear(x, W(prefix + "up_proj.weight"), W.opt(prefix + "up_proj.bias"))
    return B.linear(act(g) * u, W(prefix + "down_proj.weight"), W.opt(prefix + "down_proj.bias"))


# =========================================================================== llama, mistral
class LlamaArchitecture(DecoderFamily):
    name = "llama"
    hf_architectures = ("LlamaForCausalLM", "MistralForCausalLM")
    model_types = ("llama", "mistral")
    model_arch = MODEL_ARCH.LLAMA
    description = "Llama / Mistral (GQA, RMSNorm, SwiGLU, rotary)"
    permute_qk = True
    rope_types = None  # llama.cpp's llama graph runs every kind lmconv writes
    #: the routed experts of a mixture-of-experts family (None: a dense MLP)
    experts: Experts | None = None
    recognition_priority = 10  # the most common layout of its kind: a llama-shaped state dict is called llama
    recognition_needs = ("num_key_value_heads",)  # K's rows are heads × head size: neither is in a shape

    # ---- config ------------------------------------------------------------------------
    def check_consistency(self, config: Config, origin: str | None) -> None:
        super().check_consistency(config, origin)
        if self.experts is not None:
            self.experts.check(config, origin)

    def expected_shape(self, hf_name: str, config: Config) -> tuple[int | None, ...] | None:
        if self.experts is not None:
            shape = self.experts.expected_shape(hf_name, config)
            if shape is not None:
                return shape
        return super().expected_shape(hf_name, config)

    def infer_config(self, model: Model) -> dict[str, Any]:
        """Sizes are in the shapes; head counts (and so the head size) are not."""
        t = model.tensors
        emb, gate = t.get("model.embed_tokens.weight"), t.get("model.layers.0.mlp.gate_proj.weight")
        if self.experts is not None or emb is None or gate is None or len(emb.shape) != 2:
            return {}
        layers = {n.split(".")[2] for n in t if n.startswith("model.layers.")}
        return {"architectures": [self.hf_architectures[0]], "model_type": self.model_types[0],
                "vocab_size": emb.shape[0], "hidden_size": emb.shape[1], "intermediate_size": gate.shape[0],
                "num_hidden_layers": len(layers), "tie_word_embeddings": "lm_head.weight" not in t,
                **self.bias_flags(set(t))}

    # ---- GGUF --------------------------------------------------------------------------
    def hf_layout(self, config: Config) -> Sequence[str]:
        """The HF names (``{bid}`` for the layer) renamed one to one to llama.cpp's names."""
        return LLAMA_LAYOUT if self.experts is None else DECODER_LAYOUT

    def gguf_rules(self, config: Config) -> Sequence[Rule]:
        rules: list[Rule] = [self.rope_freqs_rule()]
        if self.experts is not None:
            rules += self.experts.rules()
        return rules + self.renamed(self.hf_layout(config), permute_qk=self.permute_qk)

    def gguf_hparams(self) -> tuple[HParam, ...]:
        # GGUF arch llama holds Mixtral too: a llama GGUF with experts reads back as one (see from_target)
        experts = self.experts or (MIXTRAL_EXPERTS if self.model_arch == MODEL_ARCH.LLAMA else None)
        return decoder_hparams() + (experts.hparams() if experts is not None else ())

    def gguf_meta(self, config: Config) -> dict[str, Any]:
        a = arch_name(self.model_arch)
        n_head, _ = self.heads(config)
        size = self.head_dim(config)
        kv: dict[str, Any] = {Keys.Rope.DIMENSION_COUNT.format(arch=a): size}
        if config.get("head_dim") or size != int(config["hidden_size"]) // n_head:  # as llama.cpp's converter
            kv[Keys.Attention.KEY_LENGTH.format(arch=a)] = size
            kv[Keys.Attention.VALUE_LENGTH.format(arch=a)] = size
        kv.update(rope_scaling_meta(config, a))
        return kv

    def gguf_config(self, meta: Config, config: dict[str, Any]) -> None:
        a = arch_name(self.model_arch)
        config["head_dim"] = int(meta.get(Keys.Attention.KEY_LENGTH.format(arch=a),
                                          config["hidden_size"] // config["num_attention_heads"]))
        rope_scaling_config(meta, a, config)
        if self.experts is None and self.model_arch == MODEL_ARCH.LLAMA and config.get(MIXTRAL_EXPERTS.count[0]):
            config.update(architectures=list(MIXTRAL.hf_architectures[:1]), model_type=MIXTRAL.model_types[0])
            if Keys.Attention.KEY_LENGTH.format(arch=a) not in meta:
                config["head_dim"] = None  # as MixtralConfig leaves it: hidden_size / num_attention_heads

    def config_base(self) -> dict[str, Any]:
        return {"architectures": [self.hf_architectures[0]], "model_type": self.model_types[0], "hidden_act": "silu"}

    def layouts(self) -> dict[str, Layout]:
        return {"gguf": Layout(
            "gguf", arch_name(self.model_arch), self.gguf_rules, self.gguf_hparams(),
            extra_meta=self.gguf_meta, extra_config=self.gguf_config, config_base=self.config_base(),
        )}

    def gguf_variant(self, config: Config) -> LlamaArchitecture:
        """The family a GGUF of this arch is, given the config read from it: llama's GGUF arch holds
        Mixtral too (the GGUF reader finds one family per arch name, this one)."""
        if self.experts is None and self.model_arch == MODEL_ARCH.LLAMA and config.get(MIXTRAL_EXPERTS.count[0]):
            return MIXTRAL
        return self

    def from_target(self, tensors: Sequence[Tensor], config: dict[str, Any], target: str,
                    origin: str | None = None) -> tuple[list[Tensor], dict[str, Any]]:
        variant = self.gguf_variant(config)
        if variant is not self:
            return variant.from_target(tensors, config, target, origin)
        hf, config = super().from_target(tensors, config, target, origin)
        for key, value in self.bias_flags({t.name for t in hf}).items():
            config.setdefault(key, value)
        return hf, config

    def bias_flags(self, names: set[str]) -> dict[str, Any]:
        """Config flags the tensors imply, for a config read from keys alone (a stored config keeps its own)."""
        flags: dict[str, Any] = {}
        if "model.layers.0.self_attn.q_proj.bias" in names:
            flags["attention_bias"] = True
        if "model.layers.0.mlp.gate_proj.bias" in names:
            flags["mlp_bias"] = True
        return flags

    # ---- the reference forward pass ------------------------------------------------------
    def forward(self, model: Model, ids: Sequence[int], dtype: np.dtype) -> np.ndarray:
        cfg = model.config
        W = B.Weights(model, dtype, self.name)
        n_head, n_kv = self.heads(cfg)
        head_dim = self.head_dim(cfg)
        eps = float(cfg.get("rms_norm_eps", 1e-6))
        act = B.activation(cfg.get("hidden_act"), "silu")
        n = len(ids)
        inv, pos_scale, attn_factor = B.rope_inv_freq(cfg, head_dim, dtype, seq_len=n)
        rope = B.Rotary(inv, n, dtype, pos_scale, attn_factor)
        allowed = B.causal_mask(n, self.sliding_window(cfg))
        emb_w = W("model.embed_tokens.weight")
        h = emb_w[np.asarray(ids)]
        for i in range(self.n_layer(cfg)):
            p = f"model.layers.{i}."
            x = B.rms_norm(h, W(p + "input_layernorm.weight"), eps)
            q = B.linear(x, W(p + "self_attn.q_proj.weight"), W.opt(p + "self_attn.q_proj.bias"))
            k = B.linear(x, W(p + "self_attn.k_proj.weight"), W.opt(p + "self_attn.k_proj.bias"))
            v = B.linear(x, W(p + "self_attn.v_proj.weight"), W.opt(p + "self_attn.v_proj.bias"))
            q, k, v = B.heads(q, n_head, head_dim), B.heads(k, n_kv, head_dim), B.heads(v, n_kv, head_dim)
            q, k = self.qk_norm(W, p, q, k, eps)
            a = B.attention(rope(q), rope(k), v, head_dim ** -0.5, allowed)
            h = h + B.linear(a, W(p + "self_attn.o_proj.weight"), W.opt(p + "self_attn.o_proj.bias"))
            x = B.rms_norm(h, W(p + "post_attention_layernorm.weight"), eps)
            h = h + self.ffn(W, i, x, cfg, act)
        h = B.rms_norm(h, W("model.norm.weight"), eps)
        head = W("lm_head.weight") if W.has("lm_head.weight") else emb_w
        return h @ head.T

    def qk_norm(self, W: B.Weights, prefix: str, q: Array, k: Array, eps: float) -> tuple[Array, Array]:
        """Q and K ``[heads, n, head_dim]`` before the rotary embedding (unchanged here)."""
        return q, k

    def ffn(self, W: B.Weights, bid: int, x: Array, config: Config, act: Callable[[Array], Array]) -> Array:
        """Layer ``bid``'s feed-forward block on the normed ``x``."""
        if self.experts is not None:
            return self.experts(W, bid, x, config, act, normalize=self.normalize_topk(config))
        return dense_mlp(W, f"model.layers.{bid}.mlp.", x, act)

    def normalize_topk(self, config: Config) -> bool:
        """Whether the chosen experts' weights are renormalised to sum to 1."""
        return True

    def sliding_window(self, config: Config) -> int | None:
        window = config.get("sliding_window") if config.get("use_sliding_window", True) else None
        return int(window) if window else None


# =========================================================================== mixtral
MIXTRAL_EXPERTS = Experts(
    per_expert=("model.layers.{bid}.block_sparse_moe.experts.{xid}.w1.weight",
                "model.layers.{bid}.block_sparse_moe.experts.{xid}.w3.weight",
                "model.layers.{bid}.block_sparse_moe.experts.{xid}.w2.weight"),
    fused=("model.layers.{bid}.mlp.experts.gate_up_proj", "model.layers.{bid}.mlp.experts.down_proj"),
    router=("model.layers.{bid}.block_sparse_moe.gate.weight", "model.layers.{bid}.mlp.gate.weight"),
    count=("num_local_experts", "num_experts"), used="num_experts_per_tok", ff="intermediate_size",
)


class MixtralArchitecture(LlamaArchitecture):
    name = "mixtral"
    hf_architectures = ("MixtralForCausalLM",)
    model_types = ("mixtral",)
    description = "Mixtral (the Mistral decoder with a softmax-top-k mixture of experts; GGUF arch llama)"
    experts = MIXTRAL_EXPERTS
    required_ints = LlamaArchitecture.required_ints + ("num_experts_per_tok",)


MIXTRAL = MixtralArchitecture()


@hookimpl
def register_architectures(register: Any) -> None:
    # Both write GGUF arch llama; the one registered last reads it (llama, which hands a GGUF with
    # experts on to mixtral).
    register(MIXTRAL)
    register(LlamaArchitecture())
