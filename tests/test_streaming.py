"""Row-chunked computation (lmconv.streaming): pieces and chunks give exactly the bytes of one whole call.

The benchmark models are too big for the test suite, so the chunk size is shrunk instead: every
tensor here is cut into many pieces, and the files must be byte-identical to the unchunked ones.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from lmconv import dtypes as dt
from lmconv import parallel, streaming
from lmconv.ir import tensor_from_array
from lmconv.pipeline import convert

ROOT = Path(__file__).resolve().parents[1]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    from fixtures.make_fixtures import build_llama

    return build_llama(tmp_path / "m", hidden_size=256, intermediate_size=512, num_layers=2, num_heads=4,
                       num_kv_heads=2, vocab_size=1000, tokenizer=False)


@pytest.mark.parametrize("kw, ext", [({"dtype": "f16"}, "gguf"), ({"quant": "q8_0"}, "gguf"),
                                     ({"quant": "q4_k_m"}, "gguf"), ({"dtype": "bf16"}, "safetensors")])
def test_chunked_output_is_byte_identical(model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          kw: dict[str, str], ext: str) -> None:
    digests = []
    for chunk in (1 << 40, 4096):  # one piece per tensor; then pieces of a few rows
        _chunks(monkeypatch, chunk)
        monkeypatch.setattr(streaming, "PIECE_WINDOW_BYTES", 1 << 16)
        out = tmp_path / f"out-{chunk}.{ext}"
        convert(model_dir, out, companions=False, extra={"generic": True}, **kw)  # no tokenizer: a generic GGUF
        digests.append(_digest(out))
    assert digests[0] == digests[1]


def _chunks(monkeypatch: pytest.MonkeyPatch, nbytes: int) -> None:
    """Row chunks of ``nbytes`` on two workers, for Tensor.load (lmconv.parallel) and writers (lmconv.streaming)."""
    for module in (parallel, streaming):
        monkeypatch.setattr(module, "ROW_CHUNK_BYTES", nbytes)
        monkeypatch.setattr(module, "compute_workers", lambda: 2)


def test_map_rows_matches_whole_call(monkeypatch: pytest.MonkeyPatch) -> None:
    _chunks(monkeypatch, 1024)
    a = np.random.default_rng(0).standard_normal((3, 50, 64)).astype(np.float32)
    t = tensor_from_array("x", a).cast(dt.F16)
    assert t.row_source() is not None
    got = t.load()
    assert got.dtype == np.float16 and got.shape == a.shape
    assert np.array_equal(got.view(np.uint16), a.astype(np.float16).view(np.uint16))
    pieces = [p for _, p, _ in streaming.iter_pieces([t])]
    assert len(pieces) > 1
    assert np.concatenate([p.reshape(-1) for p in pieces]).tobytes() == got.tobytes()


def test_a_piece_of_the_wrong_dtype_is_an_input_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from lmconv.errors import InputError

    _chunks(monkeypatch, 1024)
    a = np.ones((64, 64), np.float32)
    bad = tensor_from_array("x", a).map(lambda r: r.astype(np.float64), dtype=dt.F16, rows=True)
    with pytest.raises(InputError):
        list(streaming.iter_pieces([bad]))


@pytest.mark.parametrize("name", ["float32", "float16", "bfloat16"])
def test_all_finite(name: str) -> None:
    d = dt.get({"float32": "f32", "float16": "f16", "bfloat16": "bf16"}[name]).numpy
    a = np.zeros(3_000_000, d)
    assert streaming.all_finite(a)
    for bad in (np.nan, np.inf, -np.inf):
        b = a.copy()
        b[2_500_000] = bad
        assert not streaming.all_finite(b)
    assert streaming.all_finite(np.array([65504, -65504], d))
