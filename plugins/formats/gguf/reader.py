"""A fast, memory-mapped GGUF header parser (little-endian GGUF v2/v3).

gguf-py's ``GGUFReader`` builds a numpy view for every part of every field: for a
vocabulary of 32k tokens that is ~130k small arrays and seconds of work, which made
``lmconv inspect`` slow and every GGUF read pay it. This parser walks the header
once with ``struct`` over an ``mmap``, reads numeric arrays with one
``np.frombuffer`` each, and gives values exactly as gguf-py's
``ReaderField.contents()`` does (numpy scalars through ``tolist()``: float32
values as Python floats of the float32, strings decoded as strict UTF-8). Tensor
data stay in the mapping: a tensor's ``data`` is a numpy view, nothing is read
until it is used.

Every count and length is checked against the file size before it is used, so a
hostile header fails fast with :class:`ValueError` naming what is wrong (the caller
turns that into a one-line ``InputError``).
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path
from typing import Any

import numpy as np

from .ggml_types import dtype_of

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_KV_HEAD = struct.Struct("<4sIQQ")
# GGUFValueType → (numpy dtype, byte size); 8 = string, 9 = array
_SCALARS: dict[int, np.dtype] = {
    0: np.dtype("<u1"), 1: np.dtype("<i1"), 2: np.dtype("<u2"), 3: np.dtype("<i2"), 4: np.dtype("<u4"),
    5: np.dtype("<i4"), 6: np.dtype("<f4"), 7: np.dtype(np.bool_), 10: np.dtype("<u8"), 11: np.dtype("<i8"),
    12: np.dtype("<f8"),
}
_STRUCTS = {k: struct.Struct("<" + {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
                                     12: "d"}[k]) for k in _SCALARS}
STRING, ARRAY = 8, 9
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS: llama.cpp refuses more
_INTS = {0, 1, 2, 3, 4, 5, 10, 11}
_TYPE_NAMES = {0: "u8", 1: "i8", 2: "u16", 3: "i16", 4: "u32", 5: "i32", 6: "f32", 7: "bool", 8: "string", 9: "array",
               10: "u64", 11: "i64", 12: "f64"}


class UnknownTensorType(ValueError):
    """A tensor of a GGML type lmconv has no dtype for (its message is the whole story)."""


class GGUFTensorInfo:
    """One tensor's descriptor; ``data`` is a view into the file's mapping (gguf-py's ReaderTensor shape)."""

    __slots__ = (
        "_mm",
        "_np_dtype",
        "_np_shape",
        "data_offset",
        "n_bytes",
        "n_elements",
        "name",
        "shape",
        "tensor_type",
    )

    def __init__(self, name: str, tensor_type: int, shape: list[int], n_elements: int, n_bytes: int,
                 data_offset: int, mm: mmap.mmap, np_dtype: np.dtype, np_shape: tuple[int, ...]) -> None:
        self.name = name
        self.tensor_type = tensor_type
        self.shape = shape  # GGML order (innermost first), as in the file
        self.n_elements = n_elements
        self.n_bytes = n_bytes
        self.data_offset = data_offset
        self._mm = mm
        self._np_dtype = np_dtype
        self._np_shape = np_shape

    @property
    def data(self) -> np.ndarray:
        count = self.n_bytes // self._np_dtype.itemsize
        return np.frombuffer(self._mm, dtype=self._np_dtype, count=count, offset=self.data_offset).reshape(self._np_shape)


class GGUFFile:
    """Parsed header of one GGUF file: ``kv`` (key → value), ``types`` (key → (type, element type or None)),
    ``tensors`` (in file order), ``data_offset``, ``alignment`` and the read-only mapping ``mm``."""

    def __init__(self, path: Path | str) -> None:
        with open(path, "rb") as fh:
            size = fh.seek(0, 2)
            if size < 24:
                raise ValueError(f"is truncated: {size} bytes is less than a GGUF header")
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        self.mm = mm
        self.path = path
        magic, version, n_tensors, n_kv = _KV_HEAD.unpack_from(mm, 0)
        if magic != b"GGUF":
            raise ValueError("GGUF magic invalid")
        if version not in (2, 3):
            if int.from_bytes(version.to_bytes(4, "little"), "big") in (1, 2, 3):
                raise ValueError("is a big-endian GGUF; lmconv reads little-endian GGUF only")
            raise ValueError(f"GGUF version {version} is not supported (2 and 3 are)")
        if n_kv * 13 > size or n_tensors * 29 > size:
            raise ValueError(f"header claims {n_kv} metadata keys and {n_tensors} tensors, more than its {size} bytes "
                             f"can hold (truncated or corrupt)")
        self.version = version
        pos = 24

        def need(n: int, where: str) -> None:
            if pos + n > size:
                raise ValueError(f"is truncated inside {where} (runs past the end of the file)")

        def string(where: str, what: str) -> str:
            nonlocal pos
            need(8, where)
            (n,) = _U64.unpack_from(mm, pos)
            if pos + 8 + n > size:
                raise ValueError(f"{what} claims {n} bytes, past the end of the file (truncated or corrupt)")
            end = pos + 8 + n
            try:
                s = mm[pos + 8:end].decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"{what} is not valid UTF-8") from None
            pos = end
            return s

        def u32(where: str) -> int:
            nonlocal pos
            need(4, where)
            (v,) = _U32.unpack_from(mm, pos)
            pos += 4
            return v

        kv: dict[str, Any] = {}
        types: dict[str, tuple[int, int | None]] = {}
        for i in range(n_kv):
            key = string("the metadata", f"metadata key #{i}")
            where = f"metadata key {key!r}"
            vtype = u32(where)
            if key in kv:
                raise ValueError(f"metadata key {key!r} appears twice")
            if vtype in _SCALARS:
                need(_SCALARS[vtype].itemsize, where)
                # struct gives what numpy's tolist() gives: a float32 as the Python float of its value
                kv[key] = _STRUCTS[vtype].unpack_from(mm, pos)[0]
                pos += _SCALARS[vtype].itemsize
                types[key] = (vtype, None)
            elif vtype == STRING:
                kv[key] = string(where, f"the value of {key!r}")
                types[key] = (vtype, None)
            elif vtype == ARRAY:
                sub = u32(where)
                need(8, where)
                (count,) = _U64.unpack_from(mm, pos)
                pos += 8
                if sub in _SCALARS:
                    item = _SCALARS[sub]
                    if count * item.itemsize > size - pos:
                        raise ValueError(f"{where}: an array of {count} values runs past the end of the file "
                                         f"(truncated or corrupt)")
                    arr = np.frombuffer(mm, dtype=item, count=count, offset=pos) if count else np.empty(0, item)
                    kv[key] = arr.tolist()
                    pos += count * item.itemsize
                elif sub == STRING:
                    if count * 8 > size - pos:
                        raise ValueError(f"{where}: an array of {count} strings runs past the end of the file "
                                         f"(truncated or corrupt)")
                    kv[key], pos = _strings(mm, pos, count, size, key)
                elif sub == ARRAY:
                    raise ValueError(f"{where}: nested arrays are not supported (llama.cpp reads none)")
                else:
                    raise ValueError(f"{where}: array of unknown value type {sub}")
                types[key] = (vtype, sub if count else None)  # gguf-py records no element type for []
            else:
                raise ValueError(f"{where} has unknown value type {vtype}")
        self.kv = kv
        self.types = types

        infos = []
        for i in range(n_tensors):
            name = string("the tensor infos", f"tensor name #{i}")
            where = f"the info of tensor {name!r}"
            n_dims = u32(where)
            if n_dims > MAX_DIMS:
                raise ValueError(f"tensor {name!r} has {n_dims} dimensions; GGUF allows at most {MAX_DIMS}")
            need(8 * n_dims + 12, where)
            dims = list(struct.unpack_from(f"<{n_dims}Q", mm, pos))
            pos += 8 * n_dims
            ggml_type = u32(where)
            (offset,) = _U64.unpack_from(mm, pos)
            pos += 8
            infos.append((name, dims, ggml_type, offset))

        align = DEFAULT_ALIGNMENT
        if "general.alignment" in kv:
            vt = types["general.alignment"][0]
            if vt != 4:
                raise ValueError(f"general.alignment must be a u32, not a {_TYPE_NAMES.get(vt, vt)}")
            align = int(kv["general.alignment"])
            if align == 0 or align & (align - 1):
                raise ValueError(f"general.alignment {align} is not a power of two")
        self.alignment = align
        self.data_offset = start = pos + (-pos % align)
        if start > size:
            raise ValueError(f"the data section would start at byte {start}, past the end of the {size}-byte file "
                             f"(truncated, or general.alignment {align} is a lie)")

        tensors: list[GGUFTensorInfo] = []
        seen: set[str] = set()
        for name, dims, ggml_type, offset in infos:
            if name in seen:
                raise ValueError(f"tensor name {name!r} appears twice")
            seen.add(name)
            try:
                d = dtype_of(ggml_type)
            except (KeyError, ValueError):
                raise UnknownTensorType(f"tensor {name!r} has unknown GGML type {ggml_type}") from None
            n_el = 1
            for x in dims:
                n_el *= int(x)
            if n_el >= 2**63:
                raise ValueError(f"tensor {name!r} claims dimensions {dims}: more elements than can exist")
            np_shape = tuple(int(x) for x in reversed(dims))
            if d.is_quantized:
                if not dims or dims[0] % d.block_size:
                    raise ValueError(f"tensor {name!r}: rows of {dims[0] if dims else 0} do not divide into blocks")
                n_bytes = n_el * d.type_size // d.block_size
                np_dtype = np.dtype(np.uint8)
                np_shape = (*np_shape[:-1], np_shape[-1] // d.block_size * d.type_size)
            else:
                np_dtype = np.dtype(d.numpy)
                n_bytes = n_el * np_dtype.itemsize
            if offset % align:
                raise ValueError(f"tensor {name!r} starts at data offset {offset}, not a multiple of the alignment {align}")
            data_offset = start + int(offset)
            if data_offset + n_bytes > size:
                raise ValueError(f"tensor {name!r} runs past the end of the file (truncated or corrupt)")
            tensors.append(GGUFTensorInfo(name, ggml_type, dims, n_el, n_bytes, data_offset, mm, np_dtype, np_shape))
        # llama.cpp requires the tensors packed one after the other (each padded to the alignment):
        # anything else is overlapping data or a size that disagrees with the dimensions.
        expected, prev = 0, None
        for t in sorted(tensors, key=lambda t: (t.data_offset, t.n_bytes)):
            off = t.data_offset - start
            if off < expected and prev is not None:
                raise ValueError(f"tensor {t.name!r} overlaps tensor {prev.name!r} in the data section")
            if off > expected:
                what = f"tensor {prev.name!r}" if prev is not None else "the data section"
                raise ValueError(f"{off - expected} unused bytes before tensor {t.name!r}: the size of {what} disagrees "
                                 f"with the tensor infos")
            expected = off + t.n_bytes + (-t.n_bytes % align)
            prev = t
        if size - start > expected + align:
            raise ValueError(f"{size - start - expected} bytes after the last tensor that no tensor info describes")
        self.tensors = tensors


def _strings(mm: mmap.mmap, pos: int, count: int, size: int, key: str) -> tuple[list[str], int]:
    out: list[str] = []
    append = out.append
    unpack = _U64.unpack_from
    for i in range(count):
        if pos + 8 > size:
            raise ValueError(f"is truncated inside metadata key {key!r} (runs past the end of the file)")
        (n,) = unpack(mm, pos)
        pos += 8
        end = pos + n
        if end > size:
            raise ValueError(f"string {i} of {key!r} claims {n} bytes, past the end of the file (truncated or corrupt)")
        try:
            append(mm[pos:end].decode("utf-8"))
        except UnicodeDecodeError:
            raise ValueError(f"string {i} of {key!r} is not valid UTF-8") from None
        pos = end
    return out, pos
