"""llama-quantize's per-tensor type mixtures (q4_k_m …), as a pure-Python function.

Why a port and not our own policy: a user who asks lmconv for ``q4_k_m`` expects
the file ``llama-quantize … Q4_K_M`` makes — the same type for every tensor —
so that sizes, quality and llama.cpp's own expectations line up. The rules
below follow ``src/llama-quant.cpp`` (``tensor_allows_quantization``,
``llama_tensor_get_type``, ``llama_tensor_get_type_impl``,
``tensor_type_fallback``), including the parts that depend on *order*:

* llama.cpp walks tensors sorted by layer number (tensors without ``blk.N.``
  first), then by name, and counts ``attn_v``-like and ``ffn_down`` tensors as
  it goes; those counters (not the layer in the name) pick the layers that get
  more bits. We sort the same way and count the same way.
* A tensor settled by an override (``REGEX=TYPE``, ``--pure``, the output /
  token-embedding types) never reaches the mixture rules, so it does not
  advance the counters either.

Names are GGUF tensor names; shapes are numpy order (the row length, ggml's
``ne[0]``, is the *last* dimension). Type names are ggml's, upper-case on output
("Q4_K", "Q6_K", "F16", "F32"), any case on input.
"""

from __future__ import annotations

import re
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from .iquants import NEEDS_IMATRIX

__all__ = [
    "PRESETS",
    "LlamaFtype",
    "allows_quantization",
    "choose_tensor_types",
    "normalize_type_name",
    "preset_names",
    "type_names",
]


@dataclass(frozen=True)
class LlamaFtype:
    """One llama-quantize file type: its ``LLAMA_FTYPE_MOSTLY_*`` id and default tensor type."""

    name: str
    ftype: int
    base: str
    description: str


PRESETS: dict[str, LlamaFtype] = {
    p.name: p
    for p in (
        LlamaFtype("f32", 0, "F32", "all float32"),
        LlamaFtype("f16", 1, "F16", "2-D weights float16"),
        LlamaFtype("bf16", 32, "BF16", "2-D weights bfloat16"),
        LlamaFtype("q4_0", 2, "Q4_0", "4-bit legacy, output Q6_K"),
        LlamaFtype("q4_1", 3, "Q4_1", "4-bit legacy with mins, output Q6_K"),
        LlamaFtype("q5_0", 8, "Q5_0", "5-bit legacy, output Q6_K"),
        LlamaFtype("q5_1", 9, "Q5_1", "5-bit legacy with mins, output Q6_K"),
        LlamaFtype("q8_0", 7, "Q8_0", "8-bit"),
        LlamaFtype("q2_k", 10, "Q2_K", "Q2_K with Q3_K/Q4_K for attn_v, ffn_down, attn_output"),
        LlamaFtype("q3_k_s", 11, "Q3_K", "Q3_K throughout"),
        LlamaFtype("q3_k_m", 12, "Q3_K", "Q3_K with Q4_K/Q5_K for attn_v, attn_output, ffn_down"),
        LlamaFtype("q3_k_l", 13, "Q3_K", "Q3_K with Q5_K for attn_v, attn_output, ffn_down"),
        LlamaFtype("q4_k_s", 14, "Q4_K", "Q4_K, first layers' attn_v/ffn_down Q5_K"),
        LlamaFtype("q4_k_m", 15, "Q4_K", "Q4_K, half of attn_v/ffn_down Q6_K"),
        LlamaFtype("q5_k_s", 16, "Q5_K", "Q5_K throughout"),
        LlamaFtype("q5_k_m", 17, "Q5_K", "Q5_K, half of attn_v/ffn_down Q6_K"),
        LlamaFtype("q6_k", 18, "Q6_K", "Q6_K throughout"),
        LlamaFtype("q2_k_s", 21, "Q2_K", "Q2_K, first layers' ffn_down Q4_K (needs --imatrix)"),
        LlamaFtype("iq4_nl", 25, "IQ4_NL", "4.5-bit non-linear (IQ4_NL), output Q6_K"),
        LlamaFtype("iq4_xs", 30, "IQ4_XS", "4.25-bit non-linear (IQ4_XS), output Q6_K"),
        LlamaFtype("iq3_m", 27, "IQ3_S", "IQ3_S with Q4_K for attn_v, attn_output and the first ffn_down"),
        LlamaFtype("iq3_s", 26, "IQ3_S", "3.44-bit lattice (IQ3_S)"),
        LlamaFtype("iq3_xs", 22, "IQ3_S", "IQ3_S with IQ3_XXS for attn_q/attn_k and middle ffn_gate/ffn_up"),
        LlamaFtype("iq3_xxs", 23, "IQ3_XXS", "3.06-bit lattice (IQ3_XXS; needs --imatrix)"),
        LlamaFtype("iq2_m", 29, "IQ2_S", "IQ2_S with IQ3_S for attn_v and the first ffn_down (needs --imatrix)"),
        LlamaFtype("iq2_s", 28, "IQ2_XS", "IQ2_XS with IQ3_S for attn_v and the first ffn_down (needs --imatrix)"),
        LlamaFtype("iq2_xs", 20, "IQ2_XS", "2.31-bit lattice (IQ2_XS; needs --imatrix)"),
        LlamaFtype("iq2_xxs", 19, "IQ2_XXS", "2.06-bit lattice (IQ2_XXS; needs --imatrix)"),
        LlamaFtype("iq1_m", 31, "IQ1_M", "1.75-bit (IQ1_M; needs --imatrix)"),
        LlamaFtype("iq1_s", 24, "IQ1_S", "1.56-bit (IQ1_S; needs --imatrix)"),
    )
}
"""Supported presets (lower-case names): llama-quantize's file types of the types lmconv writes.
The TQ*/MXFP4/Q1_0/Q2_0 file types are not offered (lmconv has no quantiser for them)."""

