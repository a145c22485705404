"""The ``register_encodings`` hook: a third-party encoding decodes stored pieces into float weights.

A toy encoding stands in for FP8/GPTQ: each ``*.weight`` is stored as int8 with a per-row
``*.weight_scale`` beside it, and the config says ``quantization_config.quant_method = "toyscale"``.
Installed as a real distribution, it must decode before anything else sees the model: the output
holds the products, no scale tensors, and a config without ``quantization_config``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from tests.conftest import assert_one_line_error, lmconv, write_dist

TOY_ENCODING = '''
import numpy as np
from lmconv.encodings import Encoding, note_decoded
from lmconv.errors import InputError
from lmconv.hookspecs import hookimpl
from lmconv import dtypes as dt


class ToyScale(Encoding):
    name = "toyscale"
    description = "int8 weights with one float scale per row"

    def claims(self, model):
        return (model.config.get("quantization_config") or {}).get("quant_method") == "toyscale"

    def decode(self, model, warn):
        by_name = {t.name: t for t in model}
        out, count = [], 0
        for t in model:
            if t.name.endswith(".weight_scale"):
                continue
            scale = by_name.get(t.name + "_scale")
            if scale is None:
                out.append(t)
                continue
            if scale.shape != (t.shape[0], 1):
                raise InputError(f"tensor {scale.name!r} has shape {list(scale.shape)}, expected {[t.shape[0], 1]}",
                                 path=scale.origin or model.source)
            def load(t=t, scale=scale):
                return t.load().astype(np.float32) * scale.load().astype(np.float32)
            out.append(t.replace(dtype=dt.F32, loader=load))
            count += 1
        decoded = model.with_tensors(out)
        decoded.config = {k: v for k, v in model.config.items() if k != "quantization_config"}
        note_decoded(decoded, self, "int8, per-row scales", count)
        return decoded


@hookimpl
def register_encodings(register):
    register(ToyScale())
'''


def _encoded_copy(src: Path, dst: Path, *, bad_scale: bool = False) -> dict[str, np.ndarray]:
    """``src`` (a float HF folder) stored as toyscale; returns the values the decoding must give."""
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    stored: dict[str, np.ndarray] = {}
    expected: dict[str, np.ndarray] = {}
    for name, w in tensors.items():
        w = w.astype(np.float32)
        if name.endswith(".weight") and w.ndim == 2 and "embed" not in name:
            scale = (np.abs(w).max(axis=1, keepdims=True) / 127).astype(np.float32)
            q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
            stored[name], stored[name + "_scale"] = q, (scale[:3] if bad_scale else scale)
            expected[name] = q.astype(np.float32) * scale
        else:
            stored[name] = expected[name] = w
    save_file(stored, str(dst / "model.safetensors"))
    config = json.loads((dst / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "toyscale"}
    (dst / "config.json").write_text(json.dumps(config))
    return expected


def test_a_plugin_encoding_decodes_before_the_family_sees_the_model(tmp_path: Path, tiny_llama: Path) -> None:
    site = write_dist(tmp_path / "site", {"toyscale": "lmconv_toyscale"}, modules={"lmconv_toyscale": TOY_ENCODING})
    env = {"PYTHONPATH": str(site)}
    expected = _encoded_copy(tiny_llama, tmp_path / "encoded")

    # Without the plugin the int8 weights and their scales would pass as two unrelated tensors.
    plugins = lmconv("plugins", env=env)
    assert "encoding:toyscale" in plugins.stdout, plugins.stdout
    proc = lmconv(tmp_path / "encoded", f"{tmp_path}/out/", "--dtype", "f32", "--quiet", env=env)
    assert proc.returncode == 0, proc.stderr
    got = load_file(tmp_path / "out" / "model.safetensors")
    assert sorted(got) == sorted(expected)
    for name, want in expected.items():
        np.testing.assert_array_equal(got[name], want, err_msg=name)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]


def test_a_broken_encoding_is_one_line_and_writes_nothing(tmp_path: Path, tiny_llama: Path) -> None:
    site = write_dist(tmp_path / "site", {"toyscale": "lmconv_toyscale"}, modules={"lmconv_toyscale": TOY_ENCODING})
    _encoded_copy(tiny_llama, tmp_path / "encoded", bad_scale=True)
    proc = lmconv(tmp_path / "encoded", tmp_path / "out.gguf", env={"PYTHONPATH": str(site)})
    assert_one_line_error(proc, 3, "weight_scale", "shape")
    assert not (tmp_path / "out.gguf").exists()
