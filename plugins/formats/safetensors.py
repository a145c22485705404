"""safetensors, single file and sharded (``model.safetensors.index.json``).

Reading parses and validates the header ourselves and memory-maps the data, so
a tensor costs nothing until it is loaded and bf16/fp8 come out as ml_dtypes
arrays (the ``safetensors`` numpy API has no bf16). Writing streams one tensor at
a time after the header, which ``safetensors.save_file`` cannot do (it needs every
tensor in memory at once); the files are checked against the reference library
in the tests.
"""

from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path
from typing import Any

import numpy as np
from lmconv import dtypes as dt
from lmconv.errors import InputError
from lmconv.formats import Format, ReadOptions, WriteOptions
from lmconv.hookspecs import hookimpl
from lmconv.ir import Model, Tensor
from lmconv.memmap import drop_pages
from lmconv.sharding import (
    DEFAULT_MAX_SHARD,
    MAX_SHARD_SIZE,
    read_shard_index,
    shard_name,
    shard_tensors,
    write_index,
)
from lmconv.streaming import write_arrays
from lmconv.units import parse_size

MAX_HEADER = 100 * 1024 * 1024  # the limit the reference implementation enforces
ALIASES_KEY = "lmconv.aliases"
# safetensors' spelling of each lmconv dtype it stores
CODE_OF_DTYPE = {"f64": "F64", "f32": "F32", "f16": "F16", "bf16": "BF16", "f8_e4m3": "F8_E4M3", "f8_e5m2": "F8_E5M2",
                 "i64": "I64", "i32": "I32", "i16": "I16", "i8": "I8", "u64": "U64", "u32": "U32", "u16": "U16",
                 "u8": "U8", "bool": "BOOL"}
DTYPE_OF_CODE = {v: k for k, v in CODE_OF_DTYPE.items()}
INDEX_SUFFIX = ".safetensors.index.json"


