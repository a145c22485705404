"""Plugins: the built-ins come through entry points like any other, and a bad plugin cannot take lmconv down.

Third-party plugins are real distributions here: a ``*.dist-info`` folder with an
``entry_points.txt`` in the ``lmconv`` group, put on ``sys.path`` (in-process) or
``PYTHONPATH`` (subprocess), exactly as ``pip install`` would leave them.
"""

from __future__ import annotations

import itertools
import json
import textwrap
from pathlib import Path

import pytest

from tests.conftest import assert_one_line_error, lmconv, raw_tensors, run, write_dist

BUILTINS = {"safetensors": "format:safetensors", "pytorch": "format:pytorch", "hf": "format:hf", "gguf": "format:gguf",
            "tf": "format:tf", "h5": "format:h5", "quantizers": "quantizer:q8_0", "llama": "architecture:llama",
            "gpt2": "architecture:gpt2"}

_GOOD_FORMAT = """
from lmconv.hookspecs import hookimpl
from lmconv.formats import Format


class Toy(Format):
    name = "{fmt}"
    extensions = (".{fmt}",)
    description = "a toy format"
    can_read = False


@hookimpl
def register_formats(register):
    register(Toy())
"""

PLUGINS = {
    "good": _GOOD_FORMAT.format(fmt="toy"),
    "good2": _GOOD_FORMAT.format(fmt="toy"),  # claims the same name as "good"
    "stealer": _GOOD_FORMAT.format(fmt="safetensors"),  # claims a built-in's name
    "bad_import": "import lmconv_no_such_dependency_xyz\n",
    "bad_hook": textwrap.dedent("""
        from lmconv.hookspecs import hookimpl

        @hookimpl
        def register_formats(register):
            raise RuntimeError("hook exploded on purpose")
    """),
}
_counter = itertools.count()


def make_dist(root: Path, *plugins: str, dist: str = "thirdparty") -> Path:
    """A distribution ``dist`` 1.2.3 whose ``lmconv`` entry points are ``plugins`` (modules named uniquely)."""
    modules = {name: f"lmconv_test_{name}_{next(_counter)}" for name in plugins}
    return write_dist(root, modules, dist=dist, modules={m: PLUGINS[name] for name, m in modules.items()})


@pytest.fixture
def registry_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_registry: None):  # type: ignore[no-untyped-def]
    """Build the registry with some third-party plugins installed on sys.path."""
    import importlib

    from lmconv.registry import build_registry

    def build(*plugins: str, disable: str = ""):  # type: ignore[no-untyped-def]
        root = make_dist(tmp_path / f"site{next(_counter)}", *plugins)
        monkeypatch.syspath_prepend(str(root))
        importlib.invalidate_caches()
        monkeypatch.setenv("LMCONV_DISABLE_PLUGINS", disable)
        return build_registry()

    return build


def test_builtins_come_from_the_lmconv_distribution(registry_with) -> None:  # type: ignore[no-untyped-def]
    reg = registry_with()
    by_name = {p.name: p for p in reg.plugins}
    for name, provided in BUILTINS.items():
        assert by_name[name].status == "ok", by_name[name].error
        assert by_name[name].distribution == "lmconv"
        assert provided in by_name[name].provides
    assert {"safetensors", "pytorch", "hf", "gguf"} <= set(reg.formats)


def test_broken_plugins_are_reported_and_the_rest_works(registry_with) -> None:  # type: ignore[no-untyped-def]
    reg = registry_with("bad_import", "bad_hook", "good")
    by_name = {p.name: p for p in reg.plugins}
    assert by_name["bad_import"].status == "broken" and "ModuleNotFoundError" in by_name["bad_import"].error
    assert "lmconv_no_such_dependency_xyz" in by_name["bad_import"].error
    assert by_name["bad_hook"].status == "broken" and "hook exploded on purpose" in by_name["bad_hook"].error
    assert by_name["bad_hook"].error.startswith("register_formats")
    assert by_name["good"].status == "ok" and by_name["good"].distribution == "thirdparty"
    assert reg.formats["toy"].plugin == "good"
    assert all(by_name[n].status == "ok" for n in BUILTINS)


def test_disabled_plugins(registry_with) -> None:  # type: ignore[no-untyped-def]
    reg = registry_with("good", disable="good, pytorch")
    by_name = {p.name: p for p in reg.plugins}
    assert by_name["good"].status == "disabled" and by_name["pytorch"].status == "disabled"
    assert "toy" not in reg.formats and "pytorch" not in reg.formats
    assert "safetensors" in reg.formats