_Q2_K, _Q3_K_S, _Q3_K_M, _Q3_K_L = 10, 11, 12, 13
_Q4_K_S, _Q4_K_M, _Q5_K_S, _Q5_K_M = 14, 15, 16, 17
_Q4_0, _Q5_0 = 2, 8
_IQ2_XXS, _IQ2_XS, _Q2_K_S, _IQ3_XS, _IQ3_XXS, _IQ1_S, _IQ4_NL = 19, 20, 21, 22, 23, 24, 25
_IQ3_S, _IQ3_M, _IQ2_S, _IQ2_M, _IQ4_XS, _IQ1_M = 26, 27, 28, 29, 30, 31
_IQ2_FAMILY = (_IQ2_XXS, _IQ2_XS, _IQ1_S, _IQ2_S, _IQ2_M, _IQ1_M)  # the 1-2 bit file types' own branch

# tensor_requires_imatrix: the types llama-quantize will not write without an importance matrix
_NEEDS_IMATRIX = {"IQ3_XXS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_M", "IQ1_S"}

_FLOAT_TYPES = {"F32", "F16", "BF16", "F64"}
_NON_QUANT = _FLOAT_TYPES | {"I8", "I16", "I32", "I64"}

# llama.cpp's "70B" model type (attn_v gets more bits): which archs call which
# layer count 70B, and whether that needs grouped-query attention (llama: 80
# layers with n_head == n_head_kv is the old 65B).
_70B_LAYERS: dict[str, tuple[int, bool]] = {
    "llama": (80, True),
    "qwen2": (80, False),
    "deci": (80, False),
    "olmo": (80, False),
    "jais2": (68, False),
}


def type_names() -> list[str]:
    """Every ggml type name we accept (as gguf-py spells them)."""
    return [t.name for t in GGMLQuantizationType]


def preset_names() -> list[str]:
    return list(PRESETS)


