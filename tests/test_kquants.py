"""lmconv's numpy K-quants against llama.cpp's own quantisers, byte for byte.

The reference is ggml's ``ggml_quantize_chunk`` called through ctypes from the
libggml-base.so that llama-cpp-python ships; without an importance matrix it
runs ``quantize_row_qN_K_ref``, the code our numpy port replays.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quant_shape_to_byte_shape
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]


from lmconv.plugins.quantizers import kquants as kq

TYPES = ["q2_K", "q3_K", "q4_K", "q5_K", "q6_K"]
GGML = {t: GGMLQuantizationType[t.upper()] for t in TYPES}


# --------------------------------------------------------------------------- the C reference


def _ggml_base() -> ctypes.CDLL:
    import llama_cpp
    lib_dir = Path(llama_cpp.__file__).resolve().parent / "lib"
    candidates = sorted(lib_dir.glob("libggml-base.*"))
    assert candidates, "llama-cpp-python ships no libggml-base"
    lib = ctypes.CDLL(str(candidates[0]))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    return lib


@pytest.fixture(scope="module")
def ggml() -> ctypes.CDLL:
    return _ggml_base()


def c_quantize(lib: ctypes.CDLL, name: str, x: np.ndarray) -> np.ndarray:
    """ggml_quantize_chunk(type, rows, imatrix=NULL): the reference bytes, (rows, row_size) uint8."""
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, x.shape[-1])
    n_rows, n_per_row = x.shape
    qtype = int(GGML[name])
    row_size = lib.ggml_row_size(qtype, n_per_row)
    out = np.zeros((n_rows, row_size), np.uint8)
    written = lib.ggml_quantize_chunk(qtype, x.ctypes.data, out.ctypes.data, 0, n_rows, n_per_row, None)
    assert written == out.nbytes
    return out


def assert_same_bytes(ours: np.ndarray, ref: np.ndarray, name: str) -> None:
    assert ours.dtype == np.uint8 and ours.shape == ref.shape, (ours.shape, ref.shape)
    if not np.array_equal(ours, ref):
        ts = kq.TYPE_SIZES[name]
        diff = np.flatnonzero((ours.reshape(-1, ts) != ref.reshape(-1, ts)).any(axis=1))
        raise AssertionError(f"{name}: {diff.size} block(s) differ, first at block {diff[0]}")


# --------------------------------------------------------------------------- random matrices


def random_matrix(kind: str, rng: np.random.Generator, shape: tuple[int, int] = (24, 768), decades: int = 30) -> np.ndarray:
    """Rows that find a quantiser's corners (tests/test_iquants.py uses them too); the "scaled" rows span
    1e-decades … 1e+decades."""
    if kind == "normal":
        return rng.standard_normal(shape, dtype=np.float32)
    if kind == "uniform":
        return rng.uniform(-3, 5, shape).astype(np.float32)
    if kind == "heavy":  # Student-t: outliers in many blocks
        return (rng.standard_t(2, shape) * 0.02).astype(np.float32)
    if kind == "scaled":  # every row at its own magnitude
        return (rng.standard_normal(shape) * 10.0 ** rng.integers(-decades, decades + 1, (shape[0], 1))).astype(np.float32)
    if kind == "weights":  # trained-weight-like: small, a few big columns
        x = rng.standard_normal(shape).astype(np.float32) * np.float32(0.02)
        x[:, rng.integers(0, shape[1], 6)] *= 40
        return x
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["normal", "uniform", "heavy", "scaled", "weights"])
@pytest.mark.parametrize("name", TYPES)
def test_random_matrices_are_byte_exact(ggml: ctypes.CDLL, name: str, kind: str) -> None:
    x = random_matrix(kind, np.random.default_rng(abs(hash((name, kind))) % 2**32))
    assert_same_bytes(kq.KQUANTIZERS[name](x), c_quantize(ggml, name, x), name)


@pytest.mark.parametrize("name", TYPES)
def test_many_blocks_cross_chunk_boundaries(ggml: ctypes.CDLL, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunking is invisible: a tensor spanning several chunks (and a ragged last one) matches."""
    monkeypatch.setattr(kq, "CHUNK_BLOCKS", 7)
    x = np.random.default_rng(5).standard_normal((10, 1280), dtype=np.float32)
    assert_same_bytes(kq.KQUANTIZERS[name](x), c_quantize(ggml, name, x), name)


# --------------------------------------------------------------------------- adversarial blocks

_SUBBLOCK = st.sampled_from(["zero", "const", "huge", "tiny", "outlier", "negative", "positive", "mixed",
                             "subnormal", "signed_zero", "ties", "nonfinite", "raw"])


