"""Numpy building blocks for the families' reference forward passes (``verify --logits``).

Norms, activations, attention (causal, grouped-query, sliding window, logit soft-capping), rotary
embeddings and their scaling variants, mixture-of-experts routing, state-space scans and gated
recurrent cells (PyTorch's LSTM and GRU layouts), and :class:`Weights`, which
loads one HF-named tensor at a time (dequantising block types). Each follows transformers' eager
implementation, so that in float64 a family's logits agree with transformers' to rounding. No
family is named here: a family plugin strings these together in its ``forward``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .errors import InputError, UsageError
from .ir import Model, Tensor
from .transforms import dequantize_tensor

Array = np.ndarray


# =========================================================================== weights
def load_values(t: Tensor) -> Array:
    """A tensor's values as a float array (block types dequantised, other dtypes as stored)."""
    if t.dtype.is_quantized:
        t = dequantize_tensor(t)
    arr = t.load()
    if arr.dtype.kind not in "fc" or arr.dtype.itemsize < 4:  # f16, bf16, fp8 (ml_dtypes kind 'V'), ints
        arr = arr.astype(np.float32)
    return arr


class Weights:
    """Loads an HF-named tensor on demand, as a float array of the forward's dtype; knows aliases."""

    def __init__(self, model: Model, dtype: Any = np.float32, family: str = "") -> None:
        self.model = model
        self.dtype = np.dtype(dtype)
        self.family = family or (model.architecture or "this")
        self.by_name: dict[str, Tensor] = {}
        for t in model:
            self.by_name[t.name] = t
            for a in t.aliases:
                self.by_name.setdefault(a, t)

    def has(self, name: str) -> bool:
        return name in self.by_name

    def __call__(self, name: str, *fallbacks: str) -> Array:
        for n in (name, *fallbacks):
            t = self.by_name.get(n)
            if t is not None:
                return load_values(t).astype(self.dtype, copy=False)
        raise InputError(f"has no tensor {name!r}, which a {self.family} forward pass needs",
                         path=self.model.source or None)

    def opt(self, name: str) -> Array | None:
        return self(name) if name in self.by_name else None


# =========================================================================== activations
def softmax(x: Array, axis: int = -1) -> Array:
    x = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(x)
    return e / np.sum(e, axis=axis, keepdims=True)


def silu(x: Array) -> Array:
    return x / (1.0 + np.exp(-x))


def gelu_tanh(x: Array) -> Array:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * np.power(x, 3.0))))


def gelu_erf(x: Array) -> Array:
    from math import erf

    verf = np.vectorize(erf, otypes=[np.float64])
    return (0.5 * x * (1.0 + verf(x / math.sqrt(2.0)))).astype(x.dtype)


def relu(x: Array) -> Array:
    return np.maximum(x, 0)


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "silu": silu, "swish": silu, "gelu_new": gelu_tanh, "gelu_pytorch_tanh": gelu_tanh,
    "gelu_fast": gelu_tanh, "gelu": gelu_erf, "relu": relu,
}


def activation(name: str | None, default: str) -> Callable[[Array], Array]:
    key = name or default
    if key not in ACTIVATIONS:
        raise UsageError(f"the reference forward pass does not implement activation {key!r}")
    return ACTIVATIONS[key]


# =========================================================================== norms and linear maps
def rms_norm(x: Array, w: Array | None, eps: float, *, offset: float = 0.0) -> Array:
    """RMSNorm; ``offset`` 1.0 gives the ``x · (1 + w)`` form some families store their weights for."""
    var = np.mean(x * x, axis=-1, keepdims=True)
    y = x / np.sqrt(var + eps)
    if w is None:
        return y
    return y * (w + x.dtype.type(offset)) if offset else w * y


def layer_norm(x: Array, w: Array | None, b: Array | None, eps: float) -> Array:
    mu = np.mean(x, axis=-1, keepdims=True)
    var = np.mean((x - mu) ** 2, axis=-1, keepdims=True)
    y = (x - mu) / np.sqrt(var + eps)
    if w is not None:
        y = y * w
    return y + b if b is not None else y


