"""lmconv's numpy i-quants against ggml's own quantisers, byte for byte.

The reference is ``ggml_quantize_chunk(type, rows, …, imatrix)`` called through ctypes from the
libggml-base that llama-cpp-python ships (see tests/test_kquants.py), with and without an importance
matrix, on random rows, adversarial rows (hostile 16-element pieces, finite: ggml aborts on some
non-finite inputs of these types) and rows whose importance is zero in places or everywhere.
IQ2_XXS, IQ2_XS and IQ1_S are only ever called with a matrix (ggml asserts one).

The first call of a lattice type makes ggml build its neighbour tables (IQ1: ~20 s, IQ2_S: ~8 s,
once per process); the tests here are kept small otherwise.
"""

from __future__ import annotations

import ctypes
import zlib

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quant_shape_to_byte_shape
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lmconv.plugins.quantizers import grids
from lmconv.plugins.quantizers import iquants as iq

from tests.test_kquants import _ggml_base, random_matrix

TYPES = list(iq.IQUANTIZERS)
WITHOUT_IMATRIX = [t for t in TYPES if t not in iq.NEEDS_IMATRIX]


@pytest.fixture(scope="module")
def ggml() -> ctypes.CDLL:
    return _ggml_base()


def c_quantize(lib: ctypes.CDLL, name: str, x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """ggml_quantize_chunk(type, rows, imatrix): the reference bytes, (rows, row_size) uint8."""
    if imatrix is None:
        assert name not in iq.NEEDS_IMATRIX, "ggml aborts the process for this type without an imatrix"
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, x.shape[-1])
    qtype = int(GGMLQuantizationType[name.upper()])
    out = np.zeros((x.shape[0], lib.ggml_row_size(qtype, x.shape[1])), np.uint8)
    w = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
    written = lib.ggml_quantize_chunk(qtype, x.ctypes.data, out.ctypes.data, 0, x.shape[0], x.shape[1],
                                      None if w is None else w.ctypes.data)
    assert written == out.nbytes
    return out


def assert_same(ours: np.ndarray, ref: np.ndarray, name: str) -> None:
    assert ours.dtype == np.uint8 and ours.shape == ref.shape, (ours.shape, ref.shape)
    if not np.array_equal(ours, ref):
        ts = iq.TYPE_SIZES[name]
        diff = np.flatnonzero((ours.reshape(-1, ts) != ref.reshape(-1, ts)).any(axis=1))
        raise AssertionError(f"{name}: {diff.size} of {ours.size // ts} block(s) differ, first at block {diff[0]}")


def check(lib: ctypes.CDLL, name: str, x: np.ndarray, imatrix: np.ndarray | None) -> None:
    assert_same(iq.IQUANTIZERS[name](x, imatrix), c_quantize(lib, name, x, imatrix), name)


# --------------------------------------------------------------------------- random rows


