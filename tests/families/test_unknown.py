"""Models no installed family knows, and what ``inspect`` and ``families`` say about families."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.conftest import FIXTURES, assert_one_line_error, lmconv


def _weird_gguf(path: Path) -> Path:
    """A GGUF of an architecture nobody knows, written by gguf-py (so no lmconv config inside)."""
    import gguf

    w = gguf.GGUFWriter(str(path), "weirdnet")
    w.add_block_count(1)
    w.add_tensor("blk.0.mix.weight", np.arange(12, dtype=np.float32).reshape(3, 4))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_of_an_unknown_architecture_to_an_hf_folder_needs_generic(tmp_path: Path) -> None:
    src = _weird_gguf(tmp_path / "weird.gguf")
    proc = lmconv(src, f"{tmp_path / 'out'}/")
    line = assert_one_line_error(proc, 3, "weird.gguf", "'weirdnet'", "llama", "--generic")
    assert "no installed family knows" in line
    assert not (tmp_path / "out").exists()
    ok = lmconv(src, f"{tmp_path / 'out'}/", "--generic", "--quiet")
    assert ok.returncode == 0, ok.stderr
    from safetensors.numpy import load_file

    assert load_file(str(tmp_path / "out" / "model.safetensors"))["blk.0.mix.weight"].tolist() == \
        np.arange(12, dtype=np.float32).reshape(3, 4).tolist()
    # a generic container keeps the names without asking: only an HF folder promises transformers
    assert lmconv(src, tmp_path / "w.safetensors", "--quiet").returncode == 0


def test_inspect_names_the_family(tmp_path: Path) -> None:
    proc = lmconv("inspect", FIXTURES / "tiny-llama", "--json")
    assert json.loads(proc.stdout)["family"] == "llama"
    text = lmconv("inspect", FIXTURES / "tiny-gpt2")
    assert "family: gpt2" in text.stdout.splitlines()[0]
    weird = lmconv("inspect", _weird_gguf(tmp_path / "weird.gguf"), "--json")
    assert json.loads(weird.stdout)["family"] is None


def test_families_lists_classes_and_gguf_names() -> None:
    proc = lmconv("families", "--json")
    assert proc.returncode == 0
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["llama"]["targets"] == {"gguf": "llama"} and "MistralForCausalLM" in rows["llama"]["hf_architectures"]
    assert rows["gpt2"]["forward"] is True
    text = lmconv("families").stdout
    assert any(line.startswith("llama ") and "LlamaForCausalLM" in line and "gguf:llama" in line for line in text.splitlines())
