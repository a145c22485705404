"""Bad PyTorch inputs: zip and legacy checkpoints, hostile pickles, sharded indexes.

A zip checkpoint (torch >= 1.6) is a zip archive of ``archive/data.pkl`` (a pickle whose persistent ids
name storages: ``('storage', torch.FloatStorage, key, 'cpu', numel)``), one uncompressed record
``archive/data/<key>`` per storage and a few small records (version, byteorder). A legacy checkpoint is a
row of pickles (magic number, protocol, sys info, the object, the storage keys) followed by each storage as
an int64 element count and its bytes. Every pickle is loaded with ``torch.load(weights_only=True)``; a
pickle that asks for anything else (``os.system``, ``builtins.open``) is refused with exit 4 and must run
nothing: its marker file lands in the source folder, which the contract checks is unchanged.
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
GPT2 = ROOT / "fixtures" / "tiny-gpt2"


# ----------------------------------------------------------------------------- valid inputs
def _state() -> dict[str, Any]:
    from safetensors.torch import load_file

    return {k: v.contiguous() for k, v in load_file(str(GPT2 / "model.safetensors")).items()}


@maker("pt-zip")
def _valid_zip(folder: Path) -> Path:
    folder.mkdir()
    convert_quietly(GPT2, folder / "model.pt")
    return folder / "model.pt"


@maker("pt-legacy")
def _valid_legacy(folder: Path) -> Path:
    import torch

    folder.mkdir()
    torch.save(_state(), folder / "model.pt", _use_new_zipfile_serialization=False)
    return folder / "model.pt"


@maker("pt-sharded")
def _valid_sharded(folder: Path) -> Path:
    folder.mkdir()
    convert_quietly(GPT2, folder / "pytorch_model.bin", "--max-shard-size", "200KB")
    return folder / "pytorch_model.bin.index.json"


# ----------------------------------------------------------------------------- building blocks
def _file(data: bytes | Callable[[ValidFiles], bytes], name: str = "x.pt") -> Callable[[Path, ValidFiles], Path]:
    return file_case(data, name)


def _saved(make: Callable[[Path], Any], legacy: bool = False, name: str = "x.pt") -> Callable[[Path, ValidFiles], Path]:
    """``torch.save(make(folder))``; ``make`` gets the case folder (for a hostile payload's marker)."""

    def build(folder: Path, valid: ValidFiles) -> Path:
        import torch

        path = folder / name
        torch.save(make(folder), path, _use_new_zipfile_serialization=not legacy)
        return path

    return build


def _members(data: bytes) -> list[tuple[zipfile.ZipInfo, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [(i, zf.read(i)) for i in zf.infolist()]


def _rezip(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return out.getvalue()


def _edit_zip(edit: Callable[[list[tuple[str, bytes]]], list[tuple[str, bytes]]]) -> Callable[[ValidFiles], bytes]:
    """The valid zip checkpoint rewritten (by Python's zipfile, which torch reads) after ``edit``."""

    def make(valid: ValidFiles) -> bytes:
        return _rezip(edit([(i.filename, d) for i, d in _members(valid.bytes("pt-zip"))]))

    return make


def _drop_record(members: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    return [(n, d) for n, d in members if n != "archive/data/1"]


def _shorten_record(members: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    return [(n, d[: len(d) // 2] if n == "archive/data/1" else d) for n, d in members]


def _compress(valid: ValidFiles) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for info, data in _members(valid.bytes("pt-zip")):
            zf.writestr(info.filename, data)
    return out.getvalue()


def _zip_offsets(data: bytes) -> tuple[dict[str, tuple[int, int]], int]:
    """name → (local header offset, data offset) and the central directory's offset."""
    offs = {}
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for i in zf.infolist():
            n, e = struct.unpack("<HH", data[i.header_offset + 26: i.header_offset + 30])
            offs[i.filename] = (i.header_offset, i.header_offset + 30 + n + e)
        cd = zf.start_dir
    return offs, cd


def _flip_in_record(record: str, delta: int = 0) -> Callable[[ValidFiles], bytes]:
    """One byte of a record changed in place; the CRC in the headers is left as it was."""

    def make(valid: ValidFiles) -> bytes:
        data = bytearray(valid.bytes("pt-zip"))
        offs, _ = _zip_offsets(bytes(data))
        at = offs[record][1] + delta
        data[at] ^= 0x5A
        return bytes(data)

    return make


def _bad_crc(valid: ValidFiles) -> bytes:
    """The central directory's CRC of data.pkl changed (the bytes themselves intact)."""
    data = bytearray(valid.bytes("pt-zip"))
    _, cd = _zip_offsets(bytes(data))
    assert data[cd:cd + 4] == b"PK\x01\x02"
    data[cd + 16] ^= 0xFF
    lh = 0
    data[lh + 14] ^= 0xFF  # and the local header's copy
    return bytes(data)


# ---- hand-made checkpoints: what torch.save writes, with sizes that lie -----------------------
class _Stor:
    def __init__(self, key: str, numel: int, kind: str = "FloatStorage") -> None:
        self.key, self.numel, self.kind = key, numel, kind


class _T:
    """A tensor as torch pickles it: _rebuild_tensor_v2(storage, offset, shape, stride, False, {})."""

    def __init__(self, storage: _Stor, shape: tuple[int, ...], offset: int = 0) -> None:
        self.storage, self.shape, self.offset = storage, shape, offset

    def __reduce__(self) -> tuple[Any, ...]:
        import torch

        stride, acc = [], 1
        for s in reversed(self.shape):
            stride.insert(0, acc)
            acc *= s
        return (torch._utils._rebuild_tensor_v2,
                (self.storage, self.offset, tuple(self.shape), tuple(stride), False, collections.OrderedDict()))


class _T3(_T):
    """What torch pickles for dtypes without a typed storage class (uint64, fp8): an untyped storage
    (counted in bytes) and _rebuild_tensor_v3(storage, offset, shape, stride, False, {}, dtype)."""

    def __reduce__(self) -> tuple[Any, ...]:
        import torch

        _, (storage, offset, shape, stride, *_rest) = super().__reduce__()
        return (torch._utils._rebuild_tensor_v3,
                (storage, offset, shape, stride, False, collections.OrderedDict(), torch.uint64))


class _Pickler(pickle.Pickler):
    legacy = False

    def persistent_id(self, obj: Any) -> Any:
        import torch

        if isinstance(obj, _Stor):
            pid = ("storage", getattr(torch, obj.kind), obj.key, "cpu", obj.numel)
            return (*pid, None) if self.legacy else pid  # legacy ids end with the view metadata
        return None


def _pickle(obj: Any, legacy: bool = False) -> bytes:
    buf = io.BytesIO()
    p = _Pickler(buf, protocol=2)
    p.legacy = legacy
    p.dump(obj)
    return buf.getvalue()


def _handmade_zip(state: dict[str, _T], records: dict[str, bytes]) -> bytes:
    members = [("archive/data.pkl", _pickle(state)), ("archive/byteorder", b"little")]
    members += [(f"archive/data/{k}", v) for k, v in records.items()]
    members += [("archive/version", b"3\n")]
    return _rezip(members)


def _handmade_legacy(state: dict[str, _T], records: dict[str, tuple[int, bytes]]) -> bytes:
    """Magic, protocol, sys info, the object, the storage keys; then each storage's count and bytes."""
    out = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2)
    out += pickle.dumps({"protocol_version": 1001, "little_endian": True,
                         "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2)
    out += _pickle(state, legacy=True) + pickle.dumps(list(records), protocol=2)
    for numel, data in records.values():
        out += struct.pack("<q", numel) + data
    return out


def _honest(kind: str = "zip") -> Callable[[ValidFiles], bytes]:
    """A hand-made checkpoint that is valid (proves the hand-made layout loads at all)."""
    s = _Stor("0", 6)
    state = {"w": _T(s, (2, 3))}
    data = bytes(range(24))
    return lambda v: _handmade_zip(state, {"0": data}) if kind == "zip" else _handmade_legacy(state, {"0": (6, data)})


def _storage_lies(kind: str) -> Callable[[ValidFiles], bytes]:
    """A storage that claims 2^31 floats (8 GiB) over 24 bytes of data."""
    s = _Stor("0", 2**31)
    state = {"w": _T(s, (2**16, 2**15))}
    data = bytes(24)
    return lambda v: _handmade_zip(state, {"0": data}) if kind == "zip" else _handmade_legacy(state, {"0": (2**31, data)})


def _shape_lies(kind: str) -> Callable[[ValidFiles], bytes]:
    """An honest 6-float storage viewed as a [2^20, 2^20] tensor (4 TiB)."""
    s = _Stor("0", 6)
    state = {"w": _T(s, (2**20, 2**20))}
    data = bytes(24)
    return lambda v: _handmade_zip(state, {"0": data}) if kind == "zip" else _handmade_legacy(state, {"0": (6, data)})


def _untyped_shape_lies(valid: ValidFiles) -> bytes:
    """48 honest bytes (an untyped storage) viewed as a [2^20, 2^20] uint64 tensor (8 TiB)."""
    s = _Stor("0", 48, kind="UntypedStorage")
    return _handmade_zip({"w": _T3(s, (2**20, 2**20))}, {"0": bytes(48)})


def _untyped_one_too_many(valid: ValidFiles) -> bytes:
    """48 bytes viewed as 7 uint64 values (56 bytes): one element past the end."""
    s = _Stor("0", 48, kind="UntypedStorage")
    return _handmade_zip({"w": _T3(s, (7,))}, {"0": bytes(48)})


def _pkl_zip(raw: bytes) -> bytes:
    return _rezip([("archive/data.pkl", raw), ("archive/byteorder", b"little"), ("archive/version", b"3\n")])


def _memo_index_lies(valid: ValidFiles) -> bytes:
    """LONG_BINPUT 0xFFFFFFFF: C's unpickler sizes its memo array by the largest index (32 GiB)."""
    return _pkl_zip(b"\x80\x02}r\xff\xff\xff\xff.")


def _bytes8_lies(valid: ValidFiles) -> bytes:
    """BINBYTES8 claiming 2^40 bytes, followed by 3."""
    return _pkl_zip(b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b"abc")


def _bytearray8_lies(valid: ValidFiles) -> bytes:
    """BYTEARRAY8 claiming 2^40 bytes (pickle's pure unpickler allocates the length it reads)."""
    return _pkl_zip(b"\x80\x05\x96" + struct.pack("<Q", 2**40) + b"abc")


def _deep_dicts(valid: ValidFiles) -> bytes:
    """Dicts nested 20 000 deep (past Python's recursion limit), a tensor-less leaf."""
    depth = 20000
    raw = b"\x80\x02}" + b"X\x01\x00\x00\x00a}" * depth + b"X\x01\x00\x00\x00bK\x01s" + b"s" * depth + b"."
    return _pkl_zip(raw)


def _data_pkl_size_lies(valid: ValidFiles) -> bytes:
    """The central directory says data.pkl is 4 GiB (compressed and not)."""
    data = bytearray(valid.bytes("pt-zip"))
    _, cd = _zip_offsets(bytes(data))
    assert data[cd:cd + 4] == b"PK\x01\x02" and data[cd + 46: cd + 46 + 16] == b"archive/data.pkl"
    data[cd + 20: cd + 28] = struct.pack("<II", 0xFFFFFFF0, 0xFFFFFFF0)
    return bytes(data)


def _legacy_count_lies(valid: ValidFiles) -> bytes:
    """The storage's own count (before its bytes) disagrees with the pickle's."""
    s = _Stor("0", 6)
    return _handmade_legacy({"w": _T(s, (2, 3))}, {"0": (2**40, bytes(24))})


def _unknown_storage(valid: ValidFiles) -> bytes:
    """A persistent id naming a storage type that does not exist."""
    s = _Stor("0", 6, kind="FloatStorage")
    raw = _pickle({"w": _T(s, (2, 3))}).replace(b"FloatStorage", b"FloatStorX12")
    return _rezip([("archive/data.pkl", raw), ("archive/byteorder", b"little"), ("archive/data/0", bytes(24)),
                   ("archive/version", b"3\n")])


# ---- hostile pickles ---------------------------------------------------------------------------
class _RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


class _OpensFile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        import builtins

        return (builtins.open, (str(self.marker), "w"))


class _Evals:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        import builtins

        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",))


class _Popen:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        import subprocess

        return (subprocess.Popen, (["touch", str(self.marker)],))


def _hostile(payload: type, where: str = "value") -> Callable[[Path], Any]:
    def make(folder: Path) -> Any:
        import torch

        evil = payload(folder / "MARKER")
        if where == "top":
            return evil
        if where == "nested":
            return {"state_dict": {"w": torch.zeros(3), "meta": {"x": evil}}}
        return {"w": torch.zeros(3), "x": evil}

    return make


def _raw_hostile_pickle(folder: Path, valid: ValidFiles) -> Path:
    """A protocol-0 pickle (``cos\\nsystem``) put in place of data.pkl of a valid checkpoint."""
    marker = folder / "MARKER"
    raw = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    members = [(i.filename, raw if i.filename.endswith("data.pkl") else d) for i, d in _members(valid.bytes("pt-zip"))]
    path = folder / "x.pt"
    path.write_bytes(_rezip(members))
    return path


def _hostile_persistent_id(folder: Path, valid: ValidFiles) -> Path:
    """A persistent id whose storage type is os.system instead of a torch storage class."""

    class P(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            if isinstance(obj, _Stor):
                return ("storage", os.system, "0", "cpu", 6)
            return None

    buf = io.BytesIO()
    P(buf, protocol=2).dump({"w": _T(_Stor("0", 6), (2, 3))})
    path = folder / "x.pt"
    path.write_bytes(_rezip([("archive/data.pkl", buf.getvalue()), ("archive/byteorder", b"little"),
                             ("archive/data/0", bytes(24)), ("archive/version", b"3\n")]))
    return path


# ---- odd top levels --------------------------------------------------------------------------
def _t(*shape: int) -> Any:
    import torch

    return torch.ones(*shape)


def _truncation_cases() -> list[Case]:
    """Cuts of a zip checkpoint (local headers, data.pkl, central directory, end record) and a legacy one."""
    import tempfile

    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        zip_data = _valid_zip(Path(tmp) / "z").read_bytes()
        legacy = _valid_legacy(Path(tmp) / "l").read_bytes()
    offs, cd = _zip_offsets(zip_data)
    pkl_start = offs["archive/data.pkl"][1]
    marks = [pkl_start, pkl_start + 100, *[o for pair in list(offs.values())[:6] for o in pair],
             *[pair[0] for pair in list(offs.values())[-4:]], cd, cd + 46, len(zip_data) - 22, len(zip_data) - 10]
    for n in truncations(len(zip_data), marks):
        cases.append(Case("pytorch", f"zip-cut-at-{n}", _file(cut("pt-zip", n), "cut.pt")))
    # legacy: five pickles, then (count, bytes) per storage
    stream = io.BytesIO(legacy)
    ends = []
    import pickletools

    for _ in range(5):
        for _op in pickletools.genops(stream):
            pass
        ends.append(stream.tell())
    lmarks = [*ends, ends[-1] + 8, ends[-1] + 4, (ends[2] + ends[3]) // 2]
    for n in truncations(len(legacy), lmarks):
        cases.append(Case("pytorch", f"legacy-cut-at-{n}", _file(cut("pt-legacy", n), "cut.pt")))
    return cases


# ----------------------------------------------------------------------------- sharded indexes
def _sharded(edit: Callable[[Path], None]) -> Callable[[Path, ValidFiles], Path]:
    """A copy of the valid sharded model broken by ``edit(folder)``; SRC is the index."""
    return copy_and_break("pt-sharded", edit, "pytorch_model.bin.index.json")


def _edit_index(fn: Callable[[dict], object]) -> Callable[[Path], None]:
    return edit_json("pytorch_model.bin.index.json", fn)


def _shards(index: dict) -> list[str]:
    return sorted(set(index["weight_map"].values()))


def _first_of(index: dict, shard_no: int) -> str:
    shard = _shards(index)[shard_no]
    return next(k for k, v in index["weight_map"].items() if v == shard)


def _shard(folder: Path, i: int) -> Path:
    return sorted(folder.glob("pytorch_model-*.bin"))[i]


def _move_to_other_shard(index: dict) -> None:
    index["weight_map"][_first_of(index, 0)] = _shards(index)[1]


def _tensor_in_two_shards(folder: Path) -> None:
    """The second shard also holds a tensor of the first one (transformers would keep either)."""
    import torch

    index = json.loads((folder / "pytorch_model.bin.index.json").read_text())
    name = _first_of(index, 0)
    second = _shard(folder, 1)
    state = torch.load(second, weights_only=True)
    state[name] = torch.zeros(3)
    torch.save(state, second)


def _shard_lacks_a_tensor(folder: Path) -> None:
    import torch

    index = json.loads((folder / "pytorch_model.bin.index.json").read_text())
    name = _first_of(index, 1)
    second = _shard(folder, 1)
    state = torch.load(second, weights_only=True)
    del state[name]
    torch.save(state, second)


def _shard_hostile(folder: Path) -> None:
    import torch

    torch.save({"w": torch.zeros(3), "x": _RunsShell(folder / "MARKER")}, _shard(folder, 1))


def _truncate_shard(folder: Path) -> None:
    p = _shard(folder, 1)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


SHARDED = [
    Case("pytorch", "index-not-json", _sharded(_edit_index(lambda i: '{"weight_map": ')), mentions=("index",)),
    Case("pytorch", "index-no-weight-map", _sharded(_edit_index(lambda i: '{"metadata": {}}')), mentions=("weight_map",)),
    Case("pytorch", "index-weight-map-a-list", _sharded(_edit_index(lambda i: json.dumps({"weight_map": [1, 2]}))),
         mentions=("weight_map",)),
    Case("pytorch", "index-a-list", _sharded(_edit_index(lambda i: "[1, 2]")), mentions=("weight_map",)),
    Case("pytorch", "index-shard-name-a-number",
         _sharded(_edit_index(lambda i: i["weight_map"].update({_first_of(i, 0): 7}))), mentions=("weight_map",)),
    Case("pytorch", "index-non-utf8", _sharded(lambda f: (f / "pytorch_model.bin.index.json").write_bytes(b'{"weight_map": {"\xff": "a"}}')),
         mentions=("index",)),
    Case("pytorch", "index-empty-file", _sharded(lambda f: (f / "pytorch_model.bin.index.json").write_bytes(b"")),
         mentions=("index",)),
    Case("pytorch", "index-shard-missing", _sharded(lambda f: _shard(f, 1).unlink()), mentions=("does not exist",)),
    Case("pytorch", "index-shard-escapes-folder",
         _sharded(_edit_index(lambda i: i["weight_map"].update({_first_of(i, 0): "../x.bin"}))), mentions=("outside",)),
    Case("pytorch", "index-shard-escapes-folder-backslash",
         _sharded(_edit_index(lambda i: i["weight_map"].update({_first_of(i, 0): "..\\x.bin"}))), mentions=("outside",)),
    Case("pytorch", "index-absolute-shard-path",
         _sharded(_edit_index(lambda i: i["weight_map"].update({_first_of(i, 0): "/etc/passwd"}))), mentions=("outside",)),
    Case("pytorch", "index-shard-is-a-folder",
         _sharded(lambda f: (_edit_index(lambda i: i["weight_map"].update({_first_of(i, 0): "sub"}))(f), (f / "sub").mkdir())),
         mentions=("does not exist",)),
    Case("pytorch", "index-tensor-not-in-its-shard", _sharded(_edit_index(_move_to_other_shard)), mentions=("no such tensor",)),
    Case("pytorch", "index-shard-lacks-a-tensor", _sharded(_shard_lacks_a_tensor), mentions=("no such tensor",)),
    Case("pytorch", "index-tensor-in-two-shards", _sharded(_tensor_in_two_shards), names="pytorch_model-00002-of-",
         mentions=("twice",)),
    Case("pytorch", "index-shard-truncated", _sharded(_truncate_shard), names="pytorch_model-00002-of-",
         mentions=("truncated",)),
    Case("pytorch", "index-shard-empty", _sharded(lambda f: _shard(f, 0).write_bytes(b"")), names="pytorch_model-00001-of-"),
    Case("pytorch", "index-shard-hostile", _sharded(_shard_hostile), code=4, names="pytorch_model-00002-of-",
         mentions=("refused",)),
    Case("pytorch", "index-shard-not-a-checkpoint", _sharded(lambda f: _shard(f, 0).write_bytes(b"not a pickle at all" * 10)),
         names="pytorch_model-00001-of-"),
]


def _zip_without_pkl(valid: ValidFiles) -> bytes:
    return _rezip([(i.filename, d) for i, d in _members(valid.bytes("pt-zip")) if not i.filename.endswith("data.pkl")])


def _two_pkls(valid: ValidFiles) -> bytes:
    members = [(i.filename, d) for i, d in _members(valid.bytes("pt-zip"))]
    pkl = next(d for n, d in members if n.endswith("data.pkl"))
    return _rezip([*members, ("other/data.pkl", pkl)])


def _huge_sparse(folder: Path) -> Any:
    """One value in a [2^20, 2^20] sparse tensor: densified it would be 4 TiB."""
    import warnings

    import torch

    with warnings.catch_warnings():  # torch's note that sparse invariants go unchecked
        warnings.simplefilter("ignore")
        return {"w": torch.sparse_coo_tensor(torch.tensor([[0], [0]]), torch.ones(1), (2**20, 2**20))}


def _duplicate_flat_names(folder: Path) -> Any:
    return {"a.b": _t(2), "a": {"b": _t(3)}}


CASES: list[Case] = [
    Case("pytorch", "empty", _file(b"")),
    Case("pytorch", "empty-bin", _file(b"", "pytorch_model.bin")),
    Case("pytorch", "bad-magic-zip", _file(lambda v: b"PX" + v.bytes("pt-zip")[2:])),
    Case("pytorch", "bad-magic-legacy", _file(lambda v: v.bytes("pt-legacy")[:3] + b"\x00" + v.bytes("pt-legacy")[4:])),
    Case("pytorch", "text-file", _file(b"hello, this is not a checkpoint\n" * 4)),
    Case("pytorch", "zeros", _file(bytes(4096))),
    *_truncation_cases(),
    # zip structure
    Case("pytorch", "zip-record-missing", _file(_edit_zip(_drop_record)), mentions=("data/1",)),
    Case("pytorch", "zip-record-short", _file(_edit_zip(_shorten_record)), mentions=("data/1",)),
    Case("pytorch", "zip-record-compressed", _file(_compress), mentions=("compressed",)),
    Case("pytorch", "zip-no-data-pkl", _file(_zip_without_pkl)),
    Case("pytorch", "zip-two-data-pkl", _file(_two_pkls), mentions=("data.pkl",)),
    Case("pytorch", "zip-data-pkl-corrupt", _file(_flip_in_record("archive/data.pkl", 40)), mentions=("corrupt",)),
    Case("pytorch", "zip-data-pkl-first-byte", _file(_flip_in_record("archive/data.pkl", 0)), mentions=("corrupt",)),
    Case("pytorch", "zip-data-pkl-crc-wrong", _file(_bad_crc), mentions=("corrupt",)),
    Case("pytorch", "zip-tensor-bytes-corrupt", _file(_flip_in_record("archive/data/1", 100)), mentions=("CRC",),
         inspect=False),  # tensor bytes are only read (and checked) when they are converted
    Case("pytorch", "zip-storage-claims-8GiB", _file(_storage_lies("zip")), lying=True, mentions=("data/0",)),
    Case("pytorch", "legacy-storage-claims-8GiB", _file(_storage_lies("legacy")), lying=True),
    Case("pytorch", "zip-shape-claims-4TiB", _file(_shape_lies("zip")), lying=True),
    Case("pytorch", "legacy-shape-claims-4TiB", _file(_shape_lies("legacy")), lying=True),
    Case("pytorch", "zip-untyped-shape-claims-8TiB", _file(_untyped_shape_lies), lying=True, mentions=("storage",)),
    Case("pytorch", "zip-untyped-one-element-too-many", _file(_untyped_one_too_many), mentions=("storage",)),
    Case("pytorch", "pickle-memo-index-2^32", _file(_memo_index_lies), lying=True),
    Case("pytorch", "pickle-bytes8-claims-1TiB", _file(_bytes8_lies), lying=True),
    Case("pytorch", "pickle-bytearray8-claims-1TiB", _file(_bytearray8_lies), lying=True),
    Case("pytorch", "dicts-nested-20000-deep", _file(_deep_dicts)),
    Case("pytorch", "zip-data-pkl-claims-4GiB", _file(_data_pkl_size_lies), lying=True),
    Case("pytorch", "tensor-name-lone-surrogate", _saved(lambda f: {"w\udc80": _t(2)}), mentions=("UTF-8",)),
    Case("pytorch", "legacy-count-disagrees", _file(_legacy_count_lies), lying=True),
    Case("pytorch", "zip-unknown-storage-type", _file(_unknown_storage), mentions=("FloatStorX12",)),
    # hostile pickles: exit 4, nothing run (a marker in the source folder would change it)
    *[Case("pytorch", f"hostile-{p.__name__.strip('_').lower()}-{kind}-{where}", _saved(_hostile(p, where), legacy=kind == "legacy"),
           code=4, mentions=("refused",))
      for p in (_RunsShell, _OpensFile, _Evals, _Popen) for kind in ("zip", "legacy") for where in ("value", "top", "nested")
      if where == "value" or p is _RunsShell],
    Case("pytorch", "hostile-raw-protocol-0", _raw_hostile_pickle, code=4, mentions=("refused",)),
    Case("pytorch", "hostile-persistent-id", _hostile_persistent_id, code=4, mentions=("refused",)),
    # what the pickle holds
    Case("pytorch", "top-level-list", _saved(lambda f: [_t(2), _t(3)]), mentions=("list",)),
    Case("pytorch", "top-level-int", _saved(lambda f: 42), mentions=("int",)),
    Case("pytorch", "top-level-str", _saved(lambda f: "weights"), mentions=("str",)),
    Case("pytorch", "top-level-tensor", _saved(lambda f: _t(3, 3)), mentions=("Tensor",)),
    Case("pytorch", "top-level-none", _saved(lambda f: None), mentions=("None",)),
    Case("pytorch", "legacy-top-level-list", _saved(lambda f: [1, 2, 3], legacy=True), mentions=("list",)),
    Case("pytorch", "int-keys", _saved(lambda f: {0: _t(2), 1: _t(3)}), mentions=("key",)),
    Case("pytorch", "tuple-key", _saved(lambda f: {"w": _t(2), ("a", 1): _t(3)}), mentions=("key",)),
    Case("pytorch", "nested-int-keys", _saved(lambda f: {"model": {0: _t(2)}}), mentions=("key",)),
    Case("pytorch", "int-and-str-key-collide", _saved(lambda f: {1: _t(2), "1": _t(3)}), mentions=("key",)),
    Case("pytorch", "flattened-names-collide", _saved(_duplicate_flat_names), mentions=("twice",)),
    Case("pytorch", "no-tensors", _saved(lambda f: {"epoch": 3, "lr": 0.1}), mentions=("no tensors",)),
    Case("pytorch", "empty-dict", _saved(lambda f: {}), mentions=("no tensors",)),
    Case("pytorch", "legacy-int-keys", _saved(lambda f: {0: _t(2)}, legacy=True), mentions=("key",)),
    Case("pytorch", "sparse-tensor", _saved(lambda f: {"w": _t(2, 2).to_sparse()}), mentions=("sparse",)),
    Case("pytorch", "sparse-tensor-claims-4TiB", _saved(_huge_sparse), mentions=("sparse",), lying=True),
    Case("pytorch", "meta-tensor", _saved(lambda f: {"w": __import__("torch").empty(3, device="meta")}), mentions=("meta",)),
    Case("pytorch", "parameter-ok-but-int-key", _saved(lambda f: {"a": {"b": _t(2)}, 5: _t(1)}), mentions=("key",)),
    Case("pytorch", "complex-dtype", _saved(lambda f: {"w": __import__("torch").zeros(2, dtype=__import__("torch").complex64)}),
         mentions=("complex64",)),
    Case("pytorch", "nan-with-strict", _saved(lambda f: {"w": __import__("torch").tensor([1.0, float("nan")])}),
         args=("--strict",), mentions=("NaN",), inspect=False),  # values are only looked at when converted
    *SHARDED,
]