def normalize_type_name(name: str) -> str:
    """``"q4_k"`` → ``"Q4_K"``; raises ValueError naming the valid types for anything else.

    Case-insensitive like llama-quantize's ``parse_ggml_type``.
    """
    if isinstance(name, GGMLQuantizationType):
        return name.name
    key = str(name).strip().upper()
    if key in GGMLQuantizationType.__members__:
        return key
    raise ValueError(f"unknown tensor type {name!r}; valid types: {', '.join(type_names())}")


def _block_size(type_name: str) -> int:
    return GGML_QUANT_SIZES[GGMLQuantizationType[type_name]][0]


def _is_quantized(type_name: str) -> bool:
    return type_name not in _NON_QUANT


# --------------------------------------------------------------------------- tensor classification

_LAYER_RE = re.compile(r"blk\.\s*([+-]?\d+)\.")


def _layer_of(name: str) -> int:
    """``sscanf(name, "blk.%d.", &layer)`` with -1 when it does not match."""
    m = _LAYER_RE.match(name)
    return int(m.group(1)) if m else -1


def _sort_key(name: str) -> tuple[int, bytes]:
    """llama_model_loader's weight order: by layer (non-layer tensors first), then bytewise by name."""
    return (_layer_of(name), name.encode())


def _category(name: str) -> str:
    """tensor_get_category: broad roles, matched by substring in llama.cpp's order."""
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for needle, cat in (
        ("attn_qkv.weight", "attn_qkv"),
        ("attn_kv_b.weight", "attn_kv_b"),
        ("attn_v.weight", "attn_v"),
        ("attn_k.weight", "attn_k"),
        ("attn_q.weight", "attn_q"),
        ("attn_output.weight", "attn_output"),
        ("ffn_up", "ffn_up"),
        ("ffn_gate", "ffn_gate"),
        ("ffn_down", "ffn_down"),
    ):
        if needle in name:
            return cat
    return "other"


def _is_attn_v_like(cat: str) -> bool:
    return cat in ("attn_v", "attn_qkv", "attn_kv_b")


_NEVER_QUANTIZED = (
    "_norm.weight",
    "ffn_gate_inp.weight",  # MoE router
    "ffn_gate_tid2eid.weight",
    "altup",
    "laurel",
    "per_layer_model_proj",
    "ssm_conv1d",
    "shortconv.conv.weight",
    "indexer.k_proj.weight",
    "indexer.q_proj.weight",
    "time_mix_first.weight",
    "time_mix_w0.weight",
    "time_mix_w1.weight",
    "time_mix_w2.weight",
    "time_mix_v0.weight",
    "time_mix_v1.weight",
    "time_mix_v2.weight",
    "time_mix_a0.weight",
    "time_mix_a1.weight",
    "time_mix_a2.weight",
    "time_mix_g1.weight",
    "time_mix_g2.weight",
    "time_mix_decay_w1.weight",
    "time_mix_decay_w2.weight",
    "time_mix_lerp_fused.weight",
    "attn_rel_b.weight",
    ".position_embd",
    "sam.pos_embd",
    "sam.neck.",
    "sam.net_",
    ".rel_pos",
    ".patch_embd",
    ".patch_merger",
    "a.rvq.codebook",
    "mm.a.code_embd",
)
_NEVER_QUANTIZED_GLM5_NEXT = (
    "hc_",
    "indexer.attn_q_b",
    "indexer.attn_k",
    "indexer.proj",
    "indexer_compressor_gate",
    "indexer_compressor_ape",
    "ssm_f_a.weight",
    "ssm_f_b.weight",
    "ssm_g_a.weight",
    "ssm_g_b.weight",
    "ssm_beta.weight",
    "attn_kv_a_mqa.weight",
    "attn_k_b.weight",
    "attn_v_b.weight",
)


def _n_dims(shape: tuple[int, ...]) -> int:
    """ggml_n_dims: 1 + the index of the last ggml dimension above 1 (numpy's leading 1s don't count)."""
    ne = list(reversed(shape))
    for i in range(len(ne) - 1, 0, -1):
        if ne[i] > 1:
            return i + 1
    return 1


