"""NaN and Inf weights: converted with a warning naming the tensor; --strict refuses, leaving nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from lmconv.cli import main


@pytest.fixture()
def nan_file(tmp_path: Path) -> Path:
    w = np.ones((4, 32), np.float32)
    w[1, 1], w[2, 2] = np.nan, np.inf
    save_file({"bad.weight": w, "good.weight": np.ones((4, 32), np.float32)}, str(tmp_path / "nan.safetensors"))
    return tmp_path / "nan.safetensors"


@pytest.mark.parametrize("target", ["out.safetensors", "out.pt", "out.gguf"])
def test_non_finite_weights_convert_with_a_warning(nan_file: Path, target: str, capsys: pytest.CaptureFixture[str]) -> None:
    generic = ["--generic"] if target.endswith(".gguf") else []  # a family-less GGUF: llama.cpp could not run it
    assert main([str(nan_file), str(nan_file.parent / target), *generic]) == 0
    err = capsys.readouterr().err
    assert "'bad.weight' holds 1 NaN and 1 Inf" in err and "good.weight" not in err


@pytest.mark.parametrize("target", ["out.safetensors", "out.pt", "out.gguf"])
def test_strict_refuses_and_leaves_nothing(nan_file: Path, target: str, capsys: pytest.CaptureFixture[str]) -> None:
    generic = ["--generic"] if target.endswith(".gguf") else []
    assert main([str(nan_file), str(nan_file.parent / target), "--strict", *generic]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lmconv: error:") and "--strict" in err[-1] and "bad.weight" in err[-1]
    assert sorted(p.name for p in nan_file.parent.iterdir()) == ["nan.safetensors"]


def test_values_survive_bit_exact(nan_file: Path) -> None:
    assert main([str(nan_file), str(nan_file.parent / "copy.safetensors"), "--quiet"]) == 0
    a, b = load_file(str(nan_file)), load_file(str(nan_file.parent / "copy.safetensors"))
    assert a["bad.weight"].tobytes() == b["bad.weight"].tobytes()


def _blocks_with_nan(tmp_path: Path, rows: int) -> Path:
    """A family-less q8_0 GGUF whose second block of row 1 has a NaN scale (32 NaN values)."""
    assert main([str(_wide(tmp_path, rows)), str(tmp_path / "q.gguf"), "--quant", "q8_0", "--generic", "--quiet"]) == 0
    data = bytearray((tmp_path / "q.gguf").read_bytes())
    from gguf import GGUFReader

    t = next(t for t in GGUFReader(tmp_path / "q.gguf").tensors if t.name == "wide.weight")
    row_bytes = 34 * 64  # 64 blocks of q8_0 per row of 2048
    at = int(t.data_offset) + row_bytes + 34  # row 1, block 1: its f16 scale comes first
    data[at:at + 2] = np.array([np.nan], np.float16).tobytes()
    (tmp_path / "q.gguf").write_bytes(bytes(data))
    return tmp_path / "q.gguf"


def _wide(tmp_path: Path, rows: int) -> Path:
    save_file({"wide.weight": np.ones((rows, 2048), np.float32)}, str(tmp_path / "wide.safetensors"))
    return tmp_path / "wide.safetensors"


@pytest.mark.parametrize("rows", [4, 2048])  # one call, and many chunks of rows on the compute pool
def test_blocks_that_dequantise_to_nan_are_counted_while_they_stream(tmp_path: Path, rows: int,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Floats computed from blocks are checked chunk by chunk (the tensor keeps streaming by rows) and
    reported once, with the counts of the whole tensor."""
    from lmconv import read_model
    from lmconv.pipeline import guard_non_finite

    src = _blocks_with_nan(tmp_path, rows)
    capsys.readouterr()
    assert main([str(src), str(tmp_path / "out.safetensors")]) == 0
    err = capsys.readouterr().err
    assert err.count("'wide.weight' holds 32 NaN and 0 Inf") == 1, err
    assert int(np.isnan(load_file(str(tmp_path / "out.safetensors"))["wide.weight"]).sum()) == 32

    from lmconv.transforms import dequantize_tensor

    model = read_model(src)
    guarded = guard_non_finite(model.with_tensors([dequantize_tensor(t) for t in model]), strict=False, warn=print)
    assert all(t.row_source() is not None for t in guarded), "the check must not stop row streaming"
    assert main([str(src), str(tmp_path / "strict.safetensors"), "--strict"]) == 3
    assert not (tmp_path / "strict.safetensors").exists()
