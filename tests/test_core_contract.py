"""The core knows no format and no family: what it must not contain, and what a plugin can add to it.

The first half reads the source: the core (``convert/``) imports neither gguf-py nor any plugin,
names no model family, has no import cycle and no module much over 500 lines; no plugin imports
another. The second half installs ``tests/plugins/lmconv_contract_plugin.py`` as a third-party
distribution and drives it through the command line only: a family gguf-py does not know goes
to GGUF and back and runs its own forward pass in ``verify --logits``; a quantiser with a block
type nobody else declares is verified against the bound it states; a plugin's option shows in
``--help`` and reaches its writer typed.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import ROOT, assert_one_line_error, lmconv, write_dist

CORE = ROOT / "convert"
PLUGINS = ROOT / "plugins"
CONTRACT_PLUGIN = ROOT / "tests" / "plugins"


def _py_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    parts[0] = {"convert": "lmconv", "plugins": "lmconv.plugins"}[parts[0]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _top_level_imports(path: Path) -> list[str]:
    """Absolute names of the modules ``path`` imports at module level (not inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(max(0, node.level - 1)):
                base = base.rpartition(".")[0]
            mod = f"{base}.{node.module}" if node.level and node.module else (base if node.level else node.module or "")
            out.append(mod)
            out += [f"{mod}.{a.name}" for a in node.names]  # "from . import x" imports module x
    return out


def _all_imports(path: Path) -> list[str]:
    """Every import statement's module, wherever it is (function-level ones included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append(node.module)
    return out


# ============================================================================ the core, read
def test_core_imports_neither_gguf_nor_a_plugin() -> None:
    for path in _py_files(CORE):
        for mod in _all_imports(path):
            assert not re.match(r"(gguf|lmconv\.plugins)(\.|$)", mod), f"{path.relative_to(ROOT)} imports {mod}"
    # and at run time: every core module imported, no format library or plugin came along
    script = (
        "import importlib, pkgutil, sys, lmconv\n"
        "for m in pkgutil.walk_packages(lmconv.__path__, 'lmconv.'):\n"
        "    if not m.name.startswith('lmconv.plugins') and m.name not in ('lmconv.__main__', 'lmconv.testing'):\n"
        "        importlib.import_module(m.name)\n"
        "bad = sorted(n for n in sys.modules if n == 'gguf' or n.startswith(('gguf.', 'lmconv.plugins')))\n"
        "print(','.join(bad))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"importing the core loaded {proc.stdout.strip()}"


def _family_words() -> set[str]:
    from lmconv.registry import get_registry

    words: set[str] = set()
    for arch in get_registry().architectures.values():
        words |= {arch.name, *arch.hf_architectures, *arch.model_types}
        words |= {lay.arch for lay in arch.layouts().values()}
    return {w for w in words if w}


def test_no_core_module_names_a_family() -> None:
    words = _family_words()  # the names, HF classes and model types of the installed families, and
    # their names in other formats; "llama.cpp" and its tools are programs, not the family
    assert {"llama", "gpt2", "LlamaForCausalLM"} <= words
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(words, key=len, reverse=True))) + r")\b(?![.\-_](cpp|quantize|imatrix))",
                         re.IGNORECASE)
    for path in _py_files(CORE):
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            m = pattern.search(line)
            assert m is None, f"{path.relative_to(ROOT)}:{i} names the family {m.group(0)!r}: {line.strip()}"


def test_core_import_graph_has_no_cycle() -> None:
    modules = {_module_name(p): p for p in _py_files(CORE)}
    graph = {m: sorted({i for i in _top_level_imports(p) if i in modules and i != m}) for m, p in modules.items()}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in graph[m]:
            if state.get(n) == 1:
                cycle = path[path.index(n):] + [n] if n in path else [m, n]
                raise AssertionError("import cycle: " + " → ".join(cycle))
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


def test_core_modules_are_small() -> None:
    big = {str(p.relative_to(ROOT)): n for p in _py_files(CORE)
           if (n := len(p.read_text(encoding="utf-8").splitlines())) > 520}
    assert not big, f"core modules over about 500 lines: {big}"


def test_no_plugin_imports_another() -> None:
    """A plugin module imports only modules of its own package (a plugin's library) and the core."""
    for path in _py_files(PLUGINS):
        me = _module_name(path)
        own = me if path.name == "__init__.py" else me.rpartition(".")[0]
        for mod in _top_level_imports(path) + _all_imports(path):
            if mod.startswith("lmconv.plugins.") and not (mod == own or mod.startswith(own + ".")):
                pytest.fail(f"{path.relative_to(ROOT)} imports {mod}, outside its own package {own}")


def test_disabling_a_plugin_disables_it_everywhere(tmp_path: Path, tiny_llama: Path) -> None:
    """The HF folder reads its weights through the registry: with safetensors disabled it cannot, and says so."""
    env = {"LMCONV_DISABLE_PLUGINS": "safetensors"}
    proc = lmconv(tiny_llama, tmp_path / "out.gguf", env=env)
    assert_one_line_error(proc, 2, "safetensors plugin")
    script = ("import sys\nfrom lmconv.cli import main\nmain(['formats'])\n"
              "print([m for m in sys.modules if m.startswith('lmconv.plugins.formats.safetensors')])\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **env})
    assert out.stdout.strip().endswith("[]") and not re.search(r"^safetensors ", out.stdout, re.M), out.stdout


# ============================================================================ a third-party plugin
@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    site = write_dist(tmp_path_factory.mktemp("site"), {"contract": "lmconv_contract_plugin"}, dist="lmconv-contract")
    return {"PYTHONPATH": os.pathsep.join([str(site), str(CONTRACT_PLUGIN)])}


CONFIG = {"architectures": ["ToyMlpForCausalLM"], "model_type": "toymlp", "vocab_size": 40, "hidden_size": 32,
          "num_hidden_layers": 2, "num_experts": 3, "rms_norm_eps": 1e-5, "toy_scale": 0.75}


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An HF folder of the toy family: config.json and f32 safetensors from a fixed seed."""
    from safetensors.numpy import save_file

    folder = tmp_path_factory.mktemp("toy")
    rng = np.random.default_rng(7)
    h, v = CONFIG["hidden_size"], CONFIG["vocab_size"]
    weights = {"embed.weight": rng.standard_normal((v, h)), "head.weight": rng.standard_normal((v, h)) * 0.3}
    for i in range(CONFIG["num_hidden_layers"]):
        weights[f"layers.{i}.norm.weight"] = 1 + 0.3 * rng.standard_normal(h)
        weights[f"layers.{i}.proj.weight"] = rng.standard_normal((h, h)) * 0.2
        for e in range(CONFIG["num_experts"]):
            weights[f"layers.{i}.experts.{e}.weight"] = rng.standard_normal((h, h)) * 0.2
    save_file({k: np.ascontiguousarray(a, dtype=np.float32) for k, a in weights.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(CONFIG))
    return folder


def _gguf(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    from gguf import GGUFReader

    reader = GGUFReader(path)
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    kv = {k: f.contents() for k, f in reader.fields.items()}
    return tensors, kv


def test_a_family_gguf_py_does_not_know(toy: Path, tmp_path: Path, plugin_env: dict[str, str]) -> None:
    from safetensors.numpy import load_file

    families = lmconv("families", env=plugin_env)
    assert families.returncode == 0 and re.search(r"^toymlp .*ToyMlpForCausalLM.*gguf:toymlp.*forward", families.stdout, re.M)
    out = tmp_path / "toy.gguf"
    proc = lmconv(toy, out, "--quiet", "--generic", env=plugin_env)  # no tokenizer: llama.cpp could not run it
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    src = load_file(str(toy / "model.safetensors"))
    tensors, kv = _gguf(out)
    assert kv["general.architecture"] == "toymlp" and kv["toymlp.expert_count"] == 3 and kv["toymlp.block_count"] == 2
    stacked = tensors["blk.1.ffn_up_exps.weight"]
    assert stacked.shape == (3, 32, 32)
    assert np.array_equal(stacked, np.stack([src[f"layers.1.experts.{e}.weight"] for e in range(3)]))  # N → 1
    assert np.array_equal(tensors["blk.0.ffn_down.weight"], src["layers.0.proj.weight"].T)  # transposed
    assert np.array_equal(tensors["blk.0.attn_norm.weight"], src["layers.0.norm.weight"] + np.float32(1))  # shifted
    assert np.all(tensors["toy_scale.weight"] == np.float32(0.75))  # generated from the config
    assert "lm_head.weight" not in tensors and "head.weight" not in tensors

    # back to an HF folder: exact rules bit-exact, the lossy shift within its bound, the config folded back
    back = tmp_path / "back"
    proc = lmconv(out, f"{back}/", "--quiet", env=plugin_env)
    assert proc.returncode == 0, proc.stderr
    again = load_file(str(back / "model.safetensors"))
    assert set(again) == set(src)
    for name, arr in src.items():
        if ".norm." in name:
            assert np.max(np.abs(again[name] - arr)) <= 2.1 * 2.0**-24 * (np.max(np.abs(arr)) + 1)
        else:
            assert again[name].tobytes() == arr.tobytes(), name
    config = json.loads((back / "config.json").read_text())
    assert config["toy_scale"] == 0.75 and config["num_experts"] == 3

    # GGUF → HF → GGUF keeps every stored tensor bit for bit (the shift is not redone)
    out2 = tmp_path / "again.gguf"
    assert lmconv(back, out2, "--quiet", "--generic", env=plugin_env).returncode == 0
    tensors2, _ = _gguf(out2)
    assert all(tensors2[n].tobytes() == a.tobytes() for n, a in tensors.items())

    # verify: the shift's bound is known; --logits runs the family's own forward pass on both sides
    proc = lmconv("verify", toy, out, "--logits", "--json", env=plugin_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    steps = {t["name"]: t["steps"] for t in report["tensors"]}
    assert steps["layers.0.norm.weight"] == ["shift:1.0"] and steps["layers.0.proj.weight"] == []
    lg = report["logits"]
    assert lg["runtime_a"] == lg["runtime_b"] == "numpy" and lg["rel_max_diff"] < 1e-5


def test_the_toy_forward_pass_is_the_family_s(toy: Path, plugin_env: dict[str, str]) -> None:
    """``verify --logits`` runs what the plugin computes: checked here against the same maths written out."""
    from safetensors.numpy import load_file

    script = (
        "import json, sys, numpy as np\n"
        "from lmconv import read_model\nfrom lmconv.verify.logits import forward\n"
        f"print(json.dumps(forward(read_model({str(toy)!r}), [1, 5, 9, 30], dtype=np.float64).tolist()))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **plugin_env})
    assert proc.returncode == 0, proc.stderr
    got = np.array(json.loads(proc.stdout))
    w = {k: v.astype(np.float64) for k, v in load_file(str(toy / "model.safetensors")).items()}
    h = w["embed.weight"][[1, 5, 9, 30]]
    for i in range(2):
        x = h / np.sqrt(np.mean(h * h, axis=-1, keepdims=True) + 1e-5) * w[f"layers.{i}.norm.weight"]
        y = np.mean([(z := x @ w[f"layers.{i}.experts.{e}.weight"].T) / (1 + np.exp(-z)) for e in range(3)], axis=0)
        h = h + y @ w[f"layers.{i}.proj.weight"]
    want = 0.75 * h @ w["head.weight"].T
    assert np.max(np.abs(got - want)) <= 1e-9 * np.max(np.abs(want))


def test_a_quantiser_with_a_new_block_type_and_its_bound(toy: Path, tmp_path: Path, plugin_env: dict[str, str]) -> None:
    out = tmp_path / "toy.toyblk"
    proc = lmconv(toy, out, "--quant", "toy8", "--toy-note", "7", "--quiet", env=plugin_env)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    header = json.loads(out.read_bytes().split(b"\n", 1)[0])
    assert header["note"] == 7 and header["note_type"] == "int"  # the option arrived typed
    assert {d for _, d, shape in header["tensors"] if len(shape) == 2} == {"toy8"}

    proc = lmconv("verify", toy, out, "--json", env=plugin_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    lossy = [t for t in report["tensors"] if t["steps"]]
    assert lossy and all(t["steps"] == ["quant:toy8"] and t["status"] == "within" for t in lossy)
    assert all(t["bound"] and "max|a|/16" in t["bound"] for t in lossy)  # the plugin's own bound
    # a bound too tight for the type: verification fails, naming it
    tight = lmconv("verify", toy, out, "--quiet", env={**plugin_env, "TOY_BOUND_SCALE": "0.05"})
    line = assert_one_line_error(tight, 6, str(out))
    assert "exceeds its quant:toy8 bound" in line


def test_a_plugin_option_shows_in_help(plugin_env: dict[str, str]) -> None:
    proc = lmconv("convert", "--help", env=plugin_env)
    assert proc.returncode == 0
    assert re.search(r"--toy-note INT\s+A number the toyblk writer records", proc.stdout)
    assert "[plugin: contract]" in proc.stdout
    bad = lmconv("a", "b.toyblk", "--toy-note", "seven", env=plugin_env)
    assert_one_line_error(bad, 2, "--toy-note")


def test_a_lossy_rule_of_a_plugin_is_verified_against_its_own_bound() -> None:
    """A Map rule that rounds states its bound; verification finds it by the step's name."""
    from lmconv.bounds import Bound
    from lmconv.ir import Model, tensor_from_array
    from lmconv.rule_engine import apply_forward, apply_inverse
    from lmconv.rules import Map
    from lmconv.verify import verify_models

    def down(arrays: list[np.ndarray], config: Any) -> list[np.ndarray]:
        return [arrays[0].astype(np.float16).astype(np.float32)]

    rule = Map(["w"], ["w_half"], down, down, name="half", bound=Bound("half:w", rel=2.0**-11, abs=2.0**-25))
    a = Model(config={})
    a.add(tensor_from_array("w", np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)))
    stored, _ = apply_forward([rule], list(a), {})
    back, _, _ = apply_inverse([rule], stored, {})
    b = Model(config={}, tensors={t.name: t for t in back})
    report = verify_models(a, b)
    (t,) = report.tensors
    assert t.steps == ["half:w"] and t.status == "within" and report.ok
    tight = Map(["w"], ["w_half"], down, down, name="half", bound=Bound("half:w", rel=2.0**-20))
    back, _, _ = apply_inverse([tight], apply_forward([tight], list(a), {})[0], {})
    assert not verify_models(a, Model(config={}, tensors={t.name: t for t in back})).ok