def allows_quantization(name: str, shape: tuple[int, ...], *, arch: str, quantize_output_tensor: bool = True) -> bool:
    """tensor_allows_quantization: only ≥2-D tensors named ``…weight`` that are not on the never-list."""
    if _n_dims(shape) < 2:
        return False
    # llama.cpp tests `name.rfind("weight") == name.size() - 6`; for a 5-character
    # name both sides are npos, so such a name counts as ending in "weight".
    ok = name.endswith("weight") or len(name) == 5
    ok = ok and (quantize_output_tensor or name != "output.weight")
    ok = ok and name not in ("position_embd.weight", "token_types.weight")
    ok = ok and not any(s in name for s in _NEVER_QUANTIZED)
    if arch == "glm5-next":
        ok = ok and not any(s in name for s in _NEVER_QUANTIZED_GLM5_NEXT)
    return ok


# --------------------------------------------------------------------------- the rules


@dataclass
class _State:
    """quantize_state_impl's counters."""

    arch: str
    n_layer: int
    n_gqa: int
    n_expert: int
    is_70b: bool
    n_attention_wv: int = 0
    i_attention_wv: int = 0
    i_ffn_down: int = 0
    i_ffn_gate: int = 0
    i_ffn_up: int = 0
    has_tied_embeddings: bool = True
    has_imatrix: bool = False


def _use_more_bits(i_layer: int, n_layers: int) -> bool:
    """The layers that get the bigger type in *_M mixtures: first and last eighth, and every third between."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or _cmod(i_layer - n_layers // 8, 3) == 2


def _cdiv(a: int, b: int) -> int:
    """C integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def _cmod(a: int, b: int) -> int:
    """C ``%`` (sign follows the dividend)."""
    return a - _cdiv(a, b) * b


def _layer_info(st: _State, counter: int, name: str) -> tuple[int, int]:
    """The (layer, n_layer) a rule sees: the running counter, or the name's layer for MoE models."""
    if max(1, st.n_expert) > 1:
        layer = _layer_of(name)
        if not _LAYER_RE.match(name):
            raise ValueError(f"failed to determine layer for tensor {name}")
        if layer < 0 or layer >= st.n_layer:
            raise ValueError(f"bad layer {layer} for tensor {name}; must be in [0, {st.n_layer})")
        return layer, st.n_layer
    return counter, st.n_layer


