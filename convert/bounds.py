"""Element-wise error bounds: what a lossy step (a cast, a quantisation, a lossy layout rule) may
change, stated so that verification can check every element against it.

The core states the bounds of what it does itself (casts between its float types, its layout
rules); a quantiser plugin states the bound of its block type on its :class:`Quantizer`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

# Both sides of a bound are computed in float64, but the quantisers and dequantisers work in float32
# (1/d, x*id, d*q each round once): a relative slack of 2^-10 covers those roundings many times over.
SLACK = 1.0 + 2.0**-10
F16_HALF_ULP_MIN = 2.0**-25  # half the spacing of f16 subnormals: what a block scale stored as f16 can lose
U16 = 2.0**-11  # unit roundoff of f16, in which block scales (d, dmin, m) are stored
U32 = 2.0**-24  # unit roundoff of f32


@dataclass(frozen=True)
class Bound:
    """``|a_i - b_i| <= SLACK * tol_i`` with

    ``tol_i = rel*|a_i| + sum(coef * max|a| over the block of i) + abs``, for each ``(block, coef)``
    in ``blocks``; blocks run along the last axis of the layout the data was quantised in.
    ``a`` is the reference (the first model)."""

    step: str
    rel: float = 0.0
    blocks: tuple[tuple[int, float], ...] = ()
    abs: float = 0.0
    why: str = ""

    def tolerance(self, a_abs: np.ndarray) -> np.ndarray:
        """``a_abs``: |a| as a 2-D float64 array (rows, last axis); returns tol of the same shape."""
        tol = np.full(a_abs.shape, self.abs, dtype=np.float64)
        if self.rel:
            tol += self.rel * a_abs
        for size, coef in self.blocks:
            if coef:
                tol += coef * _block_absmax(a_abs, size)
        return tol

    def describe(self) -> str:
        parts = []
        if self.rel:
            parts.append(f"{fmt(self.rel)}·|a|")
        for size, coef in self.blocks:
            parts.append(f"{fmt(coef)}·max|a|/{size}")
        if self.abs:
            parts.append(fmt(self.abs))
        return " + ".join(parts) or "0"


def _block_absmax(a_abs: np.ndarray, block: int) -> np.ndarray:
    rows, n = a_abs.shape
    pad = (-n) % block
    padded = np.pad(a_abs, ((0, 0), (0, pad))) if pad else a_abs
    m = padded.reshape(rows, -1, block).max(axis=-1)
    return np.repeat(m, block, axis=1)[:, :n]


def block_bound(step: str, block: int, coef: float, *, super_coef: float = 0.0, scale_levels: int, why: str) -> Bound:
    """The bound of a block quantiser: ``coef · max|a|`` over each block of ``block`` elements (and,
    for K-quants, ``super_coef · max|a|`` over the super-block of 256), plus what rounding the
    block scales to f16 can lose (``scale_levels`` × half the smallest f16 spacing)."""
    blocks = ((block, coef),) + (((256, super_coef),) if super_coef else ())
    return Bound(f"quant:{step}", blocks=blocks, abs=scale_levels * F16_HALF_ULP_MIN, why=why)


def cast_bound(dtype: Any) -> Bound:
    """Round-to-nearest-even into a float ``dtype`` (an lmconv DType): relative error <= u = eps/2
    for normal numbers, and at most half the subnormal spacing below them."""
    import ml_dtypes

    fi = ml_dtypes.finfo(dtype.numpy)
    u = float(fi.eps) / 2
    sub = float(fi.smallest_subnormal) / 2
    return Bound(f"cast:{dtype.name}", rel=u, abs=sub,
                 why=f"round to nearest: u = 2^{int(math.log2(u))}, subnormal half-spacing 2^{int(math.log2(sub))}")


def sum_bounds(parts: list[Bound]) -> Bound:
    """Several steps one after the other: the errors add (triangle inequality); a later step sees
    values up to (1 + Σrel) larger, hence the common factor."""
    if len(parts) == 1:
        return parts[0]
    grow = 1.0 + sum(p.rel for p in parts)
    return Bound("+".join(p.step for p in parts), rel=sum(p.rel for p in parts) * grow,
                 blocks=tuple((size, coef * grow) for p in parts for size, coef in p.blocks),
                 abs=sum(p.abs for p in parts) * grow, why="sum of the steps' bounds")


def override_bound(atol: float, rtol: float) -> Bound:
    return Bound("override", rel=float(rtol), abs=float(atol), why="--atol/--rtol")


def fmt(x: float | None) -> str:
    """A number for tables and messages: 3 significant digits, "inf", "-" for none."""
    if x is None:
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    if x == 0:
        return "0"
    return f"{x:.3g}" if 1e-3 <= abs(x) < 1e4 else f"{x:.2e}"


_DECLARED: dict[str, Bound] = {}


def declare(bound: Bound) -> Bound:
    """Make ``bound`` the one verification applies to its step (a lossy layout rule's, e.g.
    ``shift:1.0`` or a plugin's own ``kind:detail``). Rules declare theirs when they are made."""
    _DECLARED[bound.step] = bound
    return bound


def declared(step: str) -> Bound | None:
    """The bound declared for ``step``, or None."""
    return _DECLARED.get(step)


def shift_bound(delta: float) -> Bound:
    """``w → fl(w + δ) → fl(· − δ)`` in float32 (a :class:`lmconv.rules.Shift` there and back): each
    way rounds once, so ``|err| <= u·|w + δ| + u·|w + δ|(1 + u) <= 2.01·u·(|w| + |δ|)``."""
    u = U32 * 1.005
    return Bound(f"shift:{float(delta)!r}", rel=2 * u, abs=2 * u * abs(float(delta)),
                 why=f"x + {delta} and back in float32: two roundings of at most u = 2^-24 of |x| + {abs(delta)}")
