"""Shared fixtures and helpers of the core tests.

Outputs are always read back with the reference libraries (``safetensors``,
``torch.load(weights_only=True)``, transformers), never with lmconv's own
readers, so that a reader bug cannot hide a writer bug. CLI behaviour (exit
codes, stdout, stderr) is checked on a real subprocess; conversions whose
result is what matters run in-process through ``lmconv.cli.main`` for speed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
SCHEMAS = ROOT / "schemas"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "tokenizer.model", "added_tokens.json", "chat_template.jinja")
STAGING_PREFIX = ".lmconv-tmp-"

# (torch dtype name, shape, raw bytes)
Raw = tuple[str, tuple[int, ...], bytes]


def _fixture(name: str) -> Path:
    path = FIXTURES / name
    assert (path / "config.json").is_file() and any(path.glob("*.safetensors")), (
        f"{path} is missing: generate the fixtures with fixtures/make_fixtures.py"
    )
    return path


@pytest.fixture(scope="session")
def tiny_llama() -> Path:
    """fixtures/tiny-llama: an HF folder (f32 safetensors, config.json, tokenizer files)."""
    return _fixture("tiny-llama")


@pytest.fixture(scope="session")
def tiny_gpt2() -> Path:
    """fixtures/tiny-gpt2: an HF folder whose lm_head is tied to transformer.wte."""
    return _fixture("tiny-gpt2")


# ----------------------------------------------------------------------------- running lmconv
def lmconv(*args: object, cwd: Path | None = None, env: dict[str, str] | None = None,
           timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m lmconv ARGS`` in a subprocess: real exit code, stdout and stderr."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("LMCONV_DISABLE_PLUGINS", "LMCONV_DEBUG")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "lmconv", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def run(*args: object) -> None:
    """A conversion in-process (fast); it must succeed."""
    from lmconv.cli import main

    code = main([str(a) for a in args] + ["--quiet"])
    assert code == 0, f"lmconv {' '.join(map(str, args))} exited {code}"


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int, *mentions: str) -> str:
    """The CLI error contract: exit ``code``, nothing on stdout, exactly one stderr line."""
    lines = proc.stderr.splitlines()
    assert proc.returncode == code, f"exit {proc.returncode}, wanted {code}; stderr: {proc.stderr!r}"
    assert len(lines) == 1, f"stderr must be one line, got {proc.stderr!r}"
    assert lines[0].startswith("lmconv: error:"), lines[0]
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    for m in mentions:
        assert m in lines[0], f"{m!r} not in {lines[0]!r}"
    return lines[0]


def folder_state(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` (hidden ones too) with its bytes (None for folders)."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def staging_leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(STAGING_PREFIX)]


# ----------------------------------------------------------------------------- reading back
def _raw(t: Any) -> Raw:
    import torch

    flat = t.detach().contiguous().reshape(-1)
    return (str(t.dtype).removeprefix("torch."), tuple(t.shape), flat.view(torch.uint8).numpy().tobytes())


def raw_tensors(path: Path) -> dict[str, Raw]:
    """Every tensor (aliases of a tie included) of a file, index or HF folder, read with the reference libraries."""
    import torch
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        for name in ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json", "pytorch_model.bin"):
            if (path / name).is_file():
                return raw_tensors(path / name)
        raise AssertionError(f"{path} holds no weights")
    if path.name.endswith(".index.json"):
        weight_map = json.loads(path.read_text("utf-8"))["weight_map"]
        out: dict[str, Raw] = {}
        for shard in dict.fromkeys(weight_map.values()):
            part = raw_tensors(path.parent / shard)
            assert not set(part) & set(out), f"{shard} repeats tensors of another shard"
            out.update(part)
        assert set(out) == set(weight_map), "the index must name exactly the tensors the shards hold"
        return out
    if path.name.endswith(".safetensors"):
        with safe_open(str(path), framework="pt") as f:
            out = {k: _raw(f.get_tensor(k)) for k in f.keys()}  # noqa: SIM118 (safe_open is not a Mapping)
            meta = f.metadata() or {}
        for alias, target in json.loads(meta.get("lmconv.aliases", "{}")).items():
            out[alias] = out[target]
        return out
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: _raw(v) for k, v in state.items()}


def safetensors_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def companion_bytes(folder: Path) -> dict[str, bytes]:
    """config.json, generation_config.json and the tokenizer files of a folder."""
    names = ("config.json", "generation_config.json", *TOKENIZER_FILES)
    return {n: (folder / n).read_bytes() for n in names if (folder / n).is_file()}


def copy_companions(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name, data in companion_bytes(src).items():
        (dst / name).write_bytes(data)


def logits(model_dir: Path, n_tokens: int = 24) -> Any:
    """transformers' logits for fixed token ids (f32, eval mode)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    vocab = model.config.vocab_size
    ids = torch.tensor([[(7 * i + 3) % vocab for i in range(n_tokens)]])
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture
def fresh_registry() -> Any:
    """Rebuild the plugin registry before and after a test that changes plugins."""
    from lmconv.registry import reset_registry

    reset_registry()
    yield
    reset_registry()


def copytree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ----------------------------------------------------------------------------- third-party plugins
def write_dist(root: Path, entry_points: dict[str, str], *, dist: str = "thirdparty",
               modules: dict[str, str] | None = None) -> Path:
    """A distribution ``dist`` 1.2.3 installed into ``root`` as pip would leave it: a ``*.dist-info``
    folder whose ``entry_points.txt`` names ``entry_points`` (plugin name → module) in the ``lmconv``
    group, and the ``modules`` (name → source) beside it. Put ``root`` on ``sys.path``/``PYTHONPATH``."""
    root.mkdir(parents=True, exist_ok=True)
    info = root / f"{dist.replace('-', '_')}-1.2.3.dist-info"  # as pip names it: the name is up to the first "-"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    for name, source in (modules or {}).items():
        (root / f"{name}.py").write_text(source)
    lines = ["[lmconv]", *(f"{name} = {module}" for name, module in entry_points.items())]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return root


# ----------------------------------------------------------------------------- no silent skips
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A skipped test proves nothing: every skip fails the run, with its reason (install what the test
    needs instead). Strict xfails (the conformance kit's known failures) are not skips and stay."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped tests fail lmconv's suite: {reason}"
