"""A small numpy reference forward pass, straight from the IR (HF names, HF layouts).

Used by ``lmconv verify --logits`` to check behaviour, not just weights: both
models run on the same token ids and their logits are compared. No torch, no
transformers: weights are loaded one tensor at a time when a layer needs them
(block-quantised tensors are dequantised), so memory stays near one layer plus
the embedding.

Supported families:

* llama (``LlamaForCausalLM``, ``MistralForCausalLM``, ``Qwen2ForCausalLM``):
  RMSNorm, rotary embeddings (``rope_theta``; default, linear and llama3
  scaling), grouped-query attention, SwiGLU MLP, optional q/k/v/o and MLP biases,
  untied or tied ``lm_head``, Mistral's sliding window;
* GPT-2 (``GPT2LMHeadModel``): LayerNorm, learned positions, Conv1D ``[in, out]``
  weights, ``gelu_new``, tied ``lm_head``.

The arithmetic follows transformers' eager implementations so that, in float64,
the logits agree with theirs to rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .errors import InputError, UsageError
from .ir import Model, Tensor

LLAMA_FAMILY = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
GPT2_FAMILY = ("GPT2LMHeadModel",)
SUPPORTED = LLAMA_FAMILY + GPT2_FAMILY


def supports(model: Model) -> bool:
    return model.architecture in SUPPORTED


class Weights:
    """Loads an HF-named tensor on demand, as a float array; knows aliases and implied ties."""

    def __init__(self, model: Model, dtype: Any = np.float32) -> None:
        self.model = model
        self.dtype = np.dtype(dtype)
        self.by_name: dict[str, Tensor] = {}
        for t in model:
            self.by_name[t.name] = t
            for a in t.aliases:
                self.by_name.setdefault(a, t)

    def has(self, name: str) -> bool:
        return name in self.by_name

    def __call__(self, name: str, *fallbacks: str) -> np.ndarray:
        for n in (name, *fallbacks):
            t = self.by_name.get(n)
            if t is not None:
                return load_values(t).astype(self.dtype, copy=False)
        raise InputError(f"has no tensor {name!r}, which a {self.model.architecture} forward pass needs",
                         path=self.model.source or None)

    def opt(self, name: str) -> np.ndarray | None:
        return self(name) if name in self.by_name else None


def load_values(t: Tensor) -> np.ndarray:
    """A tensor's values as a float array (block types dequantised, other dtypes as stored)."""
    if t.dtype.is_quantized:
        from .transforms import dequantize_tensor

        t = dequantize_tensor(t)
    arr = t.load()
    if arr.dtype.kind not in "fc" or arr.dtype.itemsize < 4:  # f16, bf16, fp8 (ml_dtypes kind 'V'), ints
        arr = arr.astype(np.float32)
    return arr


# --------------------------------------------------------------------------- pieces
def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - np.max(x, axis=-1, keepdims=True)
    e = np.exp(x)
    return e / np.sum(e, axis=-1, keepdims=True)


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * np.power(x, 3.0))))


def _gelu_erf(x: np.ndarray) -> np.ndarray:
    from math import erf

    verf = np.vectorize(erf, otypes=[np.float64])
    return (0.5 * x * (1.0 + verf(x / math.sqrt(2.0)))).astype(x.dtype)


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "silu": _silu, "swish": _silu, "gelu_new": _gelu_tanh, "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_fast": _gelu_tanh, "gelu": _gelu_erf, "relu": _relu,
}


def _act(name: str | None, default: str) -> Callable[[np.ndarray], np.ndarray]:
    key = name or default
    if key not in ACTIVATIONS:
        raise UsageError(f"the reference forward pass does not implement activation {key!r}")
    return ACTIVATIONS[key]


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    var = np.mean(x * x, axis=-1, keepdims=True)
    return w * (x / np.sqrt(var + eps))


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = np.mean(x, axis=-1, keepdims=True)
    var = np.mean((x - mu) ** 2, axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """nn.Linear: weight [out, in]."""
    y = x @ w.T
    return y + b if b is not None else y


def _causal_mask(n: int, window: int | None = None) -> np.ndarray:
    i = np.arange(n)[:, None]
    j = np.arange(n)[None, :]
    allowed = j <= i
    if window:
        allowed &= (i - j) < window
    return allowed


def _attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float, allowed: np.ndarray) -> np.ndarray:
    """q [h, n, d], k/v [h, n, d] (already repeated for GQA) → [n, h*d]."""
    scores = (q @ k.transpose(0, 2, 1)) * scale
    scores = np.where(allowed[None], scores, -np.inf)
    out = _softmax(scores) @ v
    h, n, d = out.shape
    return out.transpose(1, 0, 2).reshape(n, h * d)


