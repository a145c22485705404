"""lmconv-npz: NumPy .npz archives as an lmconv format.

An .npz file is a zip with one .npy file per array. Reading parses only the
small .npy headers; an array is read from the zip when lmconv asks for it.
bf16 and fp8, which .npy cannot describe, travel as raw unsigned integers and
are named in a __lmconv__.json member, with tied names and the model's config.
The option --npz-compress writes the members deflated instead of stored.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy

from lmconv import dtypes as dt
from lmconv.errors import InputError
from lmconv.formats import Format, ReadOptions, WriteOptions
from lmconv.hookspecs import hookimpl
from lmconv.ir import Model, Tensor
from lmconv.options import Option

NOTES = "__lmconv__.json"
# dtypes a .npy header cannot name: stored as raw bits of the same width
RAW = {"bf16": np.dtype(np.uint16), "f8_e4m3": np.dtype(np.uint8), "f8_e5m2": np.dtype(np.uint8)}
# what a damaged archive raises from zipfile, zlib and numpy
BROKEN = (zipfile.BadZipFile, zlib.error, ValueError, EOFError, OSError, NotImplementedError)


class NpzFormat(Format):
    name = "npz"
    extensions = (".npz",)
    description = "NumPy .npz archive (one .npy per tensor), read lazily"
    stores_dtypes = frozenset(d.name for d in dt.PLAIN_DTYPES)

    def sniff(self, path: Path) -> bool:
        """A zip file (magic bytes PK\\x03\\x04) that holds .npy members."""
        if not path.is_file():
            return False
        with open(path, "rb") as fh:
            if fh.read(4) != b"PK\x03\x04":
                return False
        try:
            with zipfile.ZipFile(path) as zf:
                return any(name.endswith(".npy") for name in zf.namelist())
        except zipfile.BadZipFile:
            return False

    def read(self, path: Path, options: ReadOptions) -> Model:
        return read_npz(path)

    def write(self, model: Model, path: Path, options: WriteOptions) -> list[Path]:
        write_npz(model, path, options)
        return [path]


@hookimpl
def register_formats(register: Callable[[Format], None]) -> None:
    register(NpzFormat())


def read_header(zf: zipfile.ZipFile, member: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of one .npy member, from its header alone."""
    with zf.open(member) as fh:
        if npy.read_magic(fh) == (1, 0):
            shape, _, dtype = npy.read_array_header_1_0(fh)
        else:
            shape, _, dtype = npy.read_array_header_2_0(fh)
    return shape, dtype


def lazy_array(path: Path, name: str, dtype: dt.DType) -> Callable[[], np.ndarray]:
    """A loader that reads one array from the archive when it is called."""

    def load() -> np.ndarray:
        try:
            with zipfile.ZipFile(path) as zf, zf.open(name + ".npy") as fh:
                arr = npy.read_array(fh, allow_pickle=False)
        except BROKEN as exc:
            raise InputError(f"array {name!r} is unreadable ({exc})", path=path) from None
        return arr.view(dtype.numpy) if dtype.name in RAW else arr

    return load


def read_npz(path: Path) -> Model:
    """A Model of lazy tensors: only the zip directory and the .npy headers are read."""
    try:
        with zipfile.ZipFile(path) as zf:
            notes = json.loads(zf.read(NOTES)) if NOTES in zf.namelist() else {}
            headers = {m[:-4]: read_header(zf, m) for m in zf.namelist() if m.endswith(".npy")}
    except BROKEN as exc:
        raise InputError(f"is not a readable .npz archive ({exc})", path=path) from None
    if not isinstance(notes, dict):
        raise InputError(f"{NOTES} is not a JSON object", path=path)
    noted, aliases = notes.get("dtypes", {}), notes.get("aliases", {})
    model = Model(config=notes.get("config", {}), source=str(path), format="npz")
    for name, (shape, np_dtype) in headers.items():
        try:
            dtype = dt.get(noted[name]) if name in noted else dt.from_numpy(np_dtype)
        except KeyError:
            raise InputError(f"array {name!r} has dtype {np_dtype}, which lmconv does not support", path=path) from None
        if dtype.name in RAW and np_dtype != RAW[dtype.name]:
            raise InputError(f"array {name!r} is noted as {dtype.name} but holds {np_dtype}", path=path)
        tied = tuple(alias for alias, target in aliases.items() if target == name)
        model.add(Tensor(name, shape, dtype, lazy_array(path, name, dtype), aliases=tied, origin=str(path)))
    return model


def write_npz(model: Model, path: Path, options: WriteOptions) -> None:
    """One .npy member per tensor, written one at a time (one array in memory at once)."""
    notes: dict[str, Any] = {"config": model.config, "dtypes": {}, "aliases": {}}
    method = zipfile.ZIP_DEFLATED if options.extra.get("npz_compress") else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", method) as zf:
        for t in model:
            arr = t.load()
            if t.dtype.name in RAW:
                arr = arr.view(RAW[t.dtype.name])
                notes["dtypes"][t.name] = t.dtype.name
            with zf.open(t.name + ".npy", "w", force_zip64=True) as fh:
                npy.write_array(fh, arr, allow_pickle=False)
            notes["aliases"].update({alias: t.name for alias in t.aliases})
            t.release()
            options.progress(t.nbytes)
        zf.writestr(zipfile.ZipInfo(NOTES), json.dumps(notes, indent=1), method)


@hookimpl
def register_options(register: Callable[[Option], None]) -> None:
    register(Option("--npz-compress", bool, "npz: deflate the arrays (smaller files, slower to read and write)."))
