"""Registers the quantisers: gguf-py's (byte-identical to llama.cpp), our K-quants and i-quants,
and the presets.

f16/bf16/q8_0/q4_0/q4_1/q5_0/q5_1 use ``gguf.quants`` (with an importance matrix, q4_0 … q5_1
come from :mod:`.legacy`); q2_K…q6_K from :mod:`.kquants` and iq4_nl … iq1_m from :mod:`.iquants`
(gguf-py can only dequantise those), and the llama-quantize presets (q4_k_m, iq2_xxs …) from
:mod:`.presets`. Every other GGML block type gguf-py can dequantise (tq1_0, q8_K …) is registered
read-only, so that a GGUF holding it can be turned into floats. Each quantiser states its error
bound (see docs/verification.md for the derivations), and the llama-quantize options live here
too, ``--imatrix`` among them.

Importance weights: a quantiser that can use an importance matrix takes it as the keyword
``quantize(rows, imatrix=w)`` — ``w`` one float32 weight per column of a row, as ggml's
``ggml_quantize_chunk`` takes it. Writers pass it when the function accepts that keyword.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
from gguf import quants
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from lmconv import dtypes as dt
from lmconv.bounds import F16_HALF_ULP_MIN, U16, Bound, block_bound, declare
from lmconv.errors import UsageError
from lmconv.hookspecs import hookimpl
from lmconv.options import Option
from lmconv.quantizers import Preset, Quantizer, TensorChoice

from . import legacy, offload
from .imatrix import load_imatrix
from .iquants import IQUANTIZERS
from .kquants import KQUANTIZERS
from .presets import PRESETS, choose_tensor_types

GGUF_PY_TYPES = ("f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1")

#: the documented element-wise bound of each type's quantise → dequantise (docs/verification.md)
BOUNDS: dict[str, Bound] = {
    b.step.removeprefix("quant:"): b for b in (
        block_bound("q8_0", 32, 1 / 254 + U16, scale_levels=127,
                    why="d = max|x|/127, q = round(x/d) in [-127,127]: |err| <= d/2 + 127·|d - f16(d)|"),
        block_bound("q4_0", 32, 1 / 8 + U16, scale_levels=8,
                    why="d = x_max/-8, q = trunc(x/d + 8.5) clipped to 0..15: |err| <= d (x/d in [7.5, 8] clamps to 7) "
                        "+ 8·|d - f16(d)|"),
        block_bound("q4_1", 32, 1 / 15 + 3 * U16, scale_levels=16,
                    why="d = (max-min)/15 <= 2M/15, round to nearest: |err| <= d/2 + 15·|Δd| + |Δmin|"),
        block_bound("q5_0", 32, 1 / 16 + U16, scale_levels=16,
                    why="d = x_max/-16, levels -16..15: |err| <= d (top clamp) + 16·|Δd|"),
        block_bound("q5_1", 32, 1 / 31 + 3 * U16, scale_levels=32,
                    why="d = (max-min)/31, round to nearest: |err| <= d/2 + 31·|Δd| + |Δmin|"),
        block_bound("q2_K", 16, 1.0, super_coef=1 / 4, scale_levels=3 * 15 + 15,
                    why="levels 0..3 over the 16-block range (<= 2m), scale search down to range/2.5: 1.5 steps = m; "
                        "4-bit scales/mins: 3·max_scale/30 + max_min/30, zeroed sub-blocks 2m_j + M/30 <= M/4"),
        block_bound("q3_K", 16, 1 / 2, super_coef=1 / 32, scale_levels=4 * 32,
                    why="levels -4..3, step m/4: 2 steps = m/2; 6-bit signed scales (step max_scale/32): "
                        "4 levels · max_scale/64 ≈ M/64, zeroed sub-blocks m_j < M/57"),
        block_bound("q4_K", 32, 4 / 15, super_coef=1 / 21, scale_levels=15 * 63 + 63,
                    why="levels 0..15 over the 32-block range (<= 2m): 2 steps = 4m/15; 6-bit scales and mins: "
                        "15·max_scale/126 + max_min/126 ≈ M/40, zeroed sub-blocks 2m_j + M/126 <= M/22"),
        block_bound("q5_K", 32, 4 / 31, super_coef=1 / 21, scale_levels=31 * 63 + 63,
                    why="levels 0..31 over the 32-block range: 2 steps = 4m/31; 6-bit scales and mins as q4_K"),
        block_bound("q6_K", 16, 1 / 16, super_coef=1 / 128, scale_levels=32 * 128,
                    why="levels -32..31, step m/32 (search 31.1..32.9): 2 steps = m/16; 8-bit scales: "
                        "32·max_scale/256 ≈ M/249, zeroed sub-blocks m_j < M/242"),
        block_bound("iq4_nl", 32, 1.004, scale_levels=127,
                    why="the weighted least-squares scale d is a mean of x_j/q_j over levels |q| >= 1 picked at "
                        "trial scales near max/127, so |d| <= 7·M/120; an element inside the table is within half "
                        "its widest gap (12|d| <= 0.7M), one beyond it or with d = 0 keeps its sign and loses at "
                        "most |x| <= M; f16(d) adds 127·u16·|d|"),
        block_bound("iq4_xs", 32, 1.001, super_coef=0.016, scale_levels=127 * 32,
                    why="as iq4_nl per 32 (|scale| <= 7m/120), the scale rounded to a 6-bit multiple of "
                        "max_scale/32 (<= M/1100 off): inside the table 12|dl| <= 0.7m + 0.011M, beyond it or "
                        "zeroed at most |x| <= m; f16(d) adds 127·u16·max_scale"),
        # The lattice i-quants (docs/verification.md, "Derivations"): a block's scale s is a weighted
        # least-squares mean of x/q over levels |q| >= q_min (1, IQ1: 1/8), so s <= m/q_min for any
        # positive weights; it is stored as an odd multiple (2·ls+1)·d of d = max_scale/31 (IQ1: /15),
        # at most d above s; an element decodes to at most that times the largest grid value times the
        # stored-scale factor (G below). A lightly weighted element has no say in s nor, through the
        # neighbour search, in its own level, so it may decode to G·(s + d) whatever its value: the
        # error is at most that, plus |x| where the decoded sign can differ from x's.
        block_bound("iq3_s", 32, 1 + 1.033 * 15 * (1 + U16), super_coef=1.033 * 15 * (1 + U16) / 31,
                    scale_levels=31 * 15,
                    why="s <= m (levels 1..15), 2ls+1 odd multiples of d = max_scale/31 <= M/31, grid <= 15, "
                        "d stored ·1.033: |y| <= 15.5·(m + M/31); signs are x's except after an all-zero "
                        "sub-block (ggml then shifts the later codes and signs): + |x|"),
        block_bound("iq3_xxs", 32, 1 + 1.0125 * 15.5 * (1 + U16), super_coef=1.0125 * 15.5 * (1 + U16) / 31,
                    scale_levels=481,
                    why="s <= m (levels 1..15), d = max_scale/31, largest grid value 62/4 = 15.5, d stored "
                        "·1.0125: |y| <= 15.7·(m + M/31); the parity sign (one element per 8 flipped back) "
                        "and a negative fit flipping all signs: + |x|"),
        block_bound("iq2_s", 16, 0.9875 * 43 / 8 * (1 + U16), super_coef=0.9875 * 43 / 8 * (1 + U16) / 31,
                    scale_levels=167,
                    why="s <= m (levels 1, 3, 5), d = max_scale/31, largest grid value 43/8, d stored ·0.9875: "
                        "|y| <= 5.31·(m + M/31); signs are x's (free sign bits), so |err| <= max(|x|, |y|)"),
        block_bound("iq2_xs", 16, 1 + 43 / 8 * (1 + U16), super_coef=43 / 8 * (1 + U16) / 31, scale_levels=167,
                    why="s <= m (levels 1, 3, 5), d = max_scale/31, largest grid value 43/8: "
                        "|y| <= 5.375·(m + M/31); parity sign and negative-fit flip: + |x|"),
        block_bound("iq2_xxs", 32, 1 + 43 / 8 * (1 + U16), super_coef=43 / 8 * (1 + U16) / 31, scale_levels=167,
                    why="s <= m (levels 1, 3, 5; make_qp_quants' start is refitted), d = max_scale/31, largest "
                        "grid value 43/8: |y| <= 5.375·(m + M/31); parity sign and negative-fit flip: + |x|"),
        block_bound("iq1_s", 32, 1 + 1.125 * 9 / 8 * 8 * (1 + U16), super_coef=1.125 * 9 / 8 * 8 / 15 * (1 + U16),
                    scale_levels=17,
                    why="levels ±1±1/8 and ±1/8: s <= 8m, d = max_scale/15 <= 8M/15, |grid + shift| <= 9/8, "
                        "d stored ·1.125: |y| <= 1.27·(8m + 8M/15); decoded signs are free: + |x|"),
        block_bound("iq1_m", 16, 1.0, super_coef=1.1125 * 15 * 9 / 8 * 8 * (1 + U16), scale_levels=17,
                    why="the super-block scale d' is refitted over all 256 elements, a mean of x/Q over "
                        "Q = q·(2ls+1) with |q| >= 1/8, of either sign (a block whose fit the neighbour search "
                        "turned negative keeps its old scale but enters d' with the new levels): |d'| <= 8M; "
                        "stored ·1.1125, times (2ls+1) <= 15 and |grid + shift| <= 9/8: |y| <= 150·M, + |x|"),
    )
}

#: Extra allowance of the types whose search an importance matrix changes, per ``imatrix:TYPE`` step
#: (recorded in a tensor's history when it was quantised with weights; verification adds it to the
#: type's bound). Only where it can be derived: the symmetric types, whose levels are re-rounded
#: (q3_K, q6_K) or searched (q4_0, q5_0) around a weighted least-squares scale that is a positive
#: mean of x_j/l_j: every element then decodes to the same sign as x and at most the block's
#: absmax away from it (a zero scale decodes to 0: error |x|).
#: None for the asymmetric types (q4_1, q5_1, q2_K, q4_K, q5_K): ggml's code has no bound. It solves
#: their weighted scale-and-minimum fit (make_qkx3_quants) and, for the K-quants, the weighted 6-bit
#: (q2_K: 4-bit) fit of the sub-blocks' scales and minima (make_qp_quants) in float32, by
#: differences of sums that a few heavily weighted elements (sub-blocks) dominate; past float32's
#: precision those are rounding noise, and ggml's own output is then off by 2.5-3.4 block maxima (q5_1,
#: q4_1: weights 1 and 1e8) or 13-60 super-block maxima (q2_K, q5_K, q4_K), where exact arithmetic
#: gives a few hundredths: tests/test_verify.py keeps those inputs, docs/verification.md
#: ("With an importance matrix") the argument. Their tensors are judged by the type's plain bound,
#: which a correct file can exceed (q4_1/q5_1 even with a benign matrix).
IMATRIX_BOUNDS: dict[str, Bound] = {
    name: declare(Bound(f"imatrix:{name}", blocks=((block, 1.0),), abs=levels * F16_HALF_ULP_MIN,
                        why="weighted least-squares scale: same sign, at most the block's absmax off"))
    for name, block, levels in (("q4_0", 32, 8), ("q5_0", 32, 16), ("q3_K", 16, 4 * 32), ("q6_K", 16, 32 * 128))
}


def _block_dtype(name: str) -> dt.DType:
    qt = GGMLQuantizationType[name.upper()]
    block, size = GGML_QUANT_SIZES[qt]
    return dt.block_type(name, block, size)


def _gguf_py(name: str) -> Quantizer:
    d = dt.get(name) if name in ("f16", "bf16") else _block_dtype(name)
    qtype = GGMLQuantizationType[name.upper()]

    def quantize(rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
        if imatrix is not None and name in legacy.TYPE_SIZES:  # q8_0, f16, bf16: ggml ignores the matrix
            return offload.run(partial(legacy.quantize_weighted, name), rows, imatrix)
        out = quants.quantize(np.ascontiguousarray(rows, dtype=np.float32), qtype)
        if d.numpy is not None:  # f16/bf16 come back as uint8/float16 arrays: give the IR's dtype
            out = out.view(d.numpy) if out.dtype != d.numpy else out
        return out

    def dequantize(blocks: np.ndarray) -> np.ndarray:
        if d.numpy is not None:
            return np.asarray(blocks).astype(np.float32)
        return quants.dequantize(blocks, qtype)

    return Quantizer(name=name, dtype=d, quantize=quantize, dequantize=dequantize,
                     description="gguf-py reference quantiser", bound=BOUNDS.get(name))


def _numpy_quantizer(name: str, fn: Callable[..., np.ndarray], kind: str) -> Quantizer:
    """One of our numpy kernels (:mod:`.kquants`, :mod:`.iquants`) as a quantiser: rows of any
    leading shape in, blocks out, computed in a worker process when that pays (:mod:`.offload`)."""
    d = _block_dtype(name)
    qtype = GGMLQuantizationType[name.upper()]

    def quantize(rows: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        flat = rows.reshape(-1, rows.shape[-1])
        return offload.run(fn, flat, imatrix).reshape(d.storage_shape(rows.shape))

    return Quantizer(name=name, dtype=d, quantize=quantize, dequantize=lambda b: quants.dequantize(b, qtype),
                     description=f"lmconv numpy {kind}, byte-identical to llama.cpp's (with or without an imatrix)",
                     bound=BOUNDS.get(name))


def _read_only() -> list[Quantizer]:
    """Every other GGML block type gguf-py can dequantise, for reading (no bound is documented for them)."""
    taken = {n.lower() for n in GGUF_PY_TYPES} | {n.lower() for n in KQUANTIZERS} | set(IQUANTIZERS)
    out = []
    for qt in GGMLQuantizationType:
        if qt not in GGML_QUANT_SIZES or qt.name in ("F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64"):
            continue
        name = qt.name.lower().replace("_k", "_K")
        if name.lower() in taken:
            continue
        out.append(Quantizer(name=name, dtype=_block_dtype(name), quantize=None,
                             dequantize=lambda b, qt=qt: quants.dequantize(b, qt),
                             description="read only: gguf-py dequantises it"))
    return out


@hookimpl
def register_quantizers(register: Any) -> None:
    for name in GGUF_PY_TYPES:
        register(_gguf_py(name))
    for name, fn in KQUANTIZERS.items():
        register(_numpy_quantizer(name, fn, "K-quant"))
    for name, fn in IQUANTIZERS.items():
        register(_numpy_quantizer(name, fn, "i-quant"))
    for q in _read_only():
        register(q)
    for preset in PRESETS.values():
        register(Preset(name=preset.name, base=preset.base.lower(), choose=partial(_choose, preset.name),
                        description=preset.description))


@hookimpl
def register_options(register: Any) -> None:
    """llama-quantize's per-tensor options, for --quant."""
    register(Option("--pure", bool, "With --quant: every quantisable tensor gets exactly the --quant type."))
    register(Option("--tensor-type", list, "With --quant: REGEX=TYPE per-tensor override (repeatable).",
                    dest="tensor_type_overrides", metavar="REGEX=TYPE"))
    register(Option("--output-tensor-type", str, "With --quant: the type of output.weight.", metavar="TYPE"))
    register(Option("--token-embedding-type", str, "With --quant: the type of token_embd.weight.", metavar="TYPE"))
    register(Option("--leave-output-tensor", bool, "With --quant: do not quantise output.weight."))
    register(Option("--imatrix", str, "With --quant: an importance matrix from llama-imatrix (GGUF or legacy .dat), "
                    "applied as llama-quantize applies it; the 1-2 bit types and iq3_xxs need one.",
                    metavar="FILE", parse=load_imatrix))


def _choose(preset: str, tensors: Sequence[TensorChoice], **context: Any) -> dict[str, str]:
    """llama-quantize's per-tensor choice for ``preset`` (see presets.py), as lmconv dtype names."""
    try:
        return choose_tensor_types(tensors, preset, **context)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
