"""gpt-oss (``GptOssForCausalLM``, model_type ``gpt_oss``; GGUF arch ``gpt-oss``).

A decoder with attention sinks, biases everywhere, alternating sliding/full attention, YaRN rotary
and a mixture of experts with a clamped SwiGLU. What llama.cpp does with it (its
``conversion/gpt_oss.py`` and ``src/models/openai-moe.cpp``), and so what this module does both ways:

* Names: gguf-py's (``post_attention_layernorm`` → ``post_attention_norm``, ``mlp.router`` →
  ``ffn_gate_inp`` with its bias); the per-head sink logits ``self_attn.sinks`` → ``attn_sinks.weight``
  (llama.cpp appends ``.weight``). Rotary is NeoX-style in both: no Q/K permutation.
* Experts: transformers keeps them fused, ``mlp.experts.gate_up_proj [E, hidden, 2·ff]`` with gate and
  up *interleaved in the columns* (gate = even columns, up = odd), ``gate_up_proj_bias [E, 2·ff]``
  likewise, ``down_proj [E, ff, hidden]`` and ``down_proj_bias [E, hidden]`` (``x @ W`` layouts).
  llama.cpp stacks ``ffn_{gate,up}_exps.weight [E, ff, hidden]``, ``ffn_down_exps.weight [E, hidden, ff]``
  and ``ffn_{gate,up,down}_exps.bias``: the fused tensor is transposed and de-interleaved, ``down_proj``
  transposed; GGUF → HF re-interleaves and transposes back, bit for bit. Quantised stacks (llama.cpp's
  files of the released models keep them in MXFP4) are dequantised to be re-interleaved, and GGUF → GGUF
  writes the stored blocks back untouched. (The HF checkpoints' own ``*_blocks``/``*_scales`` are an
  encoding's business: decoded, they are these float tensors.)
* Routing: top-k of the router logits (bias included), softmax over the chosen k (llama.cpp's
  ``SOFTMAX_WEIGHT`` gating). The experts' activation is ``(clamp(up, ±limit) + 1) · g · σ(alpha · g)``
  with ``g = min(gate, limit)``; llama.cpp hard-codes alpha 1.702 and limit 7.0, so HF → GGUF warns
  when a config sets others.
* Sliding window: ``{arch}.attention.sliding_window``; which layers slide is llama.cpp's default
  pattern (every other layer, from the first: transformers' default ``layer_types``) unless
  ``{arch}.attention.sliding_window_pattern`` lists them, written only when ``layer_types`` differs.
* YaRN: llama.cpp's rope scaling keys (factor, original context, beta_fast/slow). llama.cpp always
  rounds YaRN's correction range outwards, as transformers does with ``truncate: true``; gpt-oss's
  own configs say ``truncate: false``, so HF → GGUF warns that llama.cpp's rotary differs there
  slightly, and a GGUF without lmconv's stored config reads back with gpt-oss's ``truncate: false``.
* llama.cpp's graph needs the output projection and the attention output bias: a tied model gets
  ``output.weight`` written from the embedding; a config without attention biases is warned about.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from gguf import MODEL_ARCH, MODEL_TENSOR, Keys

from lmconv import blocks as B
from lmconv.architectures import Architecture, Config, HParam, Layout
from lmconv.errors import InputError
from lmconv.hookspecs import hookimpl
from lmconv.ir import Model, Tensor
from lmconv.rules import Arrays, Map, Rename, Rule, Shape

from ._gguf import (
    arch_name,
    decoder_hparams,
    renames,
    rope_parameters,
    rope_scaling_config,
    rope_scaling_meta,
    tensor_name,
)

ARCH = MODEL_ARCH.GPT_OSS
SLIDING, FULL = "sliding_attention", "full_attention"
#: the activation constants llama.cpp's gpt-oss graph hard-codes (LLM_FFN_SWIGLU_OAI_MOE)
LLAMA_CPP_ALPHA, LLAMA_CPP_LIMIT = 1.702, 7.0
#: llama.cpp's default sliding-window pattern for gpt-oss (load_swa_pattern(ml, 2))
SWA_PATTERN = 2
#: GptOssConfig's defaults for what a config may leave out
DEFAULT_THETA, DEFAULT_EPS = 150000.0, 1e-5

LAYER = "model.layers.{bid}."
RENAMED = (
    "model.embed_tokens.weight",
    "model.norm.weight",
    "lm_head.weight",
    LAYER + "input_layernorm.weight",
    LAYER + "post_attention_layernorm.weight",
    *(LAYER + f"self_attn.{p}_proj.{k}" for p in "qkvo" for k in ("weight", "bias")),
    LAYER + "mlp.router.weight",
    LAYER + "mlp.router.bias",
)
SINKS = LAYER + "self_attn.sinks"
GATE_UP, GATE_UP_BIAS = LAYER + "mlp.experts.gate_up_proj", LAYER + "mlp.experts.gate_up_proj_bias"
DOWN, DOWN_BIAS = LAYER + "mlp.experts.down_proj", LAYER + "mlp.experts.down_proj_bias"


# =========================================================================== the experts' layouts
def _deinterleave(a: np.ndarray, axis: int) -> Arrays:
    """Even and odd positions along ``axis`` (gate, up)."""
    idx = [slice(None)] * a.ndim
    out = []
    for start in (0, 1):
        idx[axis] = slice(start, None, 2)
        out.append(np.ascontiguousarray(a[tuple(idx)]))
    return out


def _interleave(gate: np.ndarray, up: np.ndarray, axis: int) -> np.ndarray:
    if gate.shape != up.shape:
        raise InputError(f"gate and up experts differ in shape ({list(gate.shape)} and {list(up.shape)})")
    shape = list(gate.shape)
    shape[axis] *= 2
    out = np.empty(shape, dtype=np.result_type(gate, up))
    idx = [slice(None)] * gate.ndim
    for start, part in ((0, gate), (1, up)):
        idx[axis] = slice(start, None, 2)
        out[tuple(idx)] = part
    return out


def _swap(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.swapaxes(a, -1, -2))


def _swapped_shape(s: Shape) -> Shape:
    return (*s[:-2], s[-1], s[-2])


def _split_gate_up(arrays: Arrays, config: Config) -> Arrays:
    """``gate_up_proj [E, hidden, 2·ff]`` (``x @ W``, gate/up interleaved) → gate, up ``[E, ff, hidden]``."""
    return _deinterleave(np.swapaxes(arrays[0], -1, -2), axis=-2)


def _join_gate_up(arrays: Arrays, config: Config) -> Arrays:
    return [_swap(_interleave(arrays[0], arrays[1], axis=-2))]


def _split_gate_up_shapes(shapes: list[Shape], config: Config) -> list[Shape]:
    s = shapes[0]
    if len(s) != 3 or s[2] % 2:
        raise InputError(f"a fused gate_up_proj of shape {list(s)} does not split into interleaved gate and up")
    return [(s[0], s[2] // 2, s[1])] * 2


def _join_gate_up_shapes(shapes: list[Shape], config: Config) -> list[Shape]:
    e, ff, hidden = shapes[0]
    return [(e, hidden, 2 * ff)]


def _split_bias(arrays: Arrays, config: Config) -> Arrays:
    return _deinterleave(arrays[0], axis=-1)


def _join_bias(arrays: Arrays, config: Config) -> Arrays:
    return [_interleave(arrays[0], arrays[1], axis=-1)]


def _split_bias_shapes(shapes: list[Shape], config: Config) -> list[Shape]:
    s = shapes[0]
    if len(s) != 2 or s[1] % 2:
        raise InputError(f"a fused gate_up_proj_bias of shape {list(s)} does not split into interleaved gate and up")
    return [(s[0], s[1] // 2)] * 2


def _join_bias_shapes(shapes: list[Shape], config: Config) -> list[Shape]:
    return [(shapes[0][0], 2 * shapes[0][1])]


def expert_rules() -> list[Rule]:
    gate, up, down = MODEL_TENSOR.FFN_GATE_EXP, MODEL_TENSOR.FFN_UP_EXP, MODEL_TENSOR.FFN_DOWN_EXP
    return [
        Map((GATE_UP,), (tensor_name(gate), tensor_name(up)), _split_gate_up, _join_gate_up,
            forward_shapes=_split_gate_up_shapes, inverse_shapes=_join_gate_up_shapes, name="deinterleave_gate_up"),
        Map((GATE_UP_BIAS,), (tensor_name(gate, ".bias"), tensor_name(up, ".bias")), _split_bias, _join_bias,
            forward_shapes=_split_bias_shapes, inverse_shapes=_join_bias_shapes, name="deinterleave_gate_up_bias"),
        Map((DOWN,), (tensor_name(down),), lambda a, c: [_swap(a[0])], lambda a, c: [_swap(a[0])],
            forward_shapes=lambda s, c: [_swapped_shape(s[0])], inverse_shapes=lambda s, c: [_swapped_shape(s[0])],
            name="transpose_experts"),
        Rename(DOWN_BIAS, tensor_name(down, ".bias")),
    ]


def _swa_pattern(n_layer: int, n_pattern: int) -> list[bool]:
    """llama.cpp's ``set_swa_pattern(n_pattern)``: layer i slides unless it ends a group of ``n_pattern``."""
    return [n_pattern == 0 or (i % n_pattern) < (n_pattern - 1) for i in range(n_layer)]


