"""Bad safetensors inputs: single files and sharded indexes.

A safetensors file is an 8-byte little-endian header length, a JSON header (name → dtype, shape,
data_offsets; plus ``__metadata__``) and a data section. The reference library refuses headers over
100 MB, offsets that overlap, leave holes or run past the end, and sizes that do not match the shape;
so do we.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import (
    Case,
    ValidFiles,
    convert_quietly,
    copy_and_break,
    cut,
    edit_json,
    file_case,
    maker,
    truncations,
)

ROOT = Path(__file__).resolve().parents[2]
F32 = {"dtype": "F32"}


@maker("st")
def _valid_st(folder: Path) -> Path:
    return ROOT / "fixtures" / "tiny-llama" / "model.safetensors"


@maker("st-sharded")
def _valid_sharded(folder: Path) -> Path:
    folder.mkdir()
    convert_quietly(ROOT / "fixtures" / "tiny-llama", folder / "model.safetensors.index.json", "--max-shard-size", "200KB")
    return folder / "model.safetensors.index.json"


def _st(header: dict | bytes, data: bytes = b"") -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _t(offsets: list[int], shape: list[int] | None = None, dtype: str = "F32") -> dict:
    n = (offsets[1] - offsets[0]) // 4
    return {"dtype": dtype, "shape": shape if shape is not None else [n], "data_offsets": offsets}


def _file(data: bytes | Callable[[ValidFiles], bytes], name: str = "x.safetensors") -> Callable[[Path, ValidFiles], Path]:
    return file_case(data, name)


def _cut(n: int) -> Callable[[ValidFiles], bytes]:
    return cut("st", n)


def _truncation_cases() -> list[Case]:
    data = (ROOT / "fixtures" / "tiny-llama" / "model.safetensors").read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_len])
    start = 8 + header_len
    ends = sorted(start + v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
    marks = [8, start // 2, start, ends[0], ends[len(ends) // 2], ends[-2]]
    return [Case("safetensors", f"cut-at-{n}", _file(_cut(n), "cut.safetensors")) for n in truncations(len(data), marks)]


def _with_header(edit: Callable[[dict], dict | bytes], keep_data: bool = True) -> Callable[[ValidFiles], bytes]:
    """The valid file with its header edited (data section kept)."""

    def make(valid: ValidFiles) -> bytes:
        data = valid.bytes("st")
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + n])
        return _st(edit(header), data[8 + n:] if keep_data else b"")

    return make


def _first(header: dict) -> str:
    return next(k for k in header if k != "__metadata__")


def _set(field: str, value: object) -> Callable[[dict], dict]:
    def edit(h: dict) -> dict:
        h[_first(h)][field] = value
        return h

    return edit


def _duplicate_name(h: dict) -> bytes:
    """JSON allows a repeated key; the second entry would silently win in a plain json.loads."""
    name = _first(h)
    raw = json.dumps(h)
    entry = json.dumps({name: h[name]})[1:-1]
    return ("{" + entry + ", " + raw[1:]).encode()


def _nan_file(valid: ValidFiles) -> bytes:
    w = np.ones((4, 4), np.float32)
    w[1, 2] = np.nan
    return _st({"w": _t([0, 64], [4, 4]), "b": _t([64, 80])}, w.tobytes() + np.full(4, np.inf, np.float32).tobytes())


# ----------------------------------------------------------------------------- sharded indexes
def _sharded(edit: Callable[[Path], None]) -> Callable[[Path, ValidFiles], Path]:
    """A copy of the valid sharded model broken by ``edit(folder)``; SRC is the index."""
    return copy_and_break("st-sharded", edit, "model.safetensors.index.json")


def _edit_index(fn: Callable[[dict], object]) -> Callable[[Path], None]:
    return edit_json("model.safetensors.index.json", fn)


def _shard(folder: Path, i: int) -> Path:
    return sorted(folder.glob("model-*.safetensors"))[i]


def _weight_map_entry(index: dict, shard_no: int) -> tuple[str, str]:
    shards = sorted(set(index["weight_map"].values()))
    name = next(k for k, v in index["weight_map"].items() if v == shards[shard_no])
    return name, shards[shard_no]


def _move_to_other_shard(index: dict) -> None:
    name, _ = _weight_map_entry(index, 0)
    index["weight_map"][name] = sorted(set(index["weight_map"].values()))[1]


def _truncate_second_shard(folder: Path) -> None:
    p = _shard(folder, 1)
    p.write_bytes(p.read_bytes()[:-100])


SHARDED = [
    Case("safetensors", "index-not-json", _sharded(_edit_index(lambda i: "{\"weight_map\": ")), mentions=("index",)),
    Case("safetensors", "index-no-weight-map", _sharded(_edit_index(lambda i: "{\"metadata\": {}}")), mentions=("weight_map",)),
    Case("safetensors", "index-weight-map-a-list", _sharded(_edit_index(lambda i: json.dumps({"weight_map": [1, 2]}))),
         mentions=("weight_map",)),
    Case("safetensors", "index-shard-missing", _sharded(lambda f: _shard(f, 1).unlink()), mentions=("does not exist",)),
    Case("safetensors", "index-shard-escapes-folder",
         _sharded(_edit_index(lambda i: i["weight_map"].update({_weight_map_entry(i, 0)[0]: "../../etc/passwd"}))),
         mentions=("outside",)),
    Case("safetensors", "index-absolute-shard-path",
         _sharded(_edit_index(lambda i: i["weight_map"].update({_weight_map_entry(i, 0)[0]: "/etc/passwd"}))),
         mentions=("outside",)),
    Case("safetensors", "index-tensor-not-in-its-shard", _sharded(_edit_index(_move_to_other_shard)),
         mentions=("no such tensor",)),
    Case("safetensors", "index-shard-truncated", _sharded(_truncate_second_shard), names="model-00002-of-",
         mentions=("truncated",)),
    Case("safetensors", "index-shard-empty", _sharded(lambda f: _shard(f, 0).write_bytes(b"")), names="model-00001-of-"),
]

CASES: list[Case] = [
    Case("safetensors", "empty", _file(b"")),
    *_truncation_cases(),
    Case("safetensors", "header-length-10^12", _file(struct.pack("<Q", 10**12) + b"{}"), lying=True),
    Case("safetensors", "header-length-2^33-zero-filled", _file(struct.pack("<Q", 2**33) + b"\0" * 64), lying=True),
    Case("safetensors", "header-length-past-end", _file(struct.pack("<Q", 4096) + b'{"a":1}'), mentions=("truncated",)),
    Case("safetensors", "header-not-json", _file(_st(b"{this is not json}"))),
    Case("safetensors", "header-a-list", _file(_st([1, 2, 3]))),  # type: ignore[arg-type]
    Case("safetensors", "header-first-byte-corrupt", _file(lambda v: v.bytes("st")[:8] + b"\x00" + v.bytes("st")[9:])),
    Case("safetensors", "header-non-utf8", _file(struct.pack("<Q", 4) + b"\xff\xfe{}"), mentions=("safetensors",)),
    Case("safetensors", "name-non-utf8", _file(_st(b'{"w\xff\xfe": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}',
                                                   b"\0" * 4)), mentions=("UTF-8",)),
    Case("safetensors", "name-lone-surrogate", _file(_st(b'{"w\\udc80": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}',
                                                         b"\0" * 4)), mentions=("name",)),
    Case("safetensors", "duplicate-tensor-name", _file(_with_header(_duplicate_name)), mentions=("twice",)),
    Case("safetensors", "overlapping-offsets", _file(_st({"a": _t([0, 16]), "b": _t([8, 24])}, b"\0" * 24)),
         mentions=("overlap",)),
    Case("safetensors", "reversed-offsets", _file(_st({"a": {**F32, "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8)),
         mentions=("offsets",)),
    Case("safetensors", "hole-between-tensors", _file(_st({"a": _t([0, 8]), "b": _t([16, 24])}, b"\0" * 24)),
         mentions=("gap",)),
    Case("safetensors", "bytes-after-last-tensor", _file(_st({"a": _t([0, 8])}, b"\0" * 24)), mentions=("after",)),
    Case("safetensors", "data-past-end", _file(_st({"a": _t([0, 4000])}, b"\0" * 8)), mentions=("past the end",)),
    Case("safetensors", "tensor-claims-1TiB", _file(_st({"a": _t([0, 2**40])}, b"\0" * 8)), lying=True),
    Case("safetensors", "size-disagrees-with-shape", _file(_st({"a": _t([0, 16], [3, 3])}, b"\0" * 16)), mentions=("needs",)),
    Case("safetensors", "shape-product-overflows", _file(_st({"a": _t([0, 16], [2**40, 2**40, 2**40])}, b"\0" * 16))),
    Case("safetensors", "unknown-dtype", _file(_st({"a": {"dtype": "F7", "shape": [1], "data_offsets": [0, 1]}}, b"\0")),
         mentions=("dtype",)),
    Case("safetensors", "negative-shape", _file(_st({"a": {**F32, "shape": [-1], "data_offsets": [0, 0]}})), mentions=("shape",)),
    Case("safetensors", "float-shape", _file(_st({"a": {**F32, "shape": [1.5], "data_offsets": [0, 4]}}, b"\0" * 4)),
         mentions=("shape",)),
    Case("safetensors", "entry-missing-offsets", _file(_st({"a": {**F32, "shape": [1]}}, b"\0" * 4)), mentions=("malformed",)),
    Case("safetensors", "entry-a-string", _file(_st({"a": "F32"}))),
    Case("safetensors", "metadata-not-strings", _file(_st({"__metadata__": {"format": 3}, "a": _t([0, 4])}, b"\0" * 4)),
         mentions=("__metadata__",)),
    Case("safetensors", "aliases-metadata-corrupt",
         _file(_st({"__metadata__": {"lmconv.aliases": "{not json"}, "a": _t([0, 4])}, b"\0" * 4)), mentions=("aliases",)),
    Case("safetensors", "nan-and-inf-with-strict", _file(_nan_file), args=("--strict",), mentions=("NaN",),
         inspect=False),  # values are only looked at when they are converted
    *SHARDED,
]