def _imatrix(kind: str, rng: np.random.Generator, n: int) -> np.ndarray | None:
    if kind == "none":
        return None
    if kind == "lognormal":  # llama-imatrix-like: mean squared activations over a few decades
        return np.exp(rng.standard_normal(n) * 1.5).astype(np.float32)
    if kind == "zeros":  # dead columns: no importance at all for 40 % of them
        w = np.exp(rng.standard_normal(n)).astype(np.float32)
        w[rng.random(n) < 0.4] = 0
        return w
    if kind == "allzero":
        return np.zeros(n, np.float32)
    if kind == "sparse":  # a few columns carry all the weight
        w = np.zeros(n, np.float32)
        w[rng.integers(0, n, n // 16)] = rng.random(n // 16).astype(np.float32) + 0.5
        return w
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["normal", "uniform", "heavy", "scaled", "weights"])
@pytest.mark.parametrize("name", TYPES)
def test_random_rows_are_byte_exact(ggml: ctypes.CDLL, name: str, kind: str) -> None:
    rng = np.random.default_rng(zlib.crc32(f"{name}-{kind}".encode()))
    x = random_matrix(kind, rng, (6, 512), decades=12)
    for ik in ("lognormal", "zeros", "allzero", "sparse", "none"):
        w = _imatrix(ik, rng, x.shape[1])
        if w is None and name in iq.NEEDS_IMATRIX:
            continue
        check(ggml, name, x, w)


@pytest.mark.parametrize("name", TYPES)
def test_many_blocks_cross_chunk_boundaries(ggml: ctypes.CDLL, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunking is invisible: rows spanning several chunks (and a ragged last one) match."""
    monkeypatch.setattr(iq, "CHUNK_ELEMENTS", 3 * 256)
    monkeypatch.setattr(iq, "_CHUNK", {})
    rng = np.random.default_rng(5)
    x = rng.standard_normal((5, 1280), dtype=np.float32)
    check(ggml, name, x, _imatrix("lognormal", rng, 1280))


# --------------------------------------------------------------------------- adversarial rows

_PIECE = st.sampled_from(["zero", "const", "huge", "tiny", "outlier", "negative", "positive", "mixed",
                          "subnormal", "signed_zero", "ties", "eps", "raw"])


@st.composite
def adversarial(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray | None]:
    """One or two super-blocks of hostile 16-element pieces, and an importance matrix for them
    (random, zero in places, zero everywhere, or none)."""
    n_blocks = draw(st.integers(1, 2))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    pieces = []
    for _ in range(16 * n_blocks):
        kind = draw(_PIECE)
        base = rng.standard_normal(16).astype(np.float32)
        if kind == "zero":
            v = np.zeros(16, np.float32)
        elif kind == "const":
            v = np.full(16, draw(st.sampled_from([1.0, -1.0, 0.5, -3.25, 1e-20, 7e4])), np.float32)
        elif kind == "huge":
            v = base * np.float32(draw(st.sampled_from([1e6, 1e9])))
        elif kind == "tiny":
            v = base * np.float32(draw(st.sampled_from([1e-20, 1e-30])))
        elif kind == "outlier":
            v = base * np.float32(1e-3)
            v[rng.integers(16)] = draw(st.sampled_from([1.0, -1.0, 1e4, -1e6]))
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
        elif kind == "ties":  # halves and small integers: roundings and sorts land on ties
            v = (rng.integers(-8, 9, 16) * 0.5).astype(np.float32)
        elif kind == "eps":  # around the all-zero thresholds of the types (1e-15 … 1e-7)
            v = base * np.float32(draw(st.sampled_from([1e-15, 1e-12, 1e-8, 1e-7])))
        else:
            v = np.array(draw(st.lists(st.floats(-1e6, 1e6, width=32), min_size=16, max_size=16)), np.float32)
        pieces.append(v)
    x = np.concatenate(pieces).reshape(1, 256 * n_blocks)
    ik = draw(st.sampled_from(["lognormal", "zeros", "allzero", "sparse", "none"]))
    return x, _imatrix(ik, rng, x.shape[1])


@pytest.mark.parametrize("name", TYPES)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(case=adversarial())
def test_adversarial_rows_are_byte_exact(name: str, case: tuple[np.ndarray, np.ndarray | None]) -> None:
    x, w = case
    if w is None and name in iq.NEEDS_IMATRIX:
        w = np.ones(x.shape[1], np.float32)
    check(_ggml_base(), name, x, w)


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("fill", [0.0, -0.0, 1.0, -1.0, 1e-30, 2.0**-149, 65504.0, 1e5])
def test_constant_super_blocks(ggml: ctypes.CDLL, name: str, fill: float) -> None:
    x = np.full((2, 256), fill, np.float32)
    check(ggml, name, x, np.ones(256, np.float32))


@pytest.mark.parametrize("name", TYPES)
def test_zero_sub_blocks_between_data(ggml: ctypes.CDLL, name: str) -> None:
    """Blocks of exact zeros among ones with data: IQ3_S then writes the later blocks' grid bytes
    into the earlier free slots (ggml advances its write pointers only past blocks with data)."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3, 512)).astype(np.float32)
    x[0, 0:32] = 0
    x[0, 96:160] = 0
    x[1, 224:256] = 0
    x[2, 256:512] = 0
    for ik in ("lognormal", "none"):
        w = _imatrix(ik, rng, 512)
        if w is None and name in iq.NEEDS_IMATRIX:
            continue
        check(ggml, name, x, w)


# --------------------------------------------------------------------------- API and layout


@pytest.mark.parametrize("name", TYPES)
def test_layout_reads_back_with_gguf_py(name: str) -> None:
    """Bytes are laid out as gguf-py expects, and dequantise to something close to the input."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 512), dtype=np.float32)
    w = _imatrix("lognormal", rng, 512)
    q = iq.IQUANTIZERS[name](x, w)
    qt = GGMLQuantizationType[name.upper()]
    assert q.shape == quant_shape_to_byte_shape(x.shape, qt)
    y = dequantize(q, qt)
    rel = float(np.sqrt(np.mean((y - x) ** 2)) / np.sqrt(np.mean(x**2)))
    assert rel < {"iq4_nl": 0.12, "iq4_xs": 0.12, "iq3_s": 0.25, "iq3_xxs": 0.3, "iq2_s": 0.4, "iq2_xs": 0.45,
                  "iq2_xxs": 0.5, "iq1_m": 0.65, "iq1_s": 0.7}[name], rel


@pytest.mark.parametrize("name", TYPES)
def test_leading_dimensions_and_dtypes(name: str) -> None:
    f = iq.IQUANTIZERS[name]
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 256))
    w = _imatrix("lognormal", rng, 256)
    q = f(x, w)
    assert q.shape == (2, 3, iq.TYPE_SIZES[name] * 256 // iq.BLOCK_SIZES[name]) and q.dtype == np.uint8
    np.testing.assert_array_equal(q.reshape(6, -1), f(x.reshape(6, 256).astype(np.float32), w))
    np.testing.assert_array_equal(f(x[0, 0], w), q[0, 0])


@pytest.mark.parametrize("name", TYPES)
def test_rejects_rows_that_do_not_divide(name: str) -> None:
    with pytest.raises(ValueError, match="multiple"):
        iq.IQUANTIZERS[name](np.zeros((2, 320 if iq.BLOCK_SIZES[name] == 256 else 48), np.float32),
                             np.ones(320 if iq.BLOCK_SIZES[name] == 256 else 48, np.float32))


@pytest.mark.parametrize("name", sorted(iq.NEEDS_IMATRIX))
def test_types_that_need_an_imatrix_say_so(name: str) -> None:
    with pytest.raises(ValueError, match="importance matrix"):
        iq.IQUANTIZERS[name](np.ones((1, 256), np.float32))
    with pytest.raises(ValueError, match="256"):
        iq.IQUANTIZERS[name](np.ones((1, 256), np.float32), np.ones(128, np.float32))


def test_sizes_match_gguf_py() -> None:
    from gguf.constants import GGML_QUANT_SIZES

    assert set(iq.IQUANTIZERS) == {"iq4_nl", "iq4_xs", "iq3_s", "iq3_xxs", "iq2_s", "iq2_xs", "iq2_xxs", "iq1_s", "iq1_m"}
    for name, size in iq.TYPE_SIZES.items():
        assert GGML_QUANT_SIZES[GGMLQuantizationType[name.upper()]] == (iq.BLOCK_SIZES[name], size)


@pytest.mark.parametrize("name", ["iq2_xxs", "iq2_xs", "iq2_s", "iq1_s", "iq3_xxs", "iq3_s"])
def test_grid_tables(name: str) -> None:
    """The grids come from gguf-py's dequantisers; every code a quantiser can round to is either on
    the grid or has neighbours, all at the nearest distances and ordered by (distance, index)."""
    g = grids.grid(name)
    n_levels, bits = g.n_levels, g.bits
    codes = np.arange(g.kmap.size)
    lv = (codes[:, None] >> (bits * np.arange(g.dim))) & ((1 << bits) - 1)
    usable = (lv < n_levels).all(axis=1)
    assert (g.kmap[usable] >= 0).sum() == g.levels.shape[0]  # every grid point is a usable code
    off = usable & (g.kmap < 0)
    assert (g.nb_count[off] > 0).all() and (g.nb_count[~off] == 0).all()
    for u in np.flatnonzero(off)[:: max(1, off.sum() // 50)]:
        cand = g.nb_table[g.nb_row[u], : g.nb_count[u]]
        d2 = ((g.levels[cand] - lv[u]) ** 2 * 4).sum(axis=1)
        assert (np.diff(d2) >= 0).all() and ((np.diff(d2) > 0) | (np.diff(cand) > 0)).all()
        all_d2 = ((g.levels - lv[u]) ** 2 * 4).sum(axis=1)
        assert len(np.unique(d2)) <= {"iq2_s": 1, "iq3_s": 3, "iq1_s": 3}.get(name, 2)
        assert d2[0] == all_d2.min() and (all_d2 <= d2[-1]).sum() == cand.size