def linear(x: Array, w: Array, b: Array | None = None) -> Array:
    """nn.Linear: weight ``[out, in]``."""
    y = x @ w.T
    return y + b if b is not None else y


# =========================================================================== attention
def causal_mask(n: int, window: int | None = None) -> Array:
    """``allowed[i, j]``: position i may attend to j (j <= i, and within ``window`` when given)."""
    i = np.arange(n)[:, None]
    j = np.arange(n)[None, :]
    allowed = j <= i
    if window:
        allowed &= (i - j) < window
    return allowed


def repeat_kv(x: Array, n_rep: int) -> Array:
    """Grouped-query attention: each of the KV heads ``[h_kv, n, d]`` serves ``n_rep`` query heads."""
    return x if n_rep == 1 else np.repeat(x, n_rep, axis=0)


def attention(q: Array, k: Array, v: Array, scale: float, allowed: Array, *, softcap: float | None = None) -> Array:
    """q ``[h, n, d]``, k/v ``[h_kv, n, d]`` → ``[n, h*d]``; GQA by repeating KV heads, optional
    soft-capping of the scores (``cap · tanh(s / cap)``)."""
    rep = q.shape[0] // k.shape[0]
    k, v = repeat_kv(k, rep), repeat_kv(v, rep)
    scores = (q @ k.transpose(0, 2, 1)) * scale
    if softcap:
        scores = np.tanh(scores / softcap) * softcap
    scores = np.where(allowed[None], scores, -np.inf)
    out = softmax(scores) @ v
    h, n, d = out.shape
    return out.transpose(1, 0, 2).reshape(n, h * d)


def heads(x: Array, n_head: int, head_dim: int) -> Array:
    """``[n, n_head*head_dim]`` → ``[n_head, n, head_dim]``."""
    return x.reshape(x.shape[0], n_head, head_dim).transpose(1, 0, 2)


# =========================================================================== rotary embeddings
def rope_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """The rotary settings of a config, wherever transformers put them (``rope_parameters`` in v5,
    ``rope_scaling`` and a top-level ``rope_theta`` before)."""
    params = config.get("rope_parameters") if isinstance(config.get("rope_parameters"), dict) else {}
    scaling = config.get("rope_scaling") if isinstance(config.get("rope_scaling"), dict) else {}
    merged: dict[str, Any] = {**(params or {}), **(scaling or {})}
    if "rope_theta" in config:
        merged["rope_theta"] = config["rope_theta"]
    merged.setdefault("rope_theta", 10000.0)
    kind = merged.get("rope_type", merged.get("type", "default")) or "default"
    merged["rope_type"] = kind
    return merged


def rope_inv_freq(config: Mapping[str, Any], head_dim: int, dtype: Any, *, params: Mapping[str, Any] | None = None,
                  seq_len: int | None = None) -> tuple[Array, float, float]:
    """Inverse frequencies of the rotated dimensions, the position scale and the attention factor (the
    scale of cos/sin: 1 except for yarn and longrope), as transformers computes them (in float32).

    Rope types: default, linear, dynamic (no change up to ``max_position_embeddings``), llama3, yarn,
    longrope (short factors up to ``original_max_position_embeddings``, long ones beyond)."""
    p = dict(params) if params is not None else rope_params(config)
    theta = float(p["rope_theta"])
    partial = float(p.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)) or 1.0)
    dim = int(head_dim * partial)
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float64) / dim
    inv = 1.0 / (theta ** exponents)
    kind = p["rope_type"]
    pos_scale, attn_factor = 1.0, 1.0
    if kind == "linear":
        pos_scale = 1.0 / float(p["factor"])
    elif kind == "llama3":
        inv = llama3_inv_freq(inv, p)
    elif kind == "yarn":
        inv, attn_factor = yarn_inv_freq(theta, dim, p, config)
    elif kind == "longrope":
        inv, attn_factor = longrope_inv_freq(theta, dim, p, config, seq_len)
    elif kind == "dynamic":
        if seq_len is not None and seq_len > int(config.get("max_position_embeddings") or seq_len):
            raise UsageError("the reference forward pass runs dynamic rope scaling only within max_position_embeddings")
    elif kind != "default":
        raise UsageError(f"the reference forward pass does not implement rope type {kind!r}")
    return inv.astype(np.float32).astype(dtype), pos_scale, attn_factor


