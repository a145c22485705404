"""A conformance kit for format plugins (import name ``lmconv.testing``; needs pytest).

Subclass :class:`FormatConformance` in your plugin's test suite and name your format::

    from lmconv.testing import FormatConformance

    class TestNpz(FormatConformance):
        format_name = "npz"

pytest collects the inherited checks and runs them against the format, with the
other installed formats and lmconv's dtypes as parameters:

- ``test_registered`` — the plugin loaded, the format is registered and describes itself sanely;
- ``test_round_trip`` — a synthetic model (f32/f16/bf16 with NaN, ±inf, -0.0 and
  subnormals, ints at their extremes, a 0-d tensor, a config) comes back bit-exact;
- ``test_declared_dtype[...]`` — every dtype in ``stores_dtypes`` comes back exactly; any
  other dtype is refused with an :class:`~lmconv.errors.LmconvError` or stored as a
  declared dtype with its values kept;
- ``test_ties`` — a tied tensor comes back as one tensor with its alias;
- ``test_round_trip_via[other]`` — this format → each other writable format → this
  format is bit-exact (on what both formats keep when used alone);
- ``test_sniff_accepts_own_file``, ``test_sniff_rejects_other_formats[other]``,
  ``test_sniff_rejects_junk`` — ``sniff`` claims its own files and nothing else, and never raises;
- ``test_bad_input[damage]`` — an empty, truncated, scrambled or garbage file gives an
  ``LmconvError`` naming the file, never another exception, and never silently less data;
- ``test_lazy_read`` — reading and listing tensors calls no ``Tensor.load`` and allocates
  no tensor data; loading one tensor does not load the others.

Checks that cannot apply are skipped (a read-only format is not written, a format whose
optional dependency is missing is skipped with the ``MissingDependencyError`` message).
A check your format knowingly fails can be listed with its reason in ``known_failures``;
it then runs as a strict ``xfail``, so fixing it makes you remove the entry.
"""

from __future__ import annotations

import contextlib
import re
import tracemalloc
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import ml_dtypes
import numpy as np

try:
    import pytest
except ImportError as exc:  # pragma: no cover - lmconv itself never imports this module
    raise ImportError("lmconv.testing is a pytest kit: pip install pytest") from exc

from . import dtypes as dt
from .companions import companion_files
from .dtypes import DType
from .errors import LmconvError, MissingDependencyError
from .formats import Format, WriteOptions
from .ir import Model, Tensor
from .pipeline import convert, detect_format, read_model
from .registry import get_registry

__all__ = [
    "DAMAGES", "FormatConformance", "SAMPLE_CONFIG", "assert_same", "compare_models", "damage_file", "declared_dtypes",
    "sample_array", "sample_model", "target_path", "write_model",
]

#: the config every sample model carries (no ``architectures``: the generic, name-keeping path)
SAMPLE_CONFIG: dict[str, Any] = {
    "model_type": "lmconv-conformance",
    "hidden_size": 4,
    "rms_norm_eps": 1e-06,
    "torch_dtype": "float32",
    "nested": {"list": [1, 2.5, "three"], "flag": True},
}

#: (name, dtype, shape) of the sample model's tensors; those the format does not declare are left out
SAMPLE_LAYOUT: tuple[tuple[str, str, tuple[int, ...]], ...] = (
    ("w.f32", "f32", (3, 5)),
    ("w.f16", "f16", (4, 4)),
    ("w.bf16", "bf16", (2, 3, 4)),
    ("norm.f32", "f32", (5,)),
    ("scale", "f32", ()),
    ("ids.i64", "i64", (7,)),
    ("idx.i32", "i32", (2, 3)),
    ("q.i8", "i8", (8,)),
)
#: the tied pair of the sample: one tensor, two names
TIE = ("embed.weight", "head.weight")

