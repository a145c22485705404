"""Following docs/writing-a-plugin.md step by step, in a fresh virtualenv, works.

The tutorial's marked blocks are replayed in order in a temporary folder: a
``tutorial-file`` block writes (or, for a file split over several steps, appends
to) that file; a ``tutorial-shell`` block runs in bash, with ``python``, ``pip``
and ``lmconv`` those of a new virtualenv. The virtualenv sees the packages of the
interpreter running the tests (so torch & co. are not installed again) and pip is
kept offline (no index, no build isolation, no dependency resolution).
``examples/lmconv-npz`` must be exactly the tutorial's files, so neither can rot.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.test_plugin_docs import doc_blocks, doc_files

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "lmconv-npz"
IGNORED = ("__pycache__", ".egg-info", ".pytest_cache", ".hypothesis", "build")


def example_files() -> dict[str, str]:
    out = {}
    for p in sorted(EXAMPLE.rglob("*")):
        rel = p.relative_to(EXAMPLE)
        if p.is_file() and not any(part.endswith(IGNORED) for part in rel.parts):
            out[str(rel)] = p.read_text(encoding="utf-8")
    return out


def test_example_package_is_the_tutorial() -> None:
    tutorial, example = doc_files("tutorial-file"), example_files()
    assert sorted(tutorial) == sorted(example), "examples/lmconv-npz and the tutorial must hold the same files"
    for name, text in tutorial.items():
        assert text == example[name], f"examples/lmconv-npz/{name} differs from docs/writing-a-plugin.md"


def make_venv(where: Path) -> Path:
    """A virtualenv that also sees this interpreter's packages (lmconv, numpy, torch, pytest, pip, setuptools).

    ``--system-site-packages`` alone would expose the *base* interpreter's packages, not those
    of the virtualenv the tests run in (/work/venv, .venv-ci), so a .pth file adds those too.
    """
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(where)], check=True)
    py = where / "bin" / "python"
    child_site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                check=True, capture_output=True, text=True).stdout.strip()
    parents = [p for p in dict.fromkeys(site.getsitepackages() + sys.path)
               if p.endswith(("site-packages", "dist-packages")) and Path(p).is_dir()]
    lines = "".join(f"import site; site.addsitedir({p!r})\n" for p in parents)
    Path(child_site, "zz_lmconv_parent.pth").write_text(lines, encoding="utf-8")
    for tool, module in (("pip", "pip"), ("lmconv", "lmconv")):
        script = where / "bin" / tool
        script.write_text(f'#!/bin/sh\nexec "{py}" -m {module} "$@"\n', encoding="utf-8")
        script.chmod(0o755)
    return where


def tutorial_env(venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("LMCONV_DISABLE_PLUGINS", "LMCONV_DEBUG", "VIRTUAL_ENV", "PYTHONHOME", "PYTEST_ADDOPTS")}
    env.update({
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "VIRTUAL_ENV": str(venv),
        # offline and fast: no index, no isolated build env, no dependency resolution
        "PIP_NO_INDEX": "1", "PIP_NO_DEPS": "1", "PIP_NO_BUILD_ISOLATION": "0", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_INPUT": "1",
    })
    return env


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Replay the tutorial; return the folder it ended in and each shell block's output."""
    assert shutil.which("bash"), "the tutorial's shell steps need bash"
    assert importlib.util.find_spec("pip") and importlib.util.find_spec("setuptools"), "pip and setuptools are needed"
    base = tmp_path_factory.mktemp("tutorial")
    venv = make_venv(base / "venv")
    env = tutorial_env(venv)
    cwd = base / "work"
    cwd.mkdir()
    pwd_file = base / "pwd"
    outputs: list[tuple[str, str]] = []
    written: dict[str, str] = {}
    for kind, name, body in doc_blocks():
        if kind == "tutorial-file":
            assert name
            path = cwd / name
            path.parent.mkdir(parents=True, exist_ok=True)
            text = written[str(path)] + "\n\n" + body if str(path) in written else body
            path.write_text(text, encoding="utf-8")
            written[str(path)] = text
        elif kind == "tutorial-shell":
            script = f"set -e\n{body}\npwd > '{pwd_file}'\n"
            proc = subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
            out = proc.stdout + proc.stderr
            assert proc.returncode == 0, f"tutorial step failed (exit {proc.returncode}):\n{body}\n---\n{out}"
            outputs.append((body, out))
            cwd = Path(pwd_file.read_text().strip())
    return {"cwd": cwd, "outputs": outputs, "venv": venv}