def yarn_inv_freq(theta: float, dim: int, p: Mapping[str, Any], config: Mapping[str, Any]) -> tuple[Array, float]:
    """YaRN: interpolated low frequencies, extrapolated high ones, a linear ramp between, and an
    attention factor of 0.1·ln(factor) + 1 (or the one given)."""
    orig = int(p.get("original_max_position_embeddings") or config.get("max_position_embeddings"))
    factor = p.get("factor")
    factor = float(factor) if factor is not None else float(config["max_position_embeddings"]) / orig

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attn = p.get("attention_factor")
    if attn is None:
        ms, ms_all = p.get("mscale"), p.get("mscale_all_dim")
        attn = mscale(factor, ms) / mscale(factor, ms_all) if ms and ms_all else mscale(factor)
    beta_fast, beta_slow = float(p.get("beta_fast") or 32), float(p.get("beta_slow") or 1)

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(orig / (rotations * 2 * math.pi))) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1).astype(np.float32)
    pos_freqs = (theta ** (np.arange(0, dim, 2).astype(np.float32) / dim)).astype(np.float32)
    extrapolation = 1.0 - ramp
    inv = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv.astype(np.float64), float(attn)


def longrope_inv_freq(theta: float, dim: int, p: Mapping[str, Any], config: Mapping[str, Any],
                      seq_len: int | None) -> tuple[Array, float]:
    """LongRoPE: per-dimension factors, short ones up to the original context and long ones beyond it."""
    orig = int(p.get("original_max_position_embeddings") or config.get("original_max_position_embeddings")
               or config["max_position_embeddings"])
    factor = p.get("factor")
    factor = float(factor) if factor is not None else float(config["max_position_embeddings"]) / orig
    attn = p.get("attention_factor")
    if attn is None:
        attn = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(orig))
    ext = np.asarray(p["long_factor"] if seq_len and seq_len > orig else p["short_factor"], dtype=np.float32)
    shape = (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim).astype(np.float32)
    inv = 1.0 / (ext * np.float32(theta) ** shape)
    return inv.astype(np.float64), float(attn)


def llama3_inv_freq(inv: Array, p: Mapping[str, Any]) -> Array:
    """The ``llama3`` rope type: frequency-dependent scaling of the inverse frequencies."""
    factor = float(p["factor"])
    low, high = float(p.get("low_freq_factor", 1.0)), float(p.get("high_freq_factor", 4.0))
    old_ctx = float(p.get("original_max_position_embeddings", 8192))
    low_wl, high_wl = old_ctx / low, old_ctx / high
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_wl, inv / factor, inv)
    smooth = (old_ctx / wavelen - low) / (high - low)
    mid = (1 - smooth) * scaled / factor + smooth * scaled
    is_mid = (wavelen >= high_wl) & (wavelen <= low_wl)
    return np.where(is_mid, mid, scaled)


def rotate_half(x: Array) -> Array:
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


class Rotary:
    """Rotary position embedding for ``n`` positions (HF's rotate-half convention); applies to the
    first ``2·len(inv_freq)`` dimensions of each head and leaves the rest (partial rotary)."""

    def __init__(self, inv_freq: Array, n: int, dtype: Any, pos_scale: float = 1.0, attn_factor: float = 1.0) -> None:
        dt = np.dtype(dtype)
        pos = np.arange(n, dtype=np.float64).astype(dt) * dt.type(pos_scale)
        freqs = pos[:, None] * inv_freq[None, :].astype(dt)
        emb = np.concatenate([freqs, freqs], axis=-1)
        self.rot = emb.shape[-1]
        self.cos = (np.cos(emb) * attn_factor).astype(dt)
        self.sin = (np.sin(emb) * attn_factor).astype(dt)

    def __call__(self, x: Array) -> Array:
        """x ``[h, n, d]``."""
        xr, rest = x[..., :self.rot], x[..., self.rot:]
        out = xr * self.cos + rotate_half(xr) * self.sin
        return np.concatenate([out, rest], axis=-1) if rest.shape[-1] else out