@st.composite
def adversarial_blocks(draw: st.DrawFn) -> np.ndarray:
    """One to three super-blocks built from 16-element pieces of hostile kinds.

    Mixing kinds inside a super-block is what reaches the interesting paths: a
    sub-block whose scale rounds to zero next to a huge one, fp16 overflow or
    underflow of the super-scale, NaNs from inf-inf in the x²-weighted sums.
    """
    n_blocks = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    pieces = []
    for _ in range(16 * n_blocks):
        kind = draw(_SUBBLOCK)
        base = rng.standard_normal(16).astype(np.float32)
        if kind == "zero":
            v = np.zeros(16, np.float32)
        elif kind == "const":
            v = np.full(16, draw(st.sampled_from([1.0, -1.0, 0.5, -3.25, 1e-20, 7e4])), np.float32)
        elif kind == "huge":
            with np.errstate(over="ignore"):  # the largest scale overflows a few to ±inf: fine
                v = base * np.float32(draw(st.sampled_from([1e30, 1e36, 3e38 / 4])))
        elif kind == "tiny":
            v = base * np.float32(draw(st.sampled_from([1e-30, 1e-38, 1e-20])))
        elif kind == "outlier":
            v = base * np.float32(1e-3)
            v[rng.integers(16)] = draw(st.sampled_from([1.0, -1.0, 1e4, -1e6, 1e30]))
        elif kind == "negative":
            v = -np.abs(base)
        elif kind == "positive":
            v = np.abs(base) + np.float32(0.5)
        elif kind == "mixed":
            v = base * np.float32(10.0) ** rng.integers(-6, 7, 16).astype(np.float32)
        elif kind == "subnormal":
            v = (rng.integers(-60, 61, 16) * 2.0**-149).astype(np.float32)
        elif kind == "signed_zero":
            v = np.where(rng.random(16) < 0.5, np.float32(-0.0), np.float32(0.0)).astype(np.float32)
            v[rng.integers(16)] = draw(st.sampled_from([0.0, 1.0, -2.0]))
        elif kind == "nonfinite":  # quiet NaNs of either sign and infinities, also in first place
            v = base
            for pos in draw(st.lists(st.integers(0, 15), min_size=1, max_size=3)):
                v[pos] = draw(st.sampled_from([np.nan, -np.nan, np.inf, -np.inf]))
        elif kind == "ties":  # halves and small integers: every rounding lands on a tie
            v = (rng.integers(-8, 9, 16) * 0.5).astype(np.float32)
        else:
            v = np.array(draw(st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False),
                                       min_size=16, max_size=16)), np.float32)
        pieces.append(v)
    return np.concatenate(pieces).reshape(n_blocks, 256)


@pytest.mark.parametrize("name", TYPES)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(x=adversarial_blocks())
def test_adversarial_blocks_are_byte_exact(name: str, x: np.ndarray) -> None:
    lib = _ggml_base()
    assert_same_bytes(kq.KQUANTIZERS[name](x), c_quantize(lib, name, x), name)


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("fill", [0.0, -0.0, 1.0, -1.0, 1e-30, -1e30, 2.0**-149, 65504.0, 1e5])
def test_constant_super_blocks(ggml: ctypes.CDLL, name: str, fill: float) -> None:
    x = np.full((2, 256), fill, np.float32)
    assert_same_bytes(kq.KQUANTIZERS[name](x), c_quantize(ggml, name, x), name)


# --------------------------------------------------------------------------- API and layout


@pytest.mark.parametrize("name", TYPES)
def test_layout_reads_back_with_gguf_py(name: str) -> None:
    """Bytes are laid out as gguf-py expects, and dequantise to something close to the input."""
    x = np.random.default_rng(3).standard_normal((4, 512), dtype=np.float32)
    q = kq.KQUANTIZERS[name](x)
    assert q.shape == quant_shape_to_byte_shape(x.shape, GGML[name])
    y = dequantize(q, GGML[name])
    assert y.shape == x.shape
    rel = float(np.sqrt(np.mean((y - x) ** 2)) / np.sqrt(np.mean(x**2)))
    assert rel < {"q2_K": 0.45, "q3_K": 0.25, "q4_K": 0.12, "q5_K": 0.06, "q6_K": 0.03}[name]


@pytest.mark.parametrize("name", TYPES)
def test_leading_dimensions_and_dtypes(name: str) -> None:
    f = kq.KQUANTIZERS[name]
    x = np.random.default_rng(4).standard_normal((2, 3, 256)).astype(np.float64)
    q = f(x)
    assert q.shape == (2, 3, kq.TYPE_SIZES[name]) and q.dtype == np.uint8
    np.testing.assert_array_equal(q.reshape(6, -1), f(x.reshape(6, 256).astype(np.float32)))
    np.testing.assert_array_equal(f(x[0, 0]), q[0, 0])  # a single row


@pytest.mark.parametrize("name", TYPES)
def test_rejects_rows_not_multiple_of_256(name: str) -> None:
    with pytest.raises(ValueError, match="multiple"):
        kq.KQUANTIZERS[name](np.zeros((2, 320), np.float32))


def test_registry_names_and_sizes() -> None:
    from gguf.constants import GGML_QUANT_SIZES

    assert set(kq.KQUANTIZERS) == set(TYPES)
    for name, size in kq.TYPE_SIZES.items():
        assert GGML_QUANT_SIZES[GGML[name]] == (256, size)