@pytest.mark.parametrize("clash", [("good", "good2"), ("stealer",)], ids=["two-third-party", "steals-a-builtin"])
def test_two_plugins_claiming_one_format_name(registry_with, clash: tuple[str, ...]) -> None:  # type: ignore[no-untyped-def]
    from lmconv.errors import UsageError

    with pytest.raises(UsageError) as info:
        registry_with(*clash)
    msg = str(info.value)
    both = clash if len(clash) == 2 else ("safetensors", "stealer")
    for name in both:
        assert name in msg
    assert "LMCONV_DISABLE_PLUGINS" in msg


# ----------------------------------------------------------------------------- through the CLI
def test_cli_lists_builtins_with_their_package() -> None:
    plugins = lmconv("plugins")
    assert plugins.returncode == 0 and plugins.stderr == ""
    for name in BUILTINS:
        line = next((ln for ln in plugins.stdout.splitlines() if ln.startswith(name + " ")), "")
        assert " ok " in line and "lmconv" in line, f"{name}: {line!r}"
    rows = {r["name"]: r for r in json.loads(lmconv("plugins", "--json").stdout)}
    assert all(rows[n]["distribution"] == "lmconv" and rows[n]["status"] == "ok" for n in BUILTINS)
    assert Path(rows["safetensors"]["source"]).name == "formats"
    formats = lmconv("formats")
    assert formats.returncode == 0 and formats.stderr == ""
    for fmt in ("safetensors", "pytorch", "hf", "gguf"):
        line = next(ln for ln in formats.stdout.splitlines() if ln.startswith(fmt + " "))
        assert f"plugin {fmt} from lmconv" in line, line


def test_cli_with_broken_plugins_installed(tmp_path: Path, tiny_llama: Path) -> None:
    site = make_dist(tmp_path / "site", "bad_import", "bad_hook", "good")
    env = {"PYTHONPATH": str(site)}
    plugins = lmconv("plugins", env=env)
    assert plugins.returncode == 0 and "Traceback" not in plugins.stderr
    lines = plugins.stdout.splitlines()
    bad = next(ln for ln in lines if ln.startswith("bad_import "))
    assert "broken" in bad and "thirdparty" in bad and "lmconv_no_such_dependency_xyz" in bad
    hook = next(ln for ln in lines if ln.startswith("bad_hook "))
    assert "broken" in hook and "hook exploded on purpose" in hook
    formats = lmconv("formats", env=env)
    assert "toy " in formats.stdout and "plugin good from thirdparty 1.2.3" in formats.stdout
    # the built-ins keep converting
    proc = lmconv(tiny_llama, tmp_path / "out.safetensors", "--quiet", env=env)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert raw_tensors(tmp_path / "out.safetensors") == raw_tensors(tiny_llama)


def test_cli_disable_env(tmp_path: Path, tiny_llama: Path) -> None:
    run(tiny_llama, tmp_path / "m.pt")
    proc = lmconv("inspect", tmp_path / "m.pt", env={"LMCONV_DISABLE_PLUGINS": "pytorch"})
    assert_one_line_error(proc, 3, "m.pt")
    listing = lmconv("plugins", env={"LMCONV_DISABLE_PLUGINS": "pytorch"})
    assert next(ln for ln in listing.stdout.splitlines() if ln.startswith("pytorch ")).split()[1] == "disabled"
    assert lmconv("inspect", tmp_path / "m.pt", "--json").returncode == 0


def test_cli_format_name_clash_is_one_clear_line(tmp_path: Path, tiny_llama: Path) -> None:
    site = make_dist(tmp_path / "site", "good", "good2")
    for args in (("formats",), (tiny_llama, tmp_path / "x.safetensors")):
        proc = lmconv(*args, env={"PYTHONPATH": str(site)})
        line = assert_one_line_error(proc, 2, "good", "good2", "toy")
        assert "two plugins" in line
    assert not (tmp_path / "x.safetensors").exists()
    ok = lmconv("formats", env={"PYTHONPATH": str(site), "LMCONV_DISABLE_PLUGINS": "good2"})
    assert ok.returncode == 0 and "plugin good from thirdparty" in ok.stdout
