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