# =========================================================================== mixture of experts
def top_k_routing(logits: Array, k: int, *, normalize: bool = True) -> tuple[Array, Array]:
    """Softmax over the router logits ``[n, n_experts]``, then the ``k`` best experts per token and
    their weights (renormalised to sum to 1 when ``normalize``)."""
    probs = softmax(logits.astype(np.float64) if logits.dtype == np.float64 else logits)
    idx = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    w = np.take_along_axis(probs, idx, axis=-1)
    if normalize:
        w = w / w.sum(axis=-1, keepdims=True)
    return idx, w.astype(logits.dtype)


def moe(x: Array, idx: Array, w: Array, expert: Callable[[int, Array], Array]) -> Array:
    """Σ over each token's chosen experts of ``weight · expert(e, token)``."""
    out = np.zeros_like(x)
    for e in np.unique(idx):
        rows, slot = np.nonzero(idx == e)
        out[rows] += expert(int(e), x[rows]) * w[rows, slot][:, None]
    return out


def checked_ids(model: Model, ids: list[int], vocab: int) -> None:
    if any(i < 0 or i >= vocab for i in ids):
        raise UsageError(f"token ids must lie in 0..{vocab - 1}" + (f" ({model.source})" if model.source else ""))


# =========================================================================== state-space (recurrent) blocks
def softplus(x: Array, threshold: float = 20.0) -> Array:
    """``log(1 + e^x)``, and ``x`` itself above ``threshold`` (torch's ``F.softplus``)."""
    return np.where(x > threshold, x, np.log1p(np.exp(np.minimum(x, threshold))))


def causal_conv1d(x: Array, w: Array, b: Array | None = None) -> Array:
    """Depthwise causal convolution along time: x ``[n, c]``, one kernel of ``k`` taps per channel
    w ``[c, k]`` (oldest tap first), bias ``[c]`` → ``[n, c]``. Position t sees ``x[t-k+1 .. t]``,
    zeros before the first (torch's ``Conv1d(groups=c, padding=k-1)`` cut to the first n outputs)."""
    n, c = x.shape
    k = w.shape[1]
    padded = np.concatenate([np.zeros((k - 1, c), dtype=x.dtype), x])
    out = np.zeros_like(x)
    for j in range(k):
        out += padded[j:j + n] * w[:, j]
    return out + b if b is not None else out


def selective_scan(x: Array, dt: Array, a: Array, b: Array, c: Array, d: Array | None = None) -> Array:
    """The selective state-space recurrence, one channel per row of ``a``: x and dt ``[n, ch]``, a
    ``[ch, s]``, b and c ``[n, s]`` (shared by the channels), d ``[ch]``. From a zero state,
    ``h_t = exp(dt_t · a) ⊙ h_{t-1} + (dt_t · x_t) ⊗ b_t`` and ``y_t = h_t c_t + d ⊙ x_t`` → y ``[n, ch]``."""
    n = x.shape[0]
    h = np.zeros(a.shape, dtype=x.dtype)
    y = np.empty_like(x)
    for t in range(n):
        h = np.exp(dt[t][:, None] * a) * h + (dt[t] * x[t])[:, None] * b[t][None, :]
        y[t] = h @ c[t]
    return y + x * d if d is not None else y


# =========================================================================== gated recurrent cells
def sigmoid(x: Array) -> Array:
    return 1.0 / (1.0 + np.exp(-x))


