"""`lmconv … --quant` end to end, byte for byte against llama.cpp's own llama_model_quantize."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from lmconv.cli import main
from tests.llamacpp_support import llamacpp_quantize

ROOT = Path(__file__).resolve().parents[1]
# lmconv preset name → llama.cpp LLAMA_FTYPE_MOSTLY_* suffix; with pure=True every quantisable
# tensor gets the preset's base type.
PURE_TYPES = {
    "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0", "q4_0": "Q4_0", "q4_1": "Q4_1", "q5_0": "Q5_0", "q5_1": "Q5_1",
    "q2_k": "Q2_K", "q3_k_s": "Q3_K_S", "q4_k_s": "Q4_K_S", "q5_k_s": "Q5_K_S", "q6_k": "Q6_K",
}
PRESETS = ("q4_k_m", "q4_k_s", "q5_k_m", "q5_k_s", "q3_k_m", "q3_k_s", "q2_k", "q8_0", "q4_0")


@pytest.fixture(scope="module")
def f32_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A llama with every row a multiple of 256 (so K-quants apply everywhere), as an f32 GGUF."""
    import shutil

    from fixtures.make_fixtures import build_llama

    d = tmp_path_factory.mktemp("q")
    model = build_llama(d / "wide", hidden_size=256, intermediate_size=512, num_layers=4, num_heads=4,
                        num_kv_heads=2, seed=7)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ROOT / "fixtures" / "tiny-llama" / name, model / name)
    out = d / "wide-f32.gguf"
    assert main([str(model), str(out), "--quiet"]) == 0
    return out


def tensors(path: Path) -> dict[str, tuple[str, bytes]]:
    return {t.name: (t.tensor_type.name, bytes(t.data)) for t in GGUFReader(path).tensors}


@pytest.mark.parametrize("preset", sorted(PURE_TYPES))
def test_pure_output_is_byte_identical_to_llama_quantize(f32_gguf: Path, tmp_path: Path, preset: str) -> None:
    ours, theirs = tmp_path / "ours.gguf", tmp_path / "theirs.gguf"
    assert main([str(f32_gguf), str(ours), "--quant", preset, "--pure", "--quiet"]) == 0
    llamacpp_quantize(f32_gguf, theirs, PURE_TYPES[preset], pure=True)
    a, b = tensors(ours), tensors(theirs)
    assert a.keys() == b.keys()
    for name in b:
        assert a[name][0] == b[name][0], f"{name}: we chose {a[name][0]}, llama.cpp {b[name][0]}"
        assert a[name][1] == b[name][1], f"{name}: {a[name][0]} bytes differ"


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_types_match_llama_quantize(f32_gguf: Path, tmp_path: Path, preset: str) -> None:
    ours, theirs = tmp_path / "ours.gguf", tmp_path / "theirs.gguf"
    assert main([str(f32_gguf), str(ours), "--quant", preset, "--quiet"]) == 0
    llamacpp_quantize(f32_gguf, theirs, preset.upper())
    a, b = tensors(ours), tensors(theirs)
    assert {k: v[0] for k, v in a.items()} == {k: v[0] for k, v in b.items()}
    assert a == b  # same types, and the same bytes too


def test_requantising_warns_and_same_type_copies_blocks(f32_gguf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    q8 = tmp_path / "q8.gguf"
    assert main([str(f32_gguf), str(q8), "--quant", "q8_0", "--quiet"]) == 0
    assert main([str(q8), str(tmp_path / "same.gguf"), "--quant", "q8_0", "--quiet"]) == 0
    assert tensors(q8) == tensors(tmp_path / "same.gguf")
    capsys.readouterr()
    assert main([str(q8), str(tmp_path / "q4.gguf"), "--quant", "q4_0"]) == 0
    assert "compounds" in capsys.readouterr().err


def test_quant_needs_a_block_format(f32_gguf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(f32_gguf), str(tmp_path / "x.safetensors"), "--quant", "q8_0"]) == 2
    err = capsys.readouterr().err
    assert "--dtype" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.safetensors").exists()


def test_unknown_quant_name_lists_valid_ones(f32_gguf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(f32_gguf), str(tmp_path / "x.gguf"), "--quant", "q4_k_x"]) == 2
    err = capsys.readouterr().err
    assert "q4_k_m" in err and "q8_0" in err


def test_quantised_gguf_to_safetensors_dequantises(f32_gguf: Path, tmp_path: Path) -> None:
    from gguf import quants
    from safetensors.numpy import load_file

    q = tmp_path / "q4.gguf"
    assert main([str(f32_gguf), str(q), "--quant", "q4_k_m", "--quiet"]) == 0
    assert main([str(q), str(tmp_path / "deq.safetensors"), "--quiet"]) == 0
    back = load_file(str(tmp_path / "deq.safetensors"))
    down = next(t for t in GGUFReader(q).tensors if t.name == "blk.0.ffn_down.weight")
    want = quants.dequantize(down.data, down.tensor_type)
    np.testing.assert_array_equal(back["model.layers.0.mlp.down_proj.weight"], want)