# --------------------------------------------------------------------------- llama
def _rope_inv_freq(config: dict[str, Any], head_dim: int, dtype: Any) -> tuple[np.ndarray, float]:
    params = config.get("rope_parameters") if isinstance(config.get("rope_parameters"), dict) else {}
    scaling = config.get("rope_scaling") if isinstance(config.get("rope_scaling"), dict) else {}
    merged = {**(params or {}), **(scaling or {})}
    theta = float(config.get("rope_theta", merged.get("rope_theta", 10000.0)))
    partial = float(merged.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)) or 1.0)
    dim = int(head_dim * partial)
    inv = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float64) / dim))
    kind = merged.get("rope_type", merged.get("type", "default")) or "default"
    pos_scale = 1.0
    if kind == "linear":
        pos_scale = 1.0 / float(merged["factor"])
    elif kind == "llama3":
        factor = float(merged["factor"])
        low, high = float(merged.get("low_freq_factor", 1.0)), float(merged.get("high_freq_factor", 4.0))
        old_ctx = float(merged.get("original_max_position_embeddings", 8192))
        low_wl, high_wl = old_ctx / low, old_ctx / high
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wl, inv / factor, inv)
        smooth = (old_ctx / wavelen - low) / (high - low)
        mid = (1 - smooth) * scaled / factor + smooth * scaled
        is_mid = (wavelen >= high_wl) & (wavelen <= low_wl)
        inv = np.where(is_mid, mid, scaled)
    elif kind not in ("default", None):
        raise UsageError(f"the reference forward pass does not implement rope type {kind!r}")
    # transformers computes inv_freq in float32
    return inv.astype(np.float32).astype(dtype), pos_scale


