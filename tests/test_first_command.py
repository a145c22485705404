"""The first command works: no silent dead ends, a plan before the work, models by hub id, and the
general.* keys llama.cpp's converter writes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import FIXTURES, assert_one_line_error, lmconv

LLAMA = FIXTURES / "tiny-llama"


@pytest.fixture(scope="module")
def state_dict(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``torch.save(model.state_dict(), "in.pt")`` of the tiny llama, alone in a folder."""
    import torch
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("sd")
    model = AutoModelForCausalLM.from_pretrained(str(LLAMA))
    torch.save(model.state_dict(), folder / "in.pt")
    return folder / "in.pt"


def test_a_bare_state_dict_stops_before_writing_and_says_what_is_missing(state_dict: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.gguf"
    proc = lmconv(state_dict, out, "--quant", "q8_0")
    line = assert_one_line_error(proc, 2, "in.pt", "looks like a llama-family model", "2 layers", "hidden 64",
                                 "config.json", "num_attention_heads", "--config", "--generic")
    assert "num_key_value_heads" in line
    assert list(tmp_path.iterdir()) == []
    proc = lmconv(state_dict, out, "--quant", "q8_0", "--config", LLAMA / "config.json")
    assert_one_line_error(proc, 2, "in.pt", "no tokenizer", "--tokenizer")
    assert list(tmp_path.iterdir()) == []


def test_with_config_and_tokenizer_llama_cpp_runs_it(state_dict: Path, tmp_path: Path) -> None:
    from tests.llamacpp_support import llamacpp_logits, relative_max_diff, transformers_logits

    ids = [5, 40, 300, 7, 99, 12, 480, 3]
    want = transformers_logits(LLAMA, ids)
    f32 = tmp_path / "f32.gguf"
    proc = lmconv(state_dict, f32, "--config", LLAMA / "config.json", "--tokenizer", LLAMA, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert relative_max_diff(llamacpp_logits(f32, ids), want) <= 1e-4
    q8 = tmp_path / "q8.gguf"
    proc = lmconv(state_dict, q8, "--quant", "q8_0", "--config", LLAMA / "config.json", "--tokenizer", LLAMA, "--quiet")
    assert proc.returncode == 0, proc.stderr
    back = tmp_path / "q8-back"
    assert lmconv(q8, f"{back}/", "--quiet").returncode == 0  # the weights that very file holds
    assert relative_max_diff(llamacpp_logits(q8, ids), transformers_logits(back, ids)) <= 6e-2


def test_generic_writes_the_generic_file_anyway(state_dict: Path, tmp_path: Path) -> None:
    from gguf import GGUFReader

    proc = lmconv(state_dict, tmp_path / "g.gguf", "--generic")
    assert proc.returncode == 0 and "llama.cpp will not run" in proc.stderr
    names = {t.name for t in GGUFReader(tmp_path / "g.gguf").tensors}
    assert "model.layers.0.self_attn.q_proj.weight" in names  # names kept: the generic GGUF of before


def test_a_gpt2_state_dict_is_recognised_too(tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    save_file(load_file(str(FIXTURES / "tiny-gpt2" / "model.safetensors")), str(tmp_path / "m.safetensors"))
    proc = lmconv(tmp_path / "m.safetensors", tmp_path / "m.gguf")
    assert_one_line_error(proc, 2, "looks like a gpt2-family model", "2 layers", "hidden 64", "n_head")


def test_an_unknown_architecture_stops_before_writing(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    save_file({"encoder.w": np.ones((8, 8), np.float32)}, str(tmp_path / "odd.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["OddModel"], "model_type": "odd"}))
    proc = lmconv(tmp_path / "odd.safetensors", tmp_path / "odd.gguf")
    assert_one_line_error(proc, 2, "'OddModel'", "not one lmconv knows", "llama", "--generic")
    assert not (tmp_path / "odd.gguf").exists()


# ----------------------------------------------------------------------------- --dry-run
@pytest.mark.parametrize("quant", ["q4_k_m", "q8_0"])
def test_dry_run_plans_what_the_real_run_writes(quant: str, tmp_path: Path) -> None:
    from gguf import GGUFReader

    from lmconv.plugins.formats.gguf.ggml_types import dtype_of

    out = tmp_path / "m.gguf"
    plan = lmconv(LLAMA, out, "--quant", quant, "--dry-run", "--json")
    assert plan.returncode == 0, plan.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a staging folder
    doc = json.loads(plan.stdout)
    assert doc["format"] == "gguf" and doc["outputs"] == [str(out)]
    planned = {t["name"]: (t["dtype"], tuple(t["shape"]), t["bytes"]) for t in doc["tensors"]}
    assert lmconv(LLAMA, out, "--quant", quant, "--quiet").returncode == 0
    written = {t.name: (dtype_of(int(t.tensor_type)).name, tuple(int(d) for d in reversed(t.shape)), int(t.n_bytes))
               for t in GGUFReader(out).tensors}
    assert planned == written
    assert doc["totals"]["bytes"] == sum(b for _, _, b in written.values())
    import jsonschema

    jsonschema.validate(doc, json.loads((FIXTURES.parent / "schemas" / "plan.schema.json").read_text()))


def test_dry_run_as_text_names_companions_and_writes_nothing(tmp_path: Path) -> None:
    proc = lmconv(LLAMA, tmp_path / "m.safetensors", "--dtype", "bf16", "--dry-run")
    assert proc.returncode == 0 and list(tmp_path.iterdir()) == []
    lines = proc.stdout.splitlines()
    assert any(ln.startswith("model.embed_tokens.weight") and "bf16" in ln for ln in lines)
    assert any("beside it:" in ln and "tokenizer.json" in ln and "config.json" in ln for ln in lines)
    assert lines[-1] == "dry run: nothing was written"


# ----------------------------------------------------------------------------- models by hub id
def _hub_cache(root: Path, repo: str, files: Path, commit: str, branch: str = "main") -> Path:
    """A cache as huggingface_hub lays it out: blobs named by hash, snapshots/<commit>/ of links to
    them, refs/<branch> holding the commit."""
    import hashlib

    base = root / ("models--" + repo.replace("/", "--"))
    (base / "blobs").mkdir(parents=True)
    (base / "refs").mkdir()
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in sorted(files.iterdir()):
        data = f.read_bytes()
        blob = hashlib.sha256(data).hexdigest()
        (base / "blobs" / blob).write_bytes(data)
        (snap / f.name).symlink_to(Path("..") / ".." / "blobs" / blob)
    (base / "refs" / branch).write_text(commit)
    return snap


def test_a_model_by_hub_id_from_the_cache(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    _hub_cache(cache, "tiny-org/tiny-llama", LLAMA, commit)
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    for spec in ("tiny-org/tiny-llama", f"tiny-org/tiny-llama@{commit}", "tiny-org/tiny-llama@main"):
        out = tmp_path / f"{spec.replace('/', '_').replace('@', '_')}.safetensors"
        proc = lmconv(spec, out, "--quiet", env=env, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert out.read_bytes() == (LLAMA / "model.safetensors").read_bytes()
    proc = lmconv("inspect", "tiny-org/tiny-llama", "--json", env=env, cwd=tmp_path)
    assert json.loads(proc.stdout)["family"] == "llama"
    missing = lmconv("tiny-org/nothing-here", tmp_path / "x.gguf", env=env, cwd=tmp_path)
    assert_one_line_error(missing, 3, "tiny-org/nothing-here", "not in the Hugging Face cache", "HF_HUB_OFFLINE")
    wrong_rev = lmconv("tiny-org/tiny-llama@v9", tmp_path / "x.gguf", env=env, cwd=tmp_path)
    assert_one_line_error(wrong_rev, 3, "tiny-org/tiny-llama@v9")


# ----------------------------------------------------------------------------- general.* keys
CARD = """---
license: apache-2.0
base_model: meta-llama/Llama-3.2-1B
tags:
- text-generation
- tiny
language:
- en
- fr
datasets:
- wikitext
---
# Tiny Llama

A tiny test model.
"""


def test_general_keys_match_llama_cpp_converter(tmp_path: Path) -> None:
    from gguf import GGUFReader

    from tests.families.support import reference_gguf

    folder = tmp_path / "Tiny-Llama-3.2-1B-Instruct"
    shutil.copytree(LLAMA, folder)
    (folder / "README.md").write_text(CARD)
    ref = reference_gguf(folder, tmp_path / "ref.gguf", pre="llama-bpe")
    ours = tmp_path / "ours.gguf"
    assert lmconv(folder, ours, "--quiet").returncode == 0

    def general(path: Path) -> dict[str, object]:
        fields = GGUFReader(path).fields
        return {k: f.contents() for k, f in fields.items() if k.startswith("general.") and k != "general.quantization_version"}

    want, got = general(ref), general(ours)
    assert want["general.license"] == "apache-2.0" and "general.base_model.0.name" in want  # the card was read
    assert got == want
    # --metadata overrides any of them
    override = tmp_path / "meta.json"
    override.write_text(json.dumps({"general.name": "Renamed", "general.license": "mit"}))
    again = tmp_path / "again.gguf"
    assert lmconv(folder, again, "--metadata", override, "--quiet").returncode == 0
    got = general(again)
    assert got["general.name"] == "Renamed" and got["general.license"] == "mit"
    assert os.path.getsize(again) > 0
