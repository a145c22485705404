"""``lmconv inspect``: the JSON manifest validates against its schema and tells the truth about the file."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.conftest import SCHEMAS, lmconv, raw_tensors, run


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / "model-manifest.schema.json").read_text("utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture(scope="module")
def inputs(tiny_llama: Path, tiny_gpt2: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import torch
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("manifest")
    (folder / "st").mkdir()
    run(tiny_llama, folder / "st" / "m.safetensors")
    (folder / "pt").mkdir()
    run(tiny_llama, folder / "pt" / "m.pt")
    (folder / "sharded").mkdir()
    run(tiny_llama, folder / "sharded" / "m.safetensors", "--max-shard-size", "20KB")
    state = AutoModelForCausalLM.from_pretrained(str(tiny_gpt2), dtype=torch.float32).state_dict()
    torch.save(state, folder / "gpt2-tied.pt")  # lone, no config beside it: tokenizer null, architecture null
    return {"safetensors": folder / "st" / "m.safetensors", "pt": folder / "pt" / "m.pt", "hf-llama": tiny_llama,
            "hf-gpt2": tiny_gpt2, "index": folder / "sharded" / "m.safetensors.index.json",
            "pt-tied": folder / "gpt2-tied.pt"}


def _inspect_json(path: Path) -> dict[str, Any]:
    proc = lmconv("inspect", path, "--json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return json.loads(proc.stdout)


@pytest.mark.parametrize("kind", ["safetensors", "pt", "hf-llama", "hf-gpt2", "index", "pt-tied"])
def test_inspect_json_validates_and_matches_the_file(kind: str, inputs: dict[str, Path],
                                                      validator: jsonschema.Draft202012Validator) -> None:
    path = inputs[kind]
    man = _inspect_json(path)
    errors = sorted(validator.iter_errors(man), key=str)
    assert not errors, "; ".join(e.message for e in errors)

    expected_format = {"safetensors": "safetensors", "index": "safetensors", "pt": "pytorch", "pt-tied": "pytorch"}.get(kind, "hf")
    assert man["format"] == expected_format
    raw = raw_tensors(path)  # read by the reference libraries, ties expanded
    names = [t["name"] for t in man["tensors"]]
    aliases = [a for t in man["tensors"] for a in t["aliases"]]
    assert sorted(names + aliases) == sorted(raw), "every tensor exactly once, ties as aliases"
    for t in man["tensors"]:
        assert tuple(t["shape"]) == raw[t["name"]][1]
        assert t["bytes"] == len(raw[t["name"]][2])
        assert t["dtype"] == {"float32": "f32", "float16": "f16", "bfloat16": "bf16", "int64": "i64"}[raw[t["name"]][0]]
    tot = man["totals"]
    assert tot["tensors"] == len(man["tensors"]) and tot["bytes"] == sum(t["bytes"] for t in man["tensors"])
    assert tot["parameters"] == sum(len(raw[n][2]) // 4 for n in names)  # all f32
    if kind == "pt-tied":
        assert man["architecture"] is None and man["tokenizer"] is None
        assert {a for t in man["tensors"] for a in t["aliases"]} == {"lm_head.weight"}
    else:
        arch = json.loads((path if path.is_dir() else path.parent).joinpath("config.json").read_text())["architectures"][0]
        assert man["architecture"] == arch
        assert man["tokenizer"] is not None and "tokenizer.json" in man["tokenizer"]["files"]


def test_schema_rejects_a_broken_manifest(inputs: dict[str, Path], validator: jsonschema.Draft202012Validator) -> None:
    """The validation above can fail: the schema does catch a malformed manifest."""
    good = _inspect_json(inputs["safetensors"])
    for mutate in (lambda m: m.pop("tensors"), lambda m: m["tensors"][0].update(shape=[-1]),
                   lambda m: m["tensors"][0].update(extra=1), lambda m: m["totals"].update(bytes="many"),
                   lambda m: m.update(format="")):
        bad = copy.deepcopy(good)
        mutate(bad)
        assert list(validator.iter_errors(bad)), "schema accepted a broken manifest"


def test_inspect_table_mode(inputs: dict[str, Path]) -> None:
    proc = lmconv("inspect", inputs["pt-tied"], env={"COLUMNS": "200"})
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    man = _inspect_json(inputs["pt-tied"])
    for t in man["tensors"]:
        assert t["name"] in proc.stdout
    assert "lm_head.weight" in proc.stdout  # the alias is shown
    assert f"{man['totals']['tensors']} tensors, {man['totals']['parameters']:,} parameters" in proc.stdout
    proc = lmconv("inspect", inputs["hf-llama"], env={"COLUMNS": "200"})
    assert proc.returncode == 0 and "LlamaForCausalLM" in proc.stdout and "tokenizer:" in proc.stdout


def test_inspect_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "x.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    proc = lmconv("inspect", tmp_path / "x.safetensors", "--json")
    assert proc.returncode == 3 and proc.stdout == "" and len(proc.stderr.splitlines()) == 1
    assert proc.stderr.startswith("lmconv: error:") and "x.safetensors" in proc.stderr