# =========================================================================== the family
class GptOssArchitecture(Architecture):
    name = "gpt_oss"
    hf_architectures = ("GptOssForCausalLM",)
    model_types = ("gpt_oss",)
    description = "gpt-oss (attention sinks, alternating sliding window, YaRN, biased MoE with clamped SwiGLU)"
    hf_skip = ("rotary_emb.inv_freq",)
    hf_embedding = "model.embed_tokens.weight"
    hf_output = "lm_head.weight"
    required_ints = ("num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size", "vocab_size",
                     "num_local_experts", "num_experts_per_tok")
    optional_ints = ("num_key_value_heads", "head_dim", "max_position_embeddings", "sliding_window")
    recognition_needs = ("sliding_window",)  # the experts per token are among required_ints

    # ---- config ------------------------------------------------------------------------
    def heads(self, config: Config) -> tuple[int, int]:
        n_head = int(config["num_attention_heads"])
        return n_head, int(config.get("num_key_value_heads") or n_head)

    def head_dim(self, config: Config) -> int:
        return int(config.get("head_dim") or int(config["hidden_size"]) // int(config["num_attention_heads"]))

    def layer_types(self, config: Config) -> list[str]:
        """transformers' ``layer_types``, or GptOssConfig's default (sliding on even layers)."""
        n = int(config["num_hidden_layers"])
        types = config.get("layer_types")
        if isinstance(types, list) and len(types) == n:
            return [str(t) for t in types]
        return [SLIDING if s else FULL for s in _swa_pattern(n, SWA_PATTERN)]

    def check_consistency(self, config: Config, origin: str | None) -> None:
        n_head, n_kv = self.heads(config)
        if n_head % n_kv:
            raise InputError(f"num_attention_heads {n_head} is not a multiple of num_key_value_heads {n_kv}", path=origin)
        if not config.get("head_dim") and config["hidden_size"] % n_head:
            raise InputError(f"hidden_size {config['hidden_size']} is not a multiple of num_attention_heads {n_head}",
                             path=origin)
        if self.head_dim(config) % 2:
            raise InputError(f"head size {self.head_dim(config)} is odd; rotary embeddings need an even one", path=origin)
        if config["num_experts_per_tok"] > config["num_local_experts"]:
            raise InputError(f"num_experts_per_tok {config['num_experts_per_tok']} is more than the "
                             f"{config['num_local_experts']} experts", path=origin)
        types = config.get("layer_types")
        n = int(config["num_hidden_layers"])
        if types is not None and (not isinstance(types, list) or len(types) != n
                                  or any(t not in (SLIDING, FULL) for t in types)):
            raise InputError(f"layer_types must list {n} of {SLIDING!r} / {FULL!r}, one per layer", path=origin)
        if SLIDING in self.layer_types(config) and config.get("sliding_window") is None:
            raise InputError("sliding_window is missing but layer_types has sliding layers", path=origin)

    def expected_shape(self, hf_name: str, config: Config) -> tuple[int | None, ...] | None:
        n_head, n_kv = self.heads(config)
        hidden, ff, size = int(config["hidden_size"]), int(config["intermediate_size"]), self.head_dim(config)
        n_exp = int(config["num_local_experts"])
        q, kv = n_head * size, n_kv * size
        shapes: dict[str, tuple[int | None, ...]] = {
            "self_attn.q_proj.weight": (q, hidden), "self_attn.q_proj.bias": (q,),
            "self_attn.k_proj.weight": (kv, hidden), "self_attn.k_proj.bias": (kv,),
            "self_attn.v_proj.weight": (kv, hidden), "self_attn.v_proj.bias": (kv,),
            "self_attn.o_proj.weight": (hidden, q), "self_attn.o_proj.bias": (hidden,),
            "self_attn.sinks": (n_head,),
            "mlp.router.weight": (n_exp, hidden), "mlp.router.bias": (n_exp,),
            "mlp.experts.gate_up_proj": (n_exp, hidden, 2 * ff), "mlp.experts.gate_up_proj_bias": (n_exp, 2 * ff),
            "mlp.experts.down_proj": (n_exp, ff, hidden), "mlp.experts.down_proj_bias": (n_exp, hidden),
            "input_layernorm.weight": (hidden,), "post_attention_layernorm.weight": (hidden,),
        }
        m = re.fullmatch(r"model\.layers\.\d+\.(.+)", hf_name)
        if m:
            return shapes.get(m.group(1))
        return {"model.norm.weight": (hidden,), "model.embed_tokens.weight": (None, hidden),
                "lm_head.weight": (None, hidden)}.get(hf_name)

    def infer_config(self, model: Model) -> dict[str, Any]:
        """Sizes, head counts (the sinks give one per query head) and the expert count are in the shapes."""
        t = model.tensors
        need = ("model.embed_tokens.weight", "model.layers.0.self_attn.sinks", "model.layers.0.self_attn.q_proj.weight",
                "model.layers.0.self_attn.k_proj.weight", "model.layers.0.mlp.experts.down_proj")
        if any(n not in t for n in need):
            return {}
        try:
            vocab, hidden = t[need[0]].shape
            n_head = t[need[1]].shape[0]
            size = t[need[2]].shape[0] // n_head
            n_exp, ff, _ = t[need[4]].shape
            n_kv = t[need[3]].shape[0] // size
        except (ValueError, IndexError, ZeroDivisionError):  # shapes of another family
            return {}
        layers = {n.split(".")[2] for n in t if n.startswith("model.layers.")}
        return {"architectures": [self.hf_architectures[0]], "model_type": self.model_types[0], "vocab_size": vocab,
                "hidden_size": hidden, "intermediate_size": ff, "num_hidden_layers": len(layers),
                "num_attention_heads": n_head, "head_dim": size, "num_key_value_heads": n_kv,
                "num_local_experts": n_exp, "tie_word_embeddings": "lm_head.weight" not in t}

    def swiglu(self, config: Config) -> tuple[float, float]:
        """The experts' activation constants: ``swiglu_alpha`` and ``swiglu_limit`` (GptOssConfig's defaults)."""
        return float(config.get("swiglu_alpha", LLAMA_CPP_ALPHA)), float(config.get("swiglu_limit", LLAMA_CPP_LIMIT))

    def caveats(self, config: Config) -> list[str]:
        """What llama.cpp will compute differently from transformers for this config."""
        out = []
        alpha, limit = self.swiglu(config)
        if (alpha, limit) != (LLAMA_CPP_ALPHA, LLAMA_CPP_LIMIT):
            out.append(f"swiglu_alpha {alpha} and swiglu_limit {limit}: llama.cpp's gpt-oss graph computes "
                       f"{LLAMA_CPP_ALPHA} and {LLAMA_CPP_LIMIT}, so its logits will differ from transformers'")
        p = rope_parameters(config)
        if p["rope_type"] == "yarn" and p.get("truncate", True) is False:
            out.append("rope_parameters.truncate is false, but llama.cpp always rounds YaRN's correction range "
                       "outwards (truncate true): some rotary frequencies, and so its logits, differ slightly "
                       "from transformers'")
        if config.get("attention_bias", True) is False:
            out.append("attention_bias is false, but llama.cpp's gpt-oss graph needs attention biases: it will "
                       "not load this GGUF")
        return out

    # ---- GGUF --------------------------------------------------------------------------
    def gguf_rules(self, config: Config) -> Sequence[Rule]:
        return [*renames(ARCH, RENAMED), Rename(SINKS, tensor_name(MODEL_TENSOR.ATTN_SINKS)), *expert_rules()]

    def gguf_hparams(self) -> tuple[HParam, ...]:
        mine = (Keys.Rope.FREQ_BASE, Keys.Attention.LAYERNORM_RMS_EPS)  # with GptOssConfig's defaults
        return tuple(h for h in decoder_hparams() if h.key not in mine) + (
            HParam(Keys.Rope.FREQ_BASE, "rope_theta", float, default=DEFAULT_THETA,
                   fallbacks=("rope_parameters.rope_theta",)),
            HParam(Keys.Attention.LAYERNORM_RMS_EPS, "rms_norm_eps", float, default=DEFAULT_EPS),
            HParam(Keys.LLM.EXPERT_COUNT, "num_local_experts", required=True, fallbacks=("num_experts",)),
            HParam(Keys.LLM.EXPERT_USED_COUNT, "num_experts_per_tok", required=True),
            HParam(Keys.LLM.EXPERT_FEED_FORWARD_LENGTH, "intermediate_size", required=True),
            HParam(Keys.Attention.SLIDING_WINDOW, "sliding_window"),
            HParam(Keys.Attention.KEY_LENGTH, "head_dim"),
            HParam(Keys.Attention.VALUE_LENGTH, "head_dim"),
        )

    def gguf_meta(self, config: Config) -> dict[str, Any]:
        a = arch_name(ARCH)
        kv: dict[str, Any] = {Keys.Attention.KEY_LENGTH.format(arch=a): self.head_dim(config),
                              Keys.Attention.VALUE_LENGTH.format(arch=a): self.head_dim(config)}
        kv.update(rope_scaling_meta(config, a))
        sliding = [t == SLIDING for t in self.layer_types(config)]
        if sliding != _swa_pattern(len(sliding), SWA_PATTERN):
            kv[Keys.Attention.SLIDING_WINDOW_PATTERN.format(arch=a)] = sliding
        return kv

    def gguf_config(self, meta: Config, config: dict[str, Any]) -> None:
        """The config keys computed from llama.cpp's metadata (a GGUF without lmconv's stored config)."""
        a = arch_name(ARCH)
        config.setdefault("head_dim", int(config["hidden_size"]) // int(config["num_attention_heads"]))
        config.setdefault("rope_theta", DEFAULT_THETA)
        rope_scaling_config(meta, a, config)
        config.pop("rope_theta", None)
        if config["rope_parameters"]["rope_type"] == "yarn":
            config["rope_parameters"]["truncate"] = False  # every gpt-oss release; llama.cpp has no key for it
        n = int(config["num_hidden_layers"])
        pattern = meta.get(Keys.Attention.SLIDING_WINDOW_PATTERN.format(arch=a))
        if isinstance(pattern, list):
            sliding = [bool(x) for x in pattern[:n]] + [False] * max(0, n - len(pattern))
        else:
            sliding = _swa_pattern(n, int(pattern) if pattern is not None else SWA_PATTERN)
        config["layer_types"] = [SLIDING if s else FULL for s in sliding]

    def layouts(self) -> dict[str, Layout]:
        return {"gguf": Layout(
            "gguf", arch_name(ARCH), self.gguf_rules, self.gguf_hparams(), extra_meta=self.gguf_meta,
            extra_config=self.gguf_config,
            config_base={"architectures": [self.hf_architectures[0]], "model_type": self.model_types[0],
                         "hidden_act": "silu", "attention_bias": True, "swiglu_alpha": LLAMA_CPP_ALPHA,
                         "swiglu_limit": LLAMA_CPP_LIMIT},
        )}

    def untied_tensors(self, model: Model) -> list[Tensor]:
        """llama.cpp's gpt-oss graph always reads ``output.weight``: a tied model gets the embedding there."""
        out = super().untied_tensors(model)
        if not any(t.name == self.hf_output for t in out):
            emb = next((t for t in out if t.name == self.hf_embedding), None)
            if emb is not None:
                out.append(emb.replace(name=self.hf_output, aliases=()))
        return out

    def to_target(self, model: Model, target: str, warn: Callable[[str], None] = lambda m: None
                  ) -> tuple[list[Tensor], dict[str, Any]]:
        if target == "gguf":
            for message in self.caveats(model.config):
                warn(message)
        return super().to_target(model, target, warn)

    # ---- the reference forward pass ------------------------------------------------------
    def forward(self, model: Model, ids: Sequence[int], dtype: np.dtype) -> np.ndarray:
        cfg = model.config
        W = B.Weights(model, dtype, self.name)
        n_head, n_kv = self.heads(cfg)
        size = self.head_dim(cfg)
        eps = float(cfg.get("rms_norm_eps", DEFAULT_EPS))
        alpha, limit = self.swiglu(cfg)
        top_k = int(cfg["num_experts_per_tok"])
        n = len(ids)
        inv, pos_scale, attn_factor = B.rope_inv_freq(cfg, size, dtype, seq_len=n)
        rope = B.Rotary(inv, n, dtype, pos_scale, attn_factor)
        window = cfg.get("sliding_window")
        masks = {SLIDING: B.causal_mask(n, int(window) if window else None), FULL: B.causal_mask(n)}
        emb = W("model.embed_tokens.weight")
        B.checked_ids(model, list(ids), emb.shape[0])
        h = emb[np.asarray(ids)]
        for i, kind in enumerate(self.layer_types(cfg)):
            p = f"model.layers.{i}."
            x = B.rms_norm(h, W(p + "input_layernorm.weight"), eps)
            q, k, v = (B.linear(x, W(p + f"self_attn.{c}_proj.weight"), W.opt(p + f"self_attn.{c}_proj.bias"))
                       for c in "qkv")
            q, k, v = B.heads(q, n_head, size), B.heads(k, n_kv, size), B.heads(v, n_kv, size)
            a = B.sink_attention(rope(q), rope(k), v, size ** -0.5, masks[kind], W(p + "self_attn.sinks"))
            h = h + B.linear(a, W(p + "self_attn.o_proj.weight"), W.opt(p + "self_attn.o_proj.bias"))
            x = B.rms_norm(h, W(p + "post_attention_layernorm.weight"), eps)
            h = h + self.experts(W, p, x, top_k, alpha, limit)
        h = B.rms_norm(h, W("model.norm.weight"), eps)
        return h @ W("lm_head.weight", "model.embed_tokens.weight").T

    def experts(self, W: B.Weights, p: str, x: np.ndarray, top_k: int, alpha: float, limit: float) -> np.ndarray:
        """The routed experts: top-k router logits, softmax over those k, clamped SwiGLU experts."""
        logits = B.linear(x, W(p + "mlp.router.weight"), W(p + "mlp.router.bias"))
        idx = np.argsort(-logits, axis=-1, kind="stable")[:, :top_k]
        weights = B.softmax(np.take_along_axis(logits, idx, axis=-1))
        gate_up, gate_up_b = W(p + "mlp.experts.gate_up_proj"), W(p + "mlp.experts.gate_up_proj_bias")
        down, down_b = W(p + "mlp.experts.down_proj"), W(p + "mlp.experts.down_proj_bias")

        def run(e: int, xs: np.ndarray) -> np.ndarray:
            gu = xs @ gate_up[e] + gate_up_b[e]
            return B.clamped_swiglu(gu[:, 0::2], gu[:, 1::2], alpha, limit) @ down[e] + down_b[e]

        return B.moe(x, idx, weights, run)


@hookimpl
def register_architectures(register: Any) -> None:
    register(GptOssArchitecture())