#: the ways :func:`damage_file` spoils a file
DAMAGES: tuple[str, ...] = (
    "empty", "garbage", "truncated-16", "truncated-half", "truncated-last-byte", "scrambled-start", "scrambled-end",
)
_TRUNCATIONS = ("empty", "truncated-16", "truncated-half", "truncated-last-byte")


# ----------------------------------------------------------------------------------- samples
def sample_array(dtype: DType | str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Deterministic values of ``dtype`` that catch lossy writers: floats start with 0, -0.0,
    ±inf, NaN, the smallest subnormal and the largest finite value; ints with their min and max."""
    dtype = dt.get(dtype) if isinstance(dtype, str) else dtype
    if dtype.numpy is None:
        raise ValueError(f"{dtype.name} is a block type; sample_array makes plain arrays")
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape, dtype=np.int64))
    if dtype.kind == "float":
        info = ml_dtypes.finfo(dtype.numpy)
        arr = (rng.standard_normal(n) * 2).astype(dtype.numpy)
        special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, float(info.smallest_subnormal), float(info.max), -1.5])
        with np.errstate(invalid="ignore", over="ignore"):
            special = special.astype(dtype.numpy)  # fp8 e4m3 has no inf: it becomes NaN, still a fine value
    elif dtype.kind == "int":
        info = np.iinfo(dtype.numpy)
        arr = rng.integers(info.min, info.max, size=n, dtype=dtype.numpy, endpoint=True)
        special = np.array([info.min, info.max, 0], dtype=dtype.numpy)
    else:
        arr = rng.integers(0, 2, size=n).astype(np.bool_)
        special = np.array([True, False])
    k = min(n, len(special))
    arr[:k] = special[:k]
    return arr.reshape(shape)


def declared_dtypes(fmt: Format) -> set[str]:
    """The plain dtype names ``fmt`` says it stores (``stores_dtypes=None`` means all of them)."""
    plain = {d.name for d in dt.PLAIN_DTYPES}
    return plain if fmt.stores_dtypes is None else set(fmt.stores_dtypes) & plain


def sample_model(dtypes: Iterable[str] | None = None, *, tie: bool = True, config: bool = True, seed: int = 0) -> Model:
    """A small synthetic model: the tensors of :data:`SAMPLE_LAYOUT` whose dtype is in ``dtypes``
    (all when None), the tied pair :data:`TIE` in f32, and :data:`SAMPLE_CONFIG`."""
    keep = None if dtypes is None else set(dtypes)
    model = Model(config=dict(SAMPLE_CONFIG) if config else {}, source="<lmconv.testing sample>")
    for i, (name, dname, shape) in enumerate(SAMPLE_LAYOUT):
        if keep is None or dname in keep:
            model.add(_fixed(name, sample_array(dname, shape, seed + i)))
    if tie and (keep is None or "f32" in keep):
        model.add(_fixed(TIE[0], sample_array("f32", (6, 4), seed + 99), aliases=(TIE[1],)))
    return model


def _fixed(name: str, arr: np.ndarray, **kw: Any) -> Tensor:
    arr.setflags(write=False)  # a writer must not scribble on its input
    return Tensor(name, arr.shape, dt.from_numpy(arr.dtype), lambda: arr, **kw)


# ----------------------------------------------------------------------------------- writing
def target_path(fmt: Format, folder: Path, stem: str = "model") -> Path:
    """Where a file (or folder) of ``fmt`` named ``stem`` goes inside ``folder``."""
    return folder / (stem + (fmt.extensions[0] if fmt.extensions and not fmt.is_directory else ""))


def write_model(model: Model, path: str | Path, format_name: str, options: WriteOptions | None = None) -> list[Path]:
    """Write ``model`` with one format the way ``lmconv.convert`` does (``prepare``, ``write``,
    and config/tokenizer files beside a lone weights file), without a source file."""
    path = Path(path)
    fmt = get_registry().format(format_name)
    opts = options or WriteOptions()
    path.parent.mkdir(parents=True, exist_ok=True)
    prepared = fmt.prepare(model, opts)
    produced = list(fmt.write(prepared, path, opts))
    if not fmt.is_directory and not getattr(fmt, "self_describing", False):
        for name, data in companion_files(prepared).items():
            (path.parent / name).write_bytes(data)
            produced.append(path.parent / name)
    return produced


# ----------------------------------------------------------------------------------- comparing
def _by_name(model: Model) -> dict[str, Tensor]:
    """Every name (aliases included) → its tensor."""
    out = {a: t for t in model for a in t.aliases}
    out.update(model.tensors)
    return out


def _bits(arr: np.ndarray) -> bytes:
    return np.ascontiguousarray(arr).tobytes()


def compare_models(expected: Model, actual: Model, names: Iterable[str] | None = None) -> list[str]:
    """What differs, one line per problem (empty when equal): a missing or extra name, or a
    tensor whose dtype, shape or bytes changed. ``names`` limits the check to those names."""
    want, got = _by_name(expected), _by_name(actual)
    check = list(want) if names is None else [n for n in names if n in want]
    problems = [f"{n}: missing" for n in check if n not in got]
    if names is None:
        problems += [f"{n}: not in the original" for n in got if n not in want]
    for n in check:
        if n not in got:
            continue
        a, b = want[n], got[n]
        if a.dtype != b.dtype or a.shape != b.shape:
            problems.append(f"{n}: {a.dtype}{list(a.shape)} came back as {b.dtype}{list(b.shape)}")
        elif _bits(a.load()) != _bits(b.load()):
            problems.append(f"{n}: the bytes differ")
    return problems


def assert_same(expected: Model, actual: Model, names: Iterable[str] | None = None, what: str = "round trip") -> None:
    """Fail with every difference listed (see :func:`compare_models`)."""
    problems = compare_models(expected, actual, names)
    if problems:
        raise AssertionError(f"{what}: " + "; ".join(problems[:20]) + (" …" if len(problems) > 20 else ""))


# ----------------------------------------------------------------------------------- damage
def damage_file(path: Path, how: str, seed: int = 0) -> None:
    """Spoil ``path`` in place, one of :data:`DAMAGES`."""
    data = path.read_bytes()
    rng = np.random.default_rng(seed)
    if how == "empty":
        out = b""
    elif how == "garbage":
        out = rng.integers(0, 256, size=max(len(data), 64), dtype=np.uint8).tobytes()
    elif how == "truncated-16":
        out = data[:16]
    elif how == "truncated-half":
        out = data[: len(data) // 2]
    elif how == "truncated-last-byte":
        out = data[:-1]
    elif how in ("scrambled-start", "scrambled-end"):
        buf = bytearray(data)
        lo, hi = (8, min(len(buf), 8 + 256)) if how == "scrambled-start" else (max(8, len(buf) - 256), len(buf))
        noise = rng.integers(1, 256, size=max(0, hi - lo), dtype=np.uint8).tobytes()
        buf[lo:hi] = bytes(x ^ y for x, y in zip(buf[lo:hi], noise))
        out = bytes(buf)
    else:
        raise ValueError(f"unknown damage {how!r}; one of {DAMAGES}")
    path.write_bytes(out)


def _largest_file(path: Path) -> Path:
    if path.is_file():
        return path
    files = [p for p in path.rglob("*") if p.is_file()]
    return max(files, key=lambda p: (p.stat().st_size, str(p)))


# ----------------------------------------------------------------------------------- the kit
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
            names = [n for n, f in sorted(reg.formats.items()) if n != self.format_name and f.can_write and f.can_read]
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
            convert(path, mid, to=other.name)
        if not fmt.can_write:
            names = [n for n, t in _by_name(model).items() if t.dtype.name in declared_dtypes(other)]
            assert_same(model, read_model(mid), names, what=f"{fmt.name} → {other.name}")
            return
        back = target_path(fmt, tmp_path / "back")
        back.parent.mkdir()
        with _skip_missing():
            convert(mid, back, to=fmt.name)
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
