"""The K-quant speed-ups (issue 7) are exact: each fast path against the plain one it replaces.

The byte-for-byte comparison with llama.cpp is tests/test_kquants.py; these pin the pieces on
inputs chosen to hit their edge cases (signed zeros, ±a ties, ±Inf, NaN, order-sensitive sums).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from lmconv.plugins.quantizers import kquants as k


def _columns(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for case in range(600):
        n = int(rng.choice([16, 32]))
        s = int(rng.integers(1, 200)) if case % 5 else case % 3 + 1  # one or two columns: numpy's edge cases
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x = (rng.standard_normal((n, s)) * 10.0 ** rng.integers(-40, 39)).astype(np.float32)
        kind = case % 8
        if kind == 1:
            x[rng.random((n, s)) < 0.3] = -0.0
        elif kind == 2:
            x = np.round(x)  # zero columns and ±a ties
        elif kind == 3:
            x[rng.random((n, s)) < 0.05] = np.inf
            x[rng.random((n, s)) < 0.05] = -np.inf
        elif kind == 4:
            x[rng.random((n, s)) < 0.05] = np.nan
        elif kind == 5:
            x = np.sign(x).astype(np.float32) * np.float32(3)
        elif kind == 6:
            x[:, ::2] = -0.0
        out.append(x)
    return out


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return np.array_equal(np.asarray(a).view(np.uint32), np.asarray(b).view(np.uint32))


@pytest.mark.parametrize("seed", [0, 1])
def test_abs_max_fast_path_is_exact(seed: int) -> None:
    for x in _columns(seed):
        amax, mx, nan = k._abs_max(x)
        amax0, mx0, nan0 = k._abs_max_exact(x)
        assert _same(amax, amax0) and _same(mx, mx0) and nan == nan0


@pytest.mark.parametrize("seed", [2, 3])
def test_seqsum_reduce_is_left_to_right(seed: int) -> None:
    assert k._SEQUENTIAL_REDUCE  # else _seqsum silently uses the loop, and this test proves nothing new
    with np.errstate(all="ignore"):
        for x in _columns(seed):
            for from_zero in (True, False):
                assert _same(k._seqsum(x, from_zero), k._seqsum_loop(x, from_zero))


def test_clip_fast_path_matches_maximum_minimum() -> None:
    rng = np.random.default_rng(4)
    for dtype in (np.float32, np.int32):
        a = (rng.standard_normal(5000) * 50).astype(dtype)
        if dtype is np.float32:
            a[::97] = np.nan
            a[::89] = -0.0
        b = a.copy()
        k._clip(a, -32, 31)
        np.minimum(np.maximum(b, dtype(-32)), dtype(31), out=b)
        assert np.array_equal(a.view(np.uint32) if dtype is np.float32 else a,
                              b.view(np.uint32) if dtype is np.float32 else b)