def _rotate_half(x: np.ndarray) -> np.ndarray:
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def _llama(model: Model, ids: Sequence[int], dtype: Any) -> np.ndarray:
    cfg = model.config
    W = Weights(model, dtype)
    hidden = int(cfg["hidden_size"])
    n_head = int(cfg["num_attention_heads"])
    n_kv = int(cfg.get("num_key_value_heads") or n_head)
    head_dim = int(cfg.get("head_dim") or hidden // n_head)
    n_layer = int(cfg["num_hidden_layers"])
    eps = float(cfg.get("rms_norm_eps", 1e-6))
    act = _act(cfg.get("hidden_act"), "silu")
    window = cfg.get("sliding_window") if cfg.get("use_sliding_window", True) else None
    if model.architecture == "Qwen2ForCausalLM" and not cfg.get("use_sliding_window", False):
        window = None
    n = len(ids)
    inv, pos_scale = _rope_inv_freq(cfg, head_dim, dtype)
    pos = np.arange(n, dtype=np.float64).astype(dtype) * dtype.type(pos_scale)
    freqs = pos[:, None] * inv[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    rot = emb.shape[-1]
    cos, sin = np.cos(emb).astype(dtype), np.sin(emb).astype(dtype)
    allowed = _causal_mask(n, int(window) if window else None)

    def rope(x: np.ndarray) -> np.ndarray:  # [h, n, d]
        xr, rest = x[..., :rot], x[..., rot:]
        out = xr * cos + _rotate_half(xr) * sin
        return np.concatenate([out, rest], axis=-1) if rest.shape[-1] else out

    emb_w = W("model.embed_tokens.weight")
    h = emb_w[np.asarray(ids)]
    for i in range(n_layer):
        p = f"model.layers.{i}."
        x = _rms_norm(h, W(p + "input_layernorm.weight"), eps)
        q = _linear(x, W(p + "self_attn.q_proj.weight"), W.opt(p + "self_attn.q_proj.bias"))
        k = _linear(x, W(p + "self_attn.k_proj.weight"), W.opt(p + "self_attn.k_proj.bias"))
        v = _linear(x, W(p + "self_attn.v_proj.weight"), W.opt(p + "self_attn.v_proj.bias"))
        q = rope(q.reshape(n, n_head, head_dim).transpose(1, 0, 2))
        k = rope(k.reshape(n, n_kv, head_dim).transpose(1, 0, 2))
        v = v.reshape(n, n_kv, head_dim).transpose(1, 0, 2)
        rep = n_head // n_kv
        k, v = np.repeat(k, rep, axis=0), np.repeat(v, rep, axis=0)
        a = _attention(q, k, v, head_dim ** -0.5, allowed)
        h = h + _linear(a, W(p + "self_attn.o_proj.weight"), W.opt(p + "self_attn.o_proj.bias"))
        x = _rms_norm(h, W(p + "post_attention_layernorm.weight"), eps)
        g = _linear(x, W(p + "mlp.gate_proj.weight"), W.opt(p + "mlp.gate_proj.bias"))
        u = _linear(x, W(p + "mlp.up_proj.weight"), W.opt(p + "mlp.up_proj.bias"))
        h = h + _linear(act(g) * u, W(p + "mlp.down_proj.weight"), W.opt(p + "mlp.down_proj.bias"))
    h = _rms_norm(h, W("model.norm.weight"), eps)
    head = W("lm_head.weight") if W.has("lm_head.weight") else emb_w
    return h @ head.T


# --------------------------------------------------------------------------- gpt-2
def _gpt2(model: Model, ids: Sequence[int], dtype: Any) -> np.ndarray:
    cfg = model.config
    W = Weights(model, dtype)
    n_embd = int(cfg["n_embd"])
    n_head = int(cfg["n_head"])
    n_layer = int(cfg["n_layer"])
    eps = float(cfg.get("layer_norm_epsilon", 1e-5))
    act = _act(cfg.get("activation_function"), "gelu_new")
    hd = n_embd // n_head
    n = len(ids)
    n_pos = int(cfg.get("n_positions") or cfg.get("n_ctx") or 1024)
    if n > n_pos:
        raise UsageError(f"{n} tokens exceed the model's {n_pos} positions")
    allowed = _causal_mask(n)
    scale = hd ** -0.5 if cfg.get("scale_attn_weights", True) else 1.0
    wte = W("transformer.wte.weight")
    h = wte[np.asarray(ids)] + W("transformer.wpe.weight")[:n]
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        x = _layer_norm(h, W(p + "ln_1.weight"), W(p + "ln_1.bias"), eps)
        qkv = x @ W(p + "attn.c_attn.weight") + W(p + "attn.c_attn.bias")  # Conv1D: [in, out]
        q, k, v = (m.reshape(n, n_head, hd).transpose(1, 0, 2) for m in np.split(qkv, 3, axis=-1))
        s = scale / (i + 1) if cfg.get("scale_attn_by_inverse_layer_idx") else scale
        a = _attention(q, k, v, s, allowed)
        h = h + a @ W(p + "attn.c_proj.weight") + W(p + "attn.c_proj.bias")
        x = _layer_norm(h, W(p + "ln_2.weight"), W(p + "ln_2.bias"), eps)
        x = act(x @ W(p + "mlp.c_fc.weight") + W(p + "mlp.c_fc.bias"))
        h = h + x @ W(p + "mlp.c_proj.weight") + W(p + "mlp.c_proj.bias")
    h = _layer_norm(h, W("transformer.ln_f.weight"), W("transformer.ln_f.bias"), eps)
    head = W("lm_head.weight") if W.has("lm_head.weight") else wte
    return h @ head.T


def forward(model: Model, ids: Sequence[int], *, dtype: Any = np.float32) -> np.ndarray:
    """Logits ``[len(ids), vocab]`` of ``model`` on ``ids`` (float32 or float64)."""
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise UsageError("the reference forward pass runs in float32 or float64")
    ids = [int(i) for i in ids]
    if not ids:
        raise UsageError("no token ids to run")
    arch = model.architecture
    if arch in LLAMA_FAMILY:
        run = _llama
    elif arch in GPT2_FAMILY:
        run = _gpt2
    else:
        raise UsageError(f"the reference forward pass runs llama-family and GPT-2 models, not {arch or 'an unknown architecture'}"
                         + (f" ({model.source})" if model.source else ""))
    with np.errstate(over="ignore", under="ignore"):
        return run(model, ids, dt).astype(dt, copy=False)
