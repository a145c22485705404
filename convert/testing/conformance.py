"""The checks every format plugin passes: :class:`FormatConformance` (see :mod:`lmconv.testing`)."""

from __future__ import annotations

import contextlib
import re
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import ml_dtypes
import numpy as np
import pytest

from .. import dtypes as dt
from ..errors import LmconvError, MissingDependencyError
from ..formats import Format
from ..ir import Model, Tensor
from ..pipeline import convert, detect_format, read_model
from ..registry import get_registry
from .samples import (
    _TRUNCATIONS,
    DAMAGES,
    SAMPLE_CONFIG,
    SAMPLE_OPTIONS,
    TIE,
    _by_name,
    _fixed,
    _largest_file,
    assert_same,
    compare_models,
    damage_file,
    declared_dtypes,
    sample_array,
    sample_model,
    target_path,
    write_model,
)

@dataclass
class _Alone:
    """What a format keeps of the sample model when it is written and read back on its own."""

    exact: set[str]
    ties: bool
    config: bool
    error: str = ""  # why it could not even do that


_ALONE: dict[tuple[type, str], _Alone] = {}


@contextlib.contextmanager
def _skip_missing() -> Iterator[None]:
    try:
        yield
    except MissingDependencyError as exc:
        pytest.skip(f"missing optional dependency: {exc}")


def _alone(fmt: Format, folder: Path) -> _Alone:
    """Cached per format: a round trip of the sample through ``fmt`` alone, which the checks
    of *another* format use to blame only that other format for what it gets wrong."""
    key = (type(fmt), fmt.name)
    if key not in _ALONE:
        model = sample_model(declared_dtypes(fmt))
        try:
            with _skip_missing():
                write_model(model, target_path(fmt, folder), fmt.name)
                back = read_model(target_path(fmt, folder))
                got = _by_name(back)
                exact = {n for n in _by_name(model) if not compare_models(model, back, [n])}
        except Exception as exc:  # noqa: BLE001 - recorded, and reported by the checks that need it
            _ALONE[key] = _Alone(set(), False, False, f"{type(exc).__name__}: {exc}")
            return _ALONE[key]
        ties = TIE[0] in got and TIE[1] in got and got[TIE[0]] is got[TIE[1]]
        _ALONE[key] = _Alone(exact, ties, back.config == model.config)
    return _ALONE[key]


def _usable(other: Format, folder: Path) -> _Alone:
    """``_alone(other)``, skipping the calling check when ``other`` is broken on its own."""
    found = _alone(other, folder)
    if found.error or not found.exact:
        pytest.skip(f"format {other.name} cannot round-trip the sample on its own "
                    f"({found.error or 'it keeps no tensor exactly'}); its own conformance tests say why")
    return found


def _glob(pattern: str) -> re.Pattern[str]:
    """``*`` matches anything; everything else (brackets included) is literal."""
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")) + r"\Z")