class SafetensorsFile:
    """A validated, memory-mapped safetensors file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            fh = open(path, "rb")
        except OSError as exc:
            raise InputError(f"cannot open: {exc.strerror}", path=path) from None
        with fh:
            size = fh.seek(0, 2)
            if size < 8:
                raise InputError(f"is truncated: {size} bytes, a safetensors file needs at least 8", path=path)
            fh.seek(0)
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > MAX_HEADER:
                raise InputError(f"header claims {n} bytes (limit {MAX_HEADER}): corrupt or hostile", path=path)
            if 8 + n > size:
                raise InputError(f"header claims {n} bytes but the file has only {size - 8} after the length: truncated", path=path)
            raw = fh.read(n)
            self.mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            header = json.loads(raw.decode("utf-8"), object_pairs_hook=_refuse_repeated_keys)
        except _RepeatedKey as exc:
            raise InputError(f"header names tensor {exc.args[0]!r} twice", path=path) from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"header is not valid UTF-8 JSON ({exc})", path=path) from None
        if not isinstance(header, dict):
            raise InputError("header is not a JSON object", path=path)
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            raise InputError("__metadata__ must map strings to strings", path=path)
        self.metadata: dict[str, str] = meta
        self.data_start = 8 + n
        data_len = size - self.data_start
        self.entries: dict[str, tuple[dt.DType, tuple[int, ...], int, int]] = {}
        spans = []
        for name, info in header.items():
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                raise InputError(f"tensor name {name!r} is not valid UTF-8", path=path) from None
            if not isinstance(info, dict) or set(info) - {"dtype", "shape", "data_offsets"} or len(info) != 3:
                raise InputError(f"tensor {name!r} has a malformed entry", path=path)
            try:
                dtype = dt.get(DTYPE_OF_CODE[info["dtype"]])
            except (KeyError, TypeError):
                raise InputError(f"tensor {name!r} has unknown dtype {info['dtype']!r}", path=path) from None
            shape, offs = info["shape"], info["data_offsets"]
            if not (isinstance(shape, list) and all(type(d) is int and 0 <= d < 2**62 for d in shape)):
                raise InputError(f"tensor {name!r} has an invalid shape {shape!r}", path=path)
            if not (isinstance(offs, list) and len(offs) == 2 and all(type(o) is int for o in offs) and 0 <= offs[0] <= offs[1]):
                raise InputError(f"tensor {name!r} has invalid data offsets {offs!r}", path=path)
            begin, end = offs
            want = dtype.nbytes(tuple(shape))
            if end - begin != want:
                raise InputError(f"tensor {name!r} spans {end - begin} bytes but {info['dtype']}{shape} needs {want}", path=path)
            if end > data_len:
                raise InputError(f"tensor {name!r} runs past the end of the file (truncated)", path=path)
            self.entries[name] = (dtype, tuple(shape), begin, end)
            spans.append((begin, end, name))
        # Like the reference library: the tensors tile the data section exactly, in some order.
        spans.sort()
        for (b1, e1, n1), (b2, e2, n2) in zip(spans, spans[1:]):
            if b2 < e1:
                raise InputError(f"tensors {n1!r} and {n2!r} overlap in the data section", path=path)
            if b2 > e1:
                raise InputError(f"data section has a gap of {b2 - e1} bytes between tensors {n1!r} and {n2!r}", path=path)
        if spans and spans[0][0] != 0:
            raise InputError(f"data section has a gap of {spans[0][0]} bytes before tensor {spans[0][2]!r}", path=path)
        covered = spans[-1][1] if spans else 0
        if covered != data_len:
            raise InputError(f"{data_len - covered} bytes after the last tensor: not a safetensors file as written", path=path)

    def tensor(self, name: str) -> Tensor:
        dtype, shape, begin, end = self.entries[name]
        mm, start, path = self.mm, self.data_start + begin, self.path

        def load() -> np.ndarray:
            count = (end - begin) // dtype.type_size
            arr = np.frombuffer(mm, dtype=dtype.numpy, count=count, offset=start)
            return arr.reshape(shape)

        return Tensor(name, shape, dtype, load, origin=str(path), release=lambda: drop_pages(mm, start, end - begin))


class _RepeatedKey(ValueError):
    pass


def _refuse_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads keeps the last of two equal keys; a header that names a tensor twice is refused."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _RepeatedKey(key)
        out[key] = value
    return out


def _aliases(meta: dict[str, str], path: Path) -> dict[str, str]:
    """alias → tensor it ties to, as lmconv records ties in ``__metadata__``."""
    raw = meta.get(ALIASES_KEY)
    if not raw:
        return {}
    try:
        aliases = json.loads(raw)
        assert isinstance(aliases, dict) and all(isinstance(v, str) for v in aliases.values())
    except (ValueError, AssertionError):
        raise InputError(f"__metadata__[{ALIASES_KEY!r}] is not a JSON object of names", path=path) from None
    return aliases


def _apply_aliases(model: Model, meta: dict[str, str], path: Path) -> None:
    for alias, target in _aliases(meta, path).items():
        t = model.tensors.get(target)
        if t is not None and alias not in model.tensors:
            model.tensors[target] = t.replace(aliases=t.aliases + (alias,))


def read_safetensors(path: Path) -> Model:
    """One file or, for an index JSON, all its shards."""
    model = Model(source=str(path), format="safetensors")
    if path.name.endswith(INDEX_SUFFIX):
        index = read_shard_index(path, "safetensors")
        shards: dict[str, SafetensorsFile] = {}
        meta: dict[str, str] = {}
        for shard in dict.fromkeys(index.values()):
            shards[shard] = SafetensorsFile(path.parent / shard)
            meta.update(shards[shard].metadata)
        # A tie is stored once; its other names are in the index too (transformers expects them
        # there), mapped to the shard of the tensor they alias, which does not hold them.
        tied = set(_aliases(meta, path))
        for name, shard in index.items():
            f = shards[shard]
            if name not in f.entries:
                if name in tied:
                    continue
                raise InputError(f"index maps {name!r} to {shard} but that shard has no such tensor", path=path)
            model.add(f.tensor(name))
    else:
        f = SafetensorsFile(path)
        meta = f.metadata
        for name in f.entries:
            model.add(f.tensor(name))
    model.metadata["safetensors"] = {k: v for k, v in meta.items() if k != ALIASES_KEY}
    _apply_aliases(model, meta, path)
    return model


def _header_for(model: Model, tensors: list[Tensor]) -> tuple[bytes, list[int]]:
    meta = dict(model.metadata.get("safetensors") or {})
    meta.setdefault("format", "pt")  # transformers refuses safetensors without a known format
    aliases = {a: t.name for t in tensors for a in t.aliases}
    if aliases:
        meta[ALIASES_KEY] = json.dumps(aliases, sort_keys=True)
    header: dict[str, Any] = {"__metadata__": meta}
    offset = 0
    sizes = []
    for t in tensors:
        code = CODE_OF_DTYPE.get(t.dtype.name)
        if code is None:
            raise InputError(f"tensor {t.name!r} has dtype {t.dtype}, which safetensors cannot store", path=model.source or None)
        n = t.nbytes
        header[t.name] = {"dtype": code, "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
        sizes.append(n)
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # keep the data section 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw, sizes


def write_safetensors_file(model: Model, tensors: list[Tensor], path: Path, options: WriteOptions) -> None:
    """Stream ``tensors`` into one safetensors file: header first, then data in order."""
    header, sizes = _header_for(model, tensors)
    with open(path, "wb") as fh:
        fh.write(header)
        write_arrays(fh, tensors, options)


def write_sharded(
    model: Model, folder: Path, stem: str, max_bytes: int | None, options: WriteOptions, *, always_index: bool = False
) -> list[Path]:
    """``{stem}.safetensors`` or ``{stem}-0000i-of-0000n.safetensors`` + ``{stem}.safetensors.index.json``.

    ``always_index`` writes shards and an index even when one shard holds everything:
    for a target the user named ``*.safetensors.index.json``.
    """
    tensors = list(model)
    groups = shard_tensors(tensors, max_bytes) if max_bytes else [tensors]
    if len(groups) == 1 and not always_index:
        path = folder / f"{stem}.safetensors"
        write_safetensors_file(model, tensors, path, options)
        return [path]
    names = [shard_name(stem, i, len(groups), ".safetensors") for i in range(1, len(groups) + 1)]
    for group, name in zip(groups, names):
        write_safetensors_file(model, group, folder / name, options)
    return [folder / n for n in names] + [write_index(folder / f"{stem}{INDEX_SUFFIX}", groups, names)]


class SafetensorsFormat(Format):
    name = "safetensors"
    extensions = (".safetensors", INDEX_SUFFIX)
    description = "safetensors (single file or sharded with an index), memory-mapped"
    stores_dtypes = frozenset(CODE_OF_DTYPE)

    def sniff(self, path: Path) -> bool:
        if path.name.endswith(INDEX_SUFFIX):
            return path.is_file()
        if not path.is_file():
            return False
        with open(path, "rb") as fh:
            head = fh.read(9)
        if len(head) < 9:
            return False
        (n,) = struct.unpack("<Q", head[:8])
        return head[8:9] == b"{" and n >= 2

    def read(self, path: Path, options: ReadOptions) -> Model:
        return read_safetensors(path)

    def output_paths(self, path: Path, options: WriteOptions) -> list[Path]:
        return [path]

    def write(self, model: Model, path: Path, options: WriteOptions) -> list[Path]:
        max_shard = options.extra.get("max_shard_size")
        if path.name.endswith(INDEX_SUFFIX):
            # A target named like an index gets shards and that index: one safetensors file under
            # an index name would be a file no reader (lmconv's own included) accepts.
            stem = path.name[: -len(INDEX_SUFFIX)]
            size = parse_size(max_shard or DEFAULT_MAX_SHARD, option="--max-shard-size")
            return write_sharded(model, path.parent, stem, size, options, always_index=True)
        if max_shard and path.name.endswith(".safetensors"):
            stem = path.name[: -len(".safetensors")]
            return write_sharded(model, path.parent, stem, parse_size(max_shard, option='--max-shard-size'), options)
        write_safetensors_file(model, list(model), path, options)
        return [path]


@hookimpl
def register_formats(register: Any) -> None:
    register(SafetensorsFormat())


@hookimpl
def register_options(register: Any) -> None:
    register(MAX_SHARD_SIZE)
