"""The conformance kit's raw material: a sample model with every awkward value, writing it with one
format, comparing two models bit for bit, and damaging a file the ways a download or a disk can."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from .. import dtypes as dt
from ..companions import companion_files
from ..dtypes import DType
from ..formats import Format, WriteOptions
from ..ir import Model, Tensor
from ..registry import get_registry

#: what writing a sample always asks for: the samples are no runnable model (no family, no tokenizer),
#: and a format that stops before writing what its runtime cannot run (GGUF) writes them anyway
SAMPLE_OPTIONS: dict[str, Any] = {"generic": True}

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
    opts = replace(opts, extra={**SAMPLE_OPTIONS, **opts.extra})
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

