"""q3_K without an importance matrix runs make_q3_quants' descent once for several chunks
(kquants._q3_K_rows): the batching is invisible, byte for byte against ggml, with chunks and
batches of every size, ragged last ones, and sub-blocks that stop the descent at different passes."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from lmconv.plugins.quantizers import kquants as kq

from tests.test_kquants import _ggml_base, assert_same_bytes, c_quantize


@pytest.fixture(scope="module")
def ggml() -> ctypes.CDLL:
    return _ggml_base()


def _rows(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((23, 1024)) * 10.0 ** rng.uniform(-6, 3, (23, 1))).astype(np.float32)
    sub = x.reshape(-1, 16)  # a view: sub-blocks of the rows
    pick = rng.random(sub.shape[0])
    sub[pick < 0.05] = 0  # all-zero sub-blocks never enter the descent
    sub[(pick >= 0.05) & (pick < 0.1)] = np.round(sub[(pick >= 0.05) & (pick < 0.1)])  # ties, zeros
    sub[(pick >= 0.1) & (pick < 0.15), ::3] = -0.0
    x[3] = 0  # whole zero super-blocks
    return x


@pytest.mark.parametrize(("chunk", "batch"), [(1, 1), (3, 2), (7, 3), (5, 8), (64, 1), (1024, 8)])
def test_descent_batches_are_invisible(ggml: ctypes.CDLL, chunk: int, batch: int,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kq, "CHUNK_BLOCKS", chunk)
    monkeypatch.setattr(kq, "_Q3_DESCENT_CHUNKS", batch)
    for seed in range(3):
        x = _rows(seed)
        assert_same_bytes(kq.quantize_q3_K(x), c_quantize(ggml, "q3_K", x), "q3_K")