def _output_of(tutorial: dict[str, object], command: str) -> str:
    for body, out in tutorial["outputs"]:  # type: ignore[attr-defined]
        if command in body:
            return out
    raise AssertionError(f"the tutorial never runs {command!r}")


def test_plugin_is_listed(tutorial: dict[str, object]) -> None:
    out = _output_of(tutorial, "lmconv plugins")
    line = next((ln for ln in out.splitlines() if ln.startswith("npz ")), "")
    assert line.split()[:3] == ["npz", "ok", "lmconv-npz"], out
    assert "format:npz, option:--npz-compress" in out


def test_plugin_lives_in_the_tutorial_folder(tutorial: dict[str, object]) -> None:
    venv = tutorial["venv"]
    proc = subprocess.run([Path(str(venv)) / "bin" / "python", "-c", "import lmconv_npz; print(lmconv_npz.__file__)"],
                          capture_output=True, text=True, check=True, env=tutorial_env(Path(str(venv))))
    assert Path(proc.stdout.strip()).parent == tutorial["cwd"]


def test_conversions_are_bit_exact(tutorial: dict[str, object]) -> None:
    from lmconv import read_model
    from lmconv.testing import assert_same
    from lmconv.testing.samples import TIE

    cwd = Path(str(tutorial["cwd"]))
    original = read_model(cwd / "model.safetensors")
    assert len(original) >= 9 and original.tensors[TIE[0]].aliases == (TIE[1],)
    venv = Path(str(tutorial["venv"]))
    check = "from lmconv import read_model; from lmconv.testing import assert_same; " \
            "assert_same(read_model('model.safetensors'), read_model('model.npz'), what='safetensors → npz')"
    proc = subprocess.run([venv / "bin" / "python", "-c", check], cwd=cwd, env=tutorial_env(venv),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert_same(original, read_model(cwd / "back.safetensors"), what="safetensors → npz → safetensors")
    # a generic GGUF keeps every tensor under its name (it cannot record the alias of a tie)
    assert_same(original, read_model(cwd / "model.gguf"), list(original.tensors), what="npz → gguf")
    assert "OK:" in _output_of(tutorial, "lmconv verify")
    with np.load(cwd / "model.npz") as npz:  # and plain numpy reads what the plugin wrote
        assert set(npz.files) == set(original.tensors) | {"__lmconv__.json"}


def test_the_option_reaches_the_writer(tutorial: dict[str, object]) -> None:
    import zipfile

    cwd = Path(str(tutorial["cwd"]))
    for name, method in (("model.npz", zipfile.ZIP_STORED), ("small.npz", zipfile.ZIP_DEFLATED)):
        with zipfile.ZipFile(cwd / name) as zf:
            assert {member.compress_type for member in zf.infolist()} == {method}, name
    assert "OK:" in _output_of(tutorial, "lmconv verify model.safetensors small.npz")
    venv = Path(str(tutorial["venv"]))
    proc = subprocess.run([venv / "bin" / "lmconv", "convert", "--help"], cwd=cwd, env=tutorial_env(venv),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    help_text = " ".join(proc.stdout.split())  # the help wraps at the terminal's width
    assert "--npz-compress npz: deflate the arrays (smaller files, slower to read and write). [plugin: npz]" in help_text


def test_the_kit_passes_in_the_tutorial(tutorial: dict[str, object]) -> None:
    out = _output_of(tutorial, "python -m pytest")
    assert " passed" in out and " failed" not in out and " error" not in out, out