class FormatConformance:
    """Subclass in a test module and set :attr:`format_name`; see the module docstring."""

    #: the format under test, as registered (``lmconv formats``)
    format_name: ClassVar[str] = ""
    #: test id (``*`` as a wildcard) → reason: expected failures, run as strict xfails
    known_failures: ClassVar[dict[str, str]] = {}
    #: bytes of the large tensor used by ``test_lazy_read``
    lazy_tensor_bytes: ClassVar[int] = 16 * 1024 * 1024

    # ---- what a read-only format overrides -------------------------------------------
    def sample_file(self, folder: Path) -> Path | None:
        """A file of this format to read, for formats that cannot write (the default writes one)."""
        return None

    # ---- pytest plumbing -------------------------------------------------------------------
    def pytest_generate_tests(self, metafunc: Any) -> None:
        reg = get_registry()
        if "other_format" in metafunc.fixturenames:
            # a format that holds LoRA adapters only (no model) cannot carry the sample: not an "other" here
            names = [n for n, f in sorted(reg.formats.items()) if n != self.format_name and f.can_write and f.can_read
                     and not getattr(f, "adapters_only", False)]
            metafunc.parametrize("other_format", names)
        if "dtype_name" in metafunc.fixturenames:
            metafunc.parametrize("dtype_name", [d.name for d in dt.PLAIN_DTYPES])
        if "damage" in metafunc.fixturenames:
            metafunc.parametrize("damage", DAMAGES)

    @pytest.fixture(autouse=True)
    def _lmconv_known_failures(self, request: Any) -> None:
        for pattern, reason in self.known_failures.items():
            if _glob(pattern).match(request.node.name):
                request.applymarker(pytest.mark.xfail(reason=reason, strict=True))

    @pytest.fixture
    def fmt(self) -> Format:
        reg = get_registry()
        if not self.format_name:
            pytest.fail(f"{type(self).__name__} must set format_name")
        found = reg.formats.get(self.format_name.lower())
        if found is None:
            status = "; ".join(f"{p.name}: {p.status}{' (' + p.error + ')' if p.error else ''}" for p in reg.plugins)
            pytest.fail(f"format {self.format_name!r} is not registered. Plugins: {status}")
        return found

    # ---- helpers -----------------------------------------------------------------------------
    def _writable(self, fmt: Format) -> None:
        if not fmt.can_write:
            pytest.skip(f"format {fmt.name} cannot be written")
        if not fmt.can_read:
            pytest.skip(f"format {fmt.name} cannot be read back")

    def _sample(self, fmt: Format, folder: Path, model: Model | None = None) -> tuple[Path, Model]:
        """A file of this format and the model it should read back as."""
        if not fmt.can_read:
            pytest.skip(f"format {fmt.name} cannot be read")
        if fmt.can_write:
            model = model if model is not None else sample_model(declared_dtypes(fmt))
            path = target_path(fmt, folder)
            with _skip_missing():
                write_model(model, path, fmt.name)
            return path, model
        path = self.sample_file(folder)
        if path is None:
            pytest.skip(f"format {fmt.name} cannot be written: override sample_file() to test reading")
        with _skip_missing():
            return path, read_model(path)

    # ---- the checks --------------------------------------------------------------------------
    def test_registered(self, fmt: Format) -> None:
        reg = get_registry()
        assert fmt.name == fmt.name.lower() == self.format_name.lower(), "format names are lower-case"
        assert fmt.description.strip(), "describe the format in one line (shown by `lmconv formats`)"
        assert fmt.can_read or fmt.can_write
        assert fmt.is_directory or fmt.extensions, "a file format claims at least one extension"
        for ext in fmt.extensions:
            assert ext.startswith(".") and ext == ext.lower(), f"extension {ext!r}: lower-case, with the dot"
        if fmt.stores_dtypes is not None:
            unknown = set(fmt.stores_dtypes) - {d.name for d in dt.PLAIN_DTYPES}
            assert not unknown, f"stores_dtypes names unknown plain dtypes {sorted(unknown)}"
        info = next((p for p in reg.plugins if p.name == getattr(fmt, "plugin", None)), None)
        assert info is not None and info.status == "ok", f"plugin of {fmt.name}: {info}"

    def test_round_trip(self, fmt: Format, tmp_path: Path) -> None:
        self._writable(fmt)
        path, model = self._sample(fmt, tmp_path, sample_model(declared_dtypes(fmt), tie=False))
        with _skip_missing():
            back = read_model(path)
        assert_same(model, back, what=f"{fmt.name} → {fmt.name}")
        assert back.config == model.config, f"the config did not survive: {back.config!r}"

    def test_declared_dtype(self, fmt: Format, tmp_path: Path, dtype_name: str) -> None:
        self._writable(fmt)
        d = dt.get(dtype_name)
        arr = sample_array(d, (3, 8), seed=7)
        model = Model(config=dict(SAMPLE_CONFIG))
        model.add(_fixed("t", arr))
        path = target_path(fmt, tmp_path)
        declared = declared_dtypes(fmt)
        if dtype_name in declared:
            with _skip_missing():
                write_model(model, path, fmt.name)
                back = read_model(path)
            problems = compare_models(model, back)
            assert not problems, f"{fmt.name} declares {dtype_name} but does not keep it: {problems}"
            return
        try:
            with _skip_missing():
                write_model(model, path, fmt.name)
                back = read_model(path)
        except LmconvError:
            return  # refused with a message: fine
        t = _by_name(back).get("t")
        assert t is not None, f"{dtype_name} tensor lost without an error"
        assert t.dtype.name in declared, f"{dtype_name} was stored as {t.dtype}, which {fmt.name} does not declare"
        got = t.load()
        assert got.shape == arr.shape
        want, have = arr.astype(np.float64), got.astype(np.float64)
        info = ml_dtypes.finfo(t.dtype.numpy) if t.dtype.is_float else None
        rtol, atol = (float(info.eps), float(info.smallest_subnormal)) if info is not None else (0.0, 0.0)
        same = np.isclose(have, want, rtol=rtol, atol=atol, equal_nan=True) | (np.isinf(want) & (have == want))
        overflow = np.isfinite(want) & ~np.isfinite(have)  # a narrowing cast may overflow to inf: not silent corruption
        assert bool(np.all(same | overflow)), f"{dtype_name} → {t.dtype}: values changed beyond {t.dtype}'s precision"

    def test_ties(self, fmt: Format, tmp_path: Path) -> None:
        self._writable(fmt)
        if "f32" not in declared_dtypes(fmt):
            pytest.skip("the tie sample is f32")
        model = Model()
        model.add(_fixed(TIE[0], sample_array("f32", (6, 4), 3), aliases=(TIE[1],)))
        model.add(_fixed("other.weight", sample_array("f32", (6, 4), 4)))
        path, _ = self._sample(fmt, tmp_path, model)
        with _skip_missing():
            got = _by_name(read_model(path))
        assert TIE[0] in got and TIE[1] in got, f"a tied name was lost: got {sorted(got)}"
        assert got[TIE[0]] is got[TIE[1]], "the tie came back as two tensors (it must be one tensor with an alias)"
        assert_same(model, read_model(path), what="ties")

    def test_round_trip_via(self, fmt: Format, other_format: str, tmp_path: Path) -> None:
        other = get_registry().format(other_format)
        via = _usable(other, tmp_path / "alone-other")
        path, model = self._sample(fmt, tmp_path / "src", sample_model(declared_dtypes(fmt) & declared_dtypes(other)))
        mid = target_path(other, tmp_path / "mid")
        mid.parent.mkdir()
        with _skip_missing():
            convert(path, mid, to=other.name, extra=SAMPLE_OPTIONS)
        if not fmt.can_write:
            names = [n for n, t in _by_name(model).items() if t.dtype.name in declared_dtypes(other)]
            assert_same(model, read_model(mid), names, what=f"{fmt.name} → {other.name}")
            return
        back = target_path(fmt, tmp_path / "back")
        back.parent.mkdir()
        with _skip_missing():
            convert(mid, back, to=fmt.name, extra=SAMPLE_OPTIONS)
            mine = _alone(fmt, tmp_path / "alone-self")
            got = read_model(back)
        names = sorted(mine.exact & via.exact)
        assert names, f"neither {fmt.name} nor {other.name} keeps any tensor of the sample on its own"
        assert_same(model, got, names, what=f"{fmt.name} → {other.name} → {fmt.name}")
        if mine.ties and via.ties:
            tied = _by_name(got)
            assert tied[TIE[0]] is tied[TIE[1]], "the tie came back as two tensors"
        if mine.config and via.config:
            assert got.config == model.config, "the config did not survive"

    def test_sniff_accepts_own_file(self, fmt: Format, tmp_path: Path) -> None:
        path, _ = self._sample(fmt, tmp_path)
        assert fmt.sniff(path) is True, f"sniff does not recognise a file {fmt.name} wrote"
        found = detect_format(path)
        owner = getattr(found, "plugin", "?")
        assert found.name == fmt.name, f"format {found.name} (plugin {owner}) claims a {fmt.name} file first"

    def test_sniff_rejects_other_formats(self, fmt: Format, other_format: str, tmp_path: Path) -> None:
        other = get_registry().format(other_format)
        _usable(other, tmp_path / "alone-other")
        path = target_path(other, tmp_path / "other")
        with _skip_missing():
            write_model(sample_model(declared_dtypes(other)), path, other.name)
        assert not fmt.sniff(path), f"{fmt.name} claims a {other.name} file"

    def test_sniff_rejects_junk(self, fmt: Format, tmp_path: Path) -> None:
        ext = fmt.extensions[0] if fmt.extensions else ".bin"
        cases = {
            "a missing path": tmp_path / f"missing{ext}",
            "an empty file": tmp_path / f"empty{ext}",
            "a text file": tmp_path / f"text{ext}",
            "random bytes": tmp_path / f"garbage{ext}",
            "an empty folder": tmp_path / f"folder{ext}",
        }
        cases["an empty file"].write_bytes(b"")
        cases["a text file"].write_text("not a model\n" * 20)
        cases["random bytes"].write_bytes(np.random.default_rng(5).integers(0, 256, 4096, dtype=np.uint8).tobytes())
        cases["an empty folder"].mkdir()
        for what, path in cases.items():
            try:
                claimed = fmt.sniff(path)
            except Exception as exc:  # noqa: BLE001 - the point of the check
                pytest.fail(f"sniff raised {type(exc).__name__} on {what}: {exc}")
            assert not claimed, f"sniff claims {what}"

    def test_bad_input(self, fmt: Format, tmp_path: Path, damage: str) -> None:
        path, model = self._sample(fmt, tmp_path)
        victim = _largest_file(path)
        damage_file(victim, damage)
        try:
            back = read_model(path)
            for t in back:
                t.load()
        except MissingDependencyError as exc:
            pytest.skip(str(exc))
        except LmconvError as exc:
            assert victim.name in str(exc) or path.name in str(exc), f"the message does not name the file: {exc}"
            return
        except Exception as exc:  # noqa: BLE001 - the point of the check
            pytest.fail(f"{damage} {victim.name}: raised {type(exc).__name__}: {exc} "
                        "(expected an LmconvError subclass)")
        if damage in _TRUNCATIONS:  # only padding may go missing without an error
            assert_same(model, back, what=f"{damage} {victim.name} was read without an error but")

    def test_lazy_read(self, fmt: Format, tmp_path: Path, monkeypatch: Any) -> None:
        declared = declared_dtypes(fmt)
        if fmt.can_write:
            name = next((n for n in ("f32", "f16", "bf16", "i32") if n in declared), None)
            if name is None:
                pytest.skip("no float or i32 dtype to build a large tensor with")
            d = dt.get(name)
            big = np.zeros(self.lazy_tensor_bytes // d.type_size, dtype=d.numpy)
            big[::4097] = 1
            model = Model(config=dict(SAMPLE_CONFIG))
            model.add(_fixed("small", sample_array(d, (4,))))
            model.add(_fixed("big", big.reshape(-1, 64)))
        else:
            model = None
        path, model = self._sample(fmt, tmp_path, model)
        sizes = {t.name: t.nbytes for t in model}
        biggest = max(sizes.values())
        if biggest < 1024 * 1024:
            pytest.skip("the sample's largest tensor is too small to tell lazy from eager reading")
        small = min(sizes, key=sizes.__getitem__)

        loads: list[str] = []
        real_load = Tensor.load

        def counting(t: Tensor) -> np.ndarray:
            loads.append(t.name)
            return real_load(t)

        monkeypatch.setattr(Tensor, "load", counting)
        with _traced() as peak:
            with _skip_missing():
                back = read_model(path)
            listing = [(t.name, t.shape, t.dtype.name, t.aliases) for t in back]
        assert not loads, f"reading {path.name} and listing its tensors called Tensor.load for {loads}"
        assert len(listing) == len(model)
        assert peak() < biggest // 2, f"reading {path.name} allocated {peak():,} bytes: tensor data was read eagerly"
        with _traced() as peak:
            back.tensors[small].load()
        assert peak() < biggest // 2, f"loading {small!r} allocated {peak():,} bytes: more than that tensor was read"
        assert_same(model, back, [small], what=f"loading {small!r}")


@contextlib.contextmanager
def _traced() -> Iterator[Any]:
    """Peak bytes allocated (numpy and Python objects) inside the block, above where it started."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    result = [0]
    try:
        yield lambda: result[0]
    finally:
        result[0] = tracemalloc.get_traced_memory()[1] - base
        if started:
            tracemalloc.stop()