def _mixture_type(st: _State, new_type: str, name: str, ne0: int, ftype: int, cat: str,
                  output_tensor_type: str | None) -> str:
    """llama_tensor_get_type_impl for the supported file types (no TQ*/MXFP4/Q1_0/Q2_0 branches)."""
    arch = st.arch
    falcon = arch == "falcon"

    if arch == "glm5-next" and ("attn_q_a" in name or "attn_q_b" in name or "nextn.eh_proj" in name):
        if new_type not in ("F32", "BF16", "F16"):
            return "Q8_0"

    if cat == "output" or (st.has_tied_embeddings and cat == "token_embd"):
        if output_tensor_type is not None:
            return output_tensor_type
        if falcon or ne0 % _block_size(new_type) != 0:
            return "Q8_0"
        if ftype in (_IQ2_XXS, _IQ2_XS, _IQ3_XXS, _IQ1_S, _IQ2_S, _IQ2_M, _IQ1_M):
            return "Q5_K"
        if new_type != "Q8_0":
            return "Q6_K"
        return new_type

    if cat == "token_embd":
        if ftype in (_IQ2_XXS, _IQ2_XS, _IQ1_S, _IQ1_M):
            return "Q2_K"
        if ftype in (_IQ2_S, _IQ2_M, _IQ3_XXS):
            return "IQ3_S"
        return new_type

    if ftype in _IQ2_FAMILY:
        if _is_attn_v_like(cat):
            if st.n_gqa >= 4 or st.n_expert >= 4:
                new_type = "Q4_K"
            else:
                new_type = "IQ3_S" if ftype in (_IQ2_S, _IQ2_M) else "Q2_K"
            st.i_attention_wv += 1
        elif st.n_expert == 8 and cat == "attn_k":
            new_type = "Q4_K"
        elif cat == "ffn_down":
            if st.i_ffn_down < st.n_layer // 8:  # the counter, whatever the model (experts included)
                new_type = "IQ3_S" if ftype in (_IQ2_S, _IQ2_M) else "Q2_K"
            st.i_ffn_down += 1
        elif cat == "attn_output":
            if st.n_expert == 8:
                new_type = "Q5_K"
            elif ftype in (_IQ1_S, _IQ1_M):
                new_type = "IQ2_XXS"
            elif ftype in (_IQ2_S, _IQ2_M):
                new_type = "IQ3_S"
        return new_type

    if _is_attn_v_like(cat):
        if ftype == _Q2_K:
            new_type = "Q4_K" if st.n_gqa >= 4 else "Q3_K"
        elif ftype == _Q2_K_S and st.n_gqa >= 4:
            new_type = "Q4_K"
        elif ftype == _IQ3_XXS:
            new_type = "Q4_K" if st.n_gqa >= 4 else ("IQ3_XXS" if st.has_imatrix else "IQ3_S")
        elif ftype in (_IQ3_XS, _IQ3_S) and st.n_gqa >= 4:
            new_type = "Q4_K"
        elif ftype == _IQ3_M:
            new_type = "Q4_K"
        elif ftype == _Q3_K_M:
            new_type = "Q5_K" if st.i_attention_wv < 2 else "Q4_K"
        elif ftype == _Q3_K_L:
            new_type = "Q5_K"
        elif ftype in (_IQ4_NL, _IQ4_XS) and st.n_gqa >= 4:
            new_type = "Q5_K"
        elif ftype in (_Q4_K_M, _Q5_K_M) and _use_more_bits(st.i_attention_wv, st.n_attention_wv):
            new_type = "Q6_K"
        elif ftype == _Q4_K_S and st.i_attention_wv < 4:
            new_type = "Q5_K"
        if st.is_70b and new_type in ("Q3_K", "Q4_K"):
            # 8 heads share attn_v in the 70B model: a small tensor worth more bits
            new_type = "Q5_K"
        if st.n_expert == 8:
            new_type = "Q8_0"
        st.i_attention_wv += 1
        return new_type

    if cat == "attn_k":
        if st.n_expert == 8:
            return "Q8_0"
        if ftype == _IQ3_XS:
            return "IQ3_XXS"
        if ftype == _IQ3_XXS:
            return "IQ2_S"
        return new_type

    if cat == "attn_q":
        if ftype == _IQ3_XS:
            return "IQ3_XXS"
        if ftype == _IQ3_XXS:
            return "IQ2_S"
        return new_type

    if cat == "ffn_down":
        i_layer, n_layer = _layer_info(st, st.i_ffn_down, name)
        if ftype == _Q2_K:
            new_type = "Q3_K"
        elif ftype == _Q2_K_S:
            if i_layer < n_layer // 8:
                new_type = "Q4_K"
        elif ftype == _IQ3_XXS and not st.has_imatrix:
            new_type = "Q4_K" if i_layer < n_layer // 8 else "Q3_K"
        elif ftype == _Q3_K_M:
            if i_layer < n_layer // 16:
                new_type = "Q5_K"
            elif not falcon or _use_more_bits(i_layer, n_layer):
                new_type = "Q4_K"
            else:
                new_type = "Q3_K"
        elif ftype == _IQ3_M and (i_layer < n_layer // 8 or (st.n_expert == 8 and _use_more_bits(i_layer, n_layer))):
            new_type = "Q4_K"
        elif ftype == _Q3_K_L:
            new_type = "Q4_K" if falcon else "Q5_K"
        elif ftype == _Q4_K_M:
            if falcon:
                new_type = ("Q6_K" if i_layer < n_layer // 16
                            else "Q5_K" if _use_more_bits(i_layer, n_layer) else "Q4_K")
            elif _use_more_bits(i_layer, n_layer):
                new_type = "Q6_K"
        elif i_layer < n_layer // 8 and ftype in (_IQ4_NL, _IQ4_XS) and not st.has_imatrix:
            new_type = "Q5_K"
        elif ftype == _Q5_K_M and _use_more_bits(i_layer, n_layer):
            new_type = "Q6_K"
        elif ftype == _Q4_K_S and not falcon and i_layer < n_layer // 8:
            new_type = "Q5_K"
        elif ftype in (_Q4_0, _Q5_0) and st.has_imatrix and i_layer < n_layer // 8:
            # llama.cpp guards the first ffn_down layers of Q4_0/Q5_0 with the _1 types, only with an imatrix
            new_type = "Q4_1" if ftype == _Q4_0 else "Q5_1"
        st.i_ffn_down += 1
        return new_type

    if cat == "attn_output":
        if not falcon:
            if st.n_expert == 8:
                if ftype in (_Q2_K, _IQ3_XS, _IQ3_XXS, _Q3_K_S, _Q3_K_M, _IQ4_NL, _Q4_K_S, _Q4_K_M, _IQ3_S, _IQ3_M,
                             _IQ4_XS):
                    new_type = "Q5_K"
            else:
                if ftype == _Q2_K:
                    new_type = "Q3_K"
                elif ftype == _IQ3_XXS:
                    new_type = "IQ3_S"
                elif ftype == _Q3_K_M:
                    new_type = "Q4_K"
                elif ftype == _Q3_K_L:
                    new_type = "Q5_K"
                elif ftype == _IQ3_M:
                    new_type = "Q4_K"
        elif ftype == _Q3_K_L:
            new_type = "Q4_K"
        return new_type

    if cat == "attn_qkv":
        if ftype in (_Q3_K_M, _Q3_K_L, _IQ3_M):
            new_type = "Q4_K"
        elif ftype == _Q4_K_M:
            new_type = "Q5_K"
        elif ftype == _Q5_K_M:
            new_type = "Q6_K"
        return new_type

    if cat in ("ffn_gate", "ffn_up"):
        counter = "i_ffn_gate" if cat == "ffn_gate" else "i_ffn_up"
        i_layer, n_layer = _layer_info(st, getattr(st, counter), name)
        if ftype == _IQ3_XS and n_layer // 8 <= i_layer < 7 * n_layer // 8:
            new_type = "IQ3_XXS"
        setattr(st, counter, getattr(st, counter) + 1)
        return new_type

    return new_type


_GGML_ASSERTS_IMATRIX = frozenset(n.upper() for n in NEEDS_IMATRIX)
"""Types whose ggml quantiser asserts it was given importance weights (``ggml_quantize_requires_imatrix``)."""


def requires_imatrix(name: str, type_name: str, ftype: int | None) -> bool:
    """tensor_requires_imatrix: the 1-2 bit lattice types and IQ3_XXS (and Q2_K in a Q2_K_S file)
    are refused without an importance matrix; the token embedding and output never are."""
    if name in ("token_embd.weight", "per_layer_token_embd.weight", "output.weight"):
        return False
    if type_name in _NEEDS_IMATRIX:
        return True
    return type_name == "Q2_K" and ftype == _Q2_K_S


_FALLBACK = {
    "IQ1_S": "IQ4_NL", "IQ1_M": "IQ4_NL", "IQ2_XXS": "IQ4_NL", "IQ2_XS": "IQ4_NL", "IQ2_S": "IQ4_NL",
    "IQ3_XXS": "IQ4_NL", "IQ3_S": "IQ4_NL", "IQ4_XS": "IQ4_NL",
    "Q2_K": "Q4_0", "Q3_K": "Q4_0", "TQ1_0": "Q4_0", "TQ2_0": "Q4_0",
    "Q4_K": "Q5_0",
    "Q5_K": "Q5_1",
    "Q6_K": "Q8_0",
}


def _fallback(name: str, ne0: int, target: str) -> str:
    """tensor_type_fallback: a smaller-block type when the row length doesn't divide, F16 as last resort."""
    block = _block_size(target)
    if ne0 % block == 0:
        return target
    if target in _FALLBACK:
        result = _FALLBACK[target]
    elif block <= 32:
        result = target  # already a 32-block type: only F16 is left
    else:
        raise ValueError(f"no tensor type fallback is defined for type {target} (tensor {name})")
    if ne0 % _block_size(result) != 0:
        result = "F16"
    return result


# --------------------------------------------------------------------------- public entry point


def _as_entry(t: Any) -> tuple[str, tuple[int, ...], str | None]:
    """Accept ``(name, shape)``, ``(name, shape, source_type)`` or an object with ``.name``/``.shape``."""
    if isinstance(t, tuple | list):
        if len(t) == 2:
            return str(t[0]), tuple(int(d) for d in t[1]), None
        if len(t) == 3:
            return str(t[0]), tuple(int(d) for d in t[1]), (None if t[2] is None else str(t[2]))
        raise ValueError(f"expected (name, shape[, type]), got {t!r}")
    src = getattr(t, "ggml_type", None) or getattr(t, "source_type", None)
    return str(t.name), tuple(int(d) for d in t.shape), src


def _parse_overrides(overrides: Iterable[Any]) -> list[tuple[re.Pattern[str], str]]:
    out = []
    for o in overrides:
        if isinstance(o, str):
            pattern, sep, type_name = o.rpartition("=")
            if not sep or not pattern or not type_name:
                raise ValueError(f"malformed tensor type override {o!r}; expected REGEX=TYPE")
        else:
            pattern, type_name = o
        try:
            rx = re.compile(pattern)
        except re.error as e:
            raise ValueError(f"bad tensor type override regex {pattern!r}: {e}") from None
        out.append((rx, normalize_type_name(type_name)))
    return out


def choose_tensor_types(
    tensors: Sequence[Any],
    preset: str,
    *,
    arch: str,
    n_layer: int,
    n_head: int,
    n_head_kv: int,
    n_expert: int = 0,
    pure: bool = False,
    output_tensor_type: str | None = None,
    token_embedding_type: str | None = None,
    leave_output_tensor: bool = False,
    tensor_type_overrides: Sequence[Any] = (),
    source_types: Mapping[str, str] | None = None,
    imatrix: Container[str] | None = None,
) -> dict[str, str]:
    """The ggml type llama-quantize would give each tensor for ``preset``.

    ``tensors``: ``(name, shape)`` pairs (numpy shape order), optionally with a
    third element, the tensor's current type; or objects with ``.name`` and
    ``.shape`` (:class:`lmconv.quantizers.TensorChoice`). Tensors llama.cpp does
    not quantise (1-D, norms, routers, …) keep their current type, taken from
    the entry, else ``source_types``, else "F32".

    ``pure`` (``--pure``) gives every quantisable tensor the preset's base type;
    ``output_tensor_type`` / ``token_embedding_type`` set those two tensors
    outright; ``leave_output_tensor`` keeps ``output.weight`` as it is;
    ``tensor_type_overrides`` are ``(regex, type)`` pairs or ``"REGEX=TYPE"``
    strings, first ``re.search`` match wins over the mixture rules (they apply
    only when the preset's base type is a quantised one, as in llama.cpp).
    Whatever the choice, a type whose block does not divide the row length is
    replaced by llama.cpp's fallback (Q4_K→Q5_0, Q5_K→Q5_1, Q6_K→Q8_0,
    Q2_K/Q3_K→Q4_0, then F16).

    ``n_expert`` (MoE models) makes ffn rules read the layer from the name and
    switches on the 8-expert tweaks. ``imatrix`` (the names an importance matrix has
    data for, or None without one) switches on the rules that differ with a matrix and
    the refusals llama-quantize makes: a type that needs one (IQ1_*, IQ2_*, IQ3_XXS,
    Q2_K in Q2_K_S) without a matrix, or for a tensor the matrix lacks, raises
    ValueError. Returns ``{name: type}`` in input order.
    """
    key = str(preset).strip().lower()
    if key not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    p = PRESETS[key]
    out_type = normalize_type_name(output_tensor_type) if output_tensor_type else None
    emb_type = normalize_type_name(token_embedding_type) if token_embedding_type else None
    patterns = _parse_overrides(tensor_type_overrides)
    src_map = {k: normalize_type_name(v) for k, v in (source_types or {}).items()}

    entries = [_as_entry(t) for t in tensors]
    seen: set[str] = set()
    for name, _, _ in entries:
        if name in seen:
            raise ValueError(f"duplicate tensor name {name!r}")
        seen.add(name)

    lay = _70B_LAYERS.get(arch)
    is_70b = bool(lay) and n_layer == lay[0] and (not lay[1] or (n_head != n_head_kv and n_expert != 8))
    st = _State(arch=arch, n_layer=n_layer, n_gqa=(n_head // n_head_kv) if n_head_kv else 0,
                n_expert=n_expert, is_70b=is_70b)
    cats = {name: _category(name) for name, _, _ in entries}
    st.n_attention_wv = sum(1 for c in cats.values() if _is_attn_v_like(c))
    st.has_tied_embeddings = not any(c == "output" for c in cats.values())
    st.has_imatrix = imatrix is not None

    base = p.base
    result: dict[str, str] = {}
    for name, shape, src in sorted(entries, key=lambda e: _sort_key(e[0])):
        current = normalize_type_name(src) if src else src_map.get(name, "F32")
        cat = cats[name]
        ne0 = shape[-1] if shape else 1
        if not allows_quantization(name, shape, arch=arch, quantize_output_tensor=not leave_output_tensor):
            result[name] = current
            continue
        if emb_type is not None and cat == "token_embd":
            # per_layer_token_embd may still be named by an explicit override
            if not (name == "per_layer_token_embd.weight" and any(rx.search(name) for rx, _ in patterns)):
                result[name] = emb_type
                continue
        if out_type is not None and cat == "output":
            result[name] = out_type
            continue
        new_type = base
        if _is_quantized(base):
            manual = False
            for rx, t in patterns:
                if rx.search(name):
                    new_type, manual = t, True
                    break
            if not manual and not pure:
                new_type = _mixture_type(st, new_type, name, ne0, p.ftype, cat, out_type)
            new_type = _fallback(name, ne0, new_type)
        result[name] = new_type
        if requires_imatrix(name, new_type, p.ftype):
            if imatrix is None:
                raise ValueError(f"{key} needs an importance matrix ({name} would be {new_type}, which llama-quantize "
                                 f"refuses to write without one): give one with --imatrix FILE")
            if name not in imatrix and new_type != current:
                raise ValueError(f"the importance matrix has no data for {name}, which {key} makes {new_type} "
                                 f"(llama-quantize refuses that too)")
        elif new_type in _GGML_ASSERTS_IMATRIX and new_type != current and (imatrix is None or name not in imatrix):
            # the embedding or output head (--pure, an override): llama-quantize lets them through and
            # ggml then aborts in the quantiser; say so in one line instead
            raise ValueError(f"{name} would be {new_type}, which cannot be quantised without importance data, and "
                             f"{'there is no --imatrix' if imatrix is None else 'the importance matrix has none for it'} "
                             f"(llama-quantize aborts here): give it another type with --tensor-type "
                             f"{re.escape(name)}=TYPE, --token-embedding-type or --output-tensor-type")
    return {name: result[name] for name, _, _ in entries}