def lstm_sequence(x: Array, w_ih: Array, w_hh: Array, b_ih: Array | None = None, b_hh: Array | None = None, *,
                  w_hr: Array | None = None, reverse: bool = False) -> Array:
    """One direction of a long short-term memory layer over x ``[n, in]`` from a zero state, in
    PyTorch's ``nn.LSTM`` layout: the gates i, f, g, o stacked in the rows of w_ih ``[4h, in]`` and
    w_hh ``[4h, out]``; ``c = σ(f)·c + σ(i)·tanh(g)``, ``h = σ(o)·tanh(c)``, then ``h = w_hr h`` when a
    projection w_hr ``[p, h]`` is given (out = p, else h). ``reverse`` runs from the last step to the
    first (the backward direction); outputs stay in input order. → ``[n, out]``."""
    n = x.shape[0]
    hid = w_hh.shape[0] // 4
    pre = x @ w_ih.T
    for b in (b_ih, b_hh):
        if b is not None:
            pre = pre + b
    h = np.zeros(w_hh.shape[1], dtype=x.dtype)
    c = np.zeros(hid, dtype=x.dtype)
    out = np.empty((n, w_hh.shape[1]), dtype=x.dtype)
    for t in (range(n - 1, -1, -1) if reverse else range(n)):
        g = pre[t] + w_hh @ h
        i, f, cand, o = g[:hid], g[hid:2 * hid], g[2 * hid:3 * hid], g[3 * hid:]
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(cand)
        h = sigmoid(o) * np.tanh(c)
        if w_hr is not None:
            h = w_hr @ h
        out[t] = h
    return out


def gru_sequence(x: Array, w_ih: Array, w_hh: Array, b_ih: Array | None = None, b_hh: Array | None = None, *,
                 reverse: bool = False) -> Array:
    """One direction of a gated recurrent unit layer over x ``[n, in]`` from a zero state, in PyTorch's
    ``nn.GRU`` layout: gates r, z, n in the rows of w_ih ``[3h, in]`` and w_hh ``[3h, h]``, the n gate's
    hidden bias inside the reset product: ``n = tanh(W_in x + b_in + r·(W_hn h + b_hn))``,
    ``h = (1 - z)·n + z·h``. → ``[n, h]``."""
    n = x.shape[0]
    hid = w_hh.shape[1]
    gi = x @ w_ih.T + (b_ih if b_ih is not None else 0)
    bh = b_hh if b_hh is not None else np.zeros(3 * hid, dtype=x.dtype)
    h = np.zeros(hid, dtype=x.dtype)
    out = np.empty((n, hid), dtype=x.dtype)
    for t in (range(n - 1, -1, -1) if reverse else range(n)):
        gh = w_hh @ h + bh
        r = sigmoid(gi[t, :hid] + gh[:hid])
        z = sigmoid(gi[t, hid:2 * hid] + gh[hid:2 * hid])
        cand = np.tanh(gi[t, 2 * hid:] + r * gh[2 * hid:])
        h = (1 - z) * cand + z * h
        out[t] = h
    return out


# =========================================================================== attention sinks, clamped SwiGLU
def sink_attention(q: Array, k: Array, v: Array, scale: float, allowed: Array, sinks: Array) -> Array:
    """:func:`attention` with a learned sink logit per query head (``sinks [h]``): it joins each row's
    softmax as one more column, which is then dropped, so a row's weights may sum to less than 1."""
    rep = q.shape[0] // k.shape[0]
    k, v = repeat_kv(k, rep), repeat_kv(v, rep)
    scores = np.where(allowed[None], (q @ k.transpose(0, 2, 1)) * scale, -np.inf)
    sink = np.broadcast_to(sinks.astype(scores.dtype).reshape(-1, 1, 1), (*scores.shape[:2], 1))
    probs = softmax(np.concatenate([scores, sink], axis=-1))[..., :-1]
    out = probs @ v
    h, n, d = out.shape
    return out.transpose(1, 0, 2).reshape(n, h * d)


def clamped_swiglu(gate: Array, up: Array, alpha: float, limit: float) -> Array:
    """A SwiGLU with clamped inputs and a sigmoid gain: the gate clamped above at ``limit``, ``up`` to
    ``[-limit, limit]``, then ``(up + 1) · gate · σ(alpha · gate)``."""
    gate = np.minimum(gate, gate.dtype.type(limit))
    up = np.clip(up, -up.dtype.type(limit), up.dtype.type(limit))
    return (up + 1) * (gate / (1 + np.exp(-gate.dtype.type(alpha) * gate)))
