"""lmconv's own formats pass the conformance kit a plugin author runs (``lmconv.testing``).

One test class per built-in format that ``lmconv formats`` lists — safetensors, pytorch,
gguf, hf, tf, h5, and any built-in added later, as soon as it registers — so a new
built-in format is held to the kit without anyone remembering to add it here. The end
of the file checks that the kit itself bites: deliberately broken formats fail it.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from lmconv.formats import ReadOptions
from lmconv.ir import Model, tensor_from_array
from lmconv.plugins.formats.safetensors import SafetensorsFormat
from lmconv.registry import get_registry
from lmconv.testing import FormatConformance

EXPECTED = {"safetensors", "pytorch", "gguf", "hf", "tf", "h5"}

# Known gaps, run as strict xfails: once one is fixed its test XPASSes and fails, so delete the entry then.
KNOWN_FAILURES: dict[str, dict[str, str]] = {}


def _builtin_formats() -> list[str]:
    reg = get_registry()
    modules = {p.name: p.module for p in reg.plugins}
    # a format that holds LoRA adapters only (peft) is no model container: tests/test_lora.py checks it
    return sorted(n for n, f in reg.formats.items()
                  if modules.get(getattr(f, "plugin", ""), "").startswith("lmconv.plugins.")
                  and not getattr(f, "adapters_only", False))


BUILTINS = _builtin_formats()

for _name in BUILTINS:
    _cls = type(
        f"Test{_name.capitalize()}Conformance",
        (FormatConformance,),
        {"format_name": _name, "known_failures": KNOWN_FAILURES.get(_name, {}), "__module__": __name__},
    )
    globals()[_cls.__name__] = _cls
del _name, _cls


def test_every_builtin_format_is_checked() -> None:
    assert EXPECTED <= set(BUILTINS), f"built-in formats missing from the registry: {sorted(EXPECTED - set(BUILTINS))}"


# --- the kit bites: deliberately broken formats fail the checks that concern them -------------------
class _Fake(SafetensorsFormat):
    """safetensors under another name and extension, sniffed only with that extension."""

    name = "fake"
    extensions = (".fake",)
    description = "a deliberately broken format"

    def sniff(self, path: Path) -> bool:
        return path.suffix == ".fake" and super().sniff(path)


class _Eager(_Fake):
    def read(self, path: Path, options: ReadOptions) -> Model:
        model = super().read(path, options)
        return model.with_tensors([tensor_from_array(t.name, np.array(t._loader()), aliases=t.aliases) for t in model])


class _Crashy(_Fake):
    def read(self, path: Path, options: ReadOptions) -> Model:
        raw = path.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        json.loads(raw[8 : 8 + n])  # a truncated or scrambled header: ValueError, not InputError
        return super().read(path, options)


class _Greedy(_Fake):
    def sniff(self, path: Path) -> bool:
        return True


def _run(monkeypatch: pytest.MonkeyPatch, fmt: _Fake, check: str, tmp_path: Path, **params: object) -> None:
    reg = get_registry()
    fmt.plugin = "safetensors"
    monkeypatch.setattr(reg, "formats", {fmt.name: fmt, **reg.formats})  # first in line when sniffing
    kit = type("Kit", (FormatConformance,), {"format_name": fmt.name})()
    args = {"fmt": fmt, "tmp_path": tmp_path, **params}
    if check == "test_lazy_read":
        args["monkeypatch"] = monkeypatch
    getattr(kit, check)(**args)


def test_kit_passes_a_sound_format(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for check in ("test_lazy_read", "test_sniff_rejects_junk", "test_round_trip", "test_ties"):
        (tmp_path / check).mkdir()
        _run(monkeypatch, _Fake(), check, tmp_path / check)
    _run(monkeypatch, _Fake(), "test_bad_input", tmp_path, damage="truncated-16")


def test_kit_catches_eager_reading(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="read eagerly"):
        _run(monkeypatch, _Eager(), "test_lazy_read", tmp_path)


def test_kit_catches_foreign_exceptions(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(pytest.fail.Exception, match="expected an LmconvError"):
        _run(monkeypatch, _Crashy(), "test_bad_input", tmp_path, damage="truncated-16")


def test_kit_catches_a_greedy_sniff(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="sniff claims"):
        _run(monkeypatch, _Greedy(), "test_sniff_rejects_junk", tmp_path)
