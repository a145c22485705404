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
hostile header fails fast with :class:`ValueError` (the caller turns that into a
one-line ``InputError``, with ``validate.check_gguf_header``'s precise message).
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path
from typing import Any

import numpy as np

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
MAX_DIMS = 8


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
        from lmconv import (
            dtypes as dt,  # numpy dtypes per GGML type, and the block sizes
        )

        with open(path, "rb") as fh:
            size = fh.seek(0, 2)
            if size < 24:
                raise ValueError(f"file of {size} bytes is shorter than a GGUF header")
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        self.mm = mm
        self.path = path
        magic, version, n_tensors, n_kv = _KV_HEAD.unpack_from(mm, 0)
        if magic != b"GGUF":
            raise ValueError("GGUF magic invalid")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} is not supported")
        if n_kv * 13 > size or n_tensors * 29 > size:
            raise ValueError(f"header claims {n_kv} keys and {n_tensors} tensors, more than the file holds")
        self.version = version
        pos = 24

        def string() -> str:
            nonlocal pos
            (n,) = _U64.unpack_from(mm, pos)
            end = pos + 8 + n
            if end > size:
                raise ValueError("a string runs past the end of the file")
            s = mm[pos + 8:end].decode("utf-8")
            pos = end
            return s

        def u32() -> int:
            nonlocal pos
            (v,) = _U32.unpack_from(mm, pos)
            pos += 4
            return v

        kv: dict[str, Any] = {}
        types: dict[str, tuple[int, int | None]] = {}
        for _ in range(n_kv):
            key = string()
            vtype = u32()
            if key in kv:
                raise ValueError(f"duplicate key {key}")
            if vtype in _SCALARS:
                # struct gives what numpy's tolist() gives: a float32 as the Python float of its value
                kv[key] = _STRUCTS[vtype].unpack_from(mm, pos)[0]
                pos += _SCALARS[vtype].itemsize
                types[key] = (vtype, None)
            elif vtype == STRING:
                kv[key] = string()
                types[key] = (vtype, None)
            elif vtype == ARRAY:
                sub = u32()
                (count,) = _U64.unpack_from(mm, pos)
                pos += 8
                if sub in _SCALARS:
                    item = _SCALARS[sub]
                    if count * item.itemsize > size - pos:
                        raise ValueError(f"array of {count} runs past the end of the file")
                    arr = np.frombuffer(mm, dtype=item, count=count, offset=pos) if count else np.empty(0, item)
                    kv[key] = arr.tolist()
                    pos += count * item.itemsize
                elif sub == STRING:
                    if count * 8 > size - pos:
                        raise ValueError(f"array of {count} strings runs past the end of the file")
                    kv[key], pos = _strings(mm, pos, count, size)
                else:
                    raise ValueError(f"unsupported array element type {sub}")
                types[key] = (vtype, sub if count else None)  # gguf-py records no element type for []
            else:
                raise ValueError(f"unknown metadata value type {vtype}")
        self.kv = kv
        self.types = types

        infos = []
        for _ in range(n_tensors):
            name = string()
            n_dims = u32()
            if n_dims > MAX_DIMS:
                raise ValueError(f"tensor {name!r} claims {n_dims} dimensions")
            dims = list(struct.unpack_from(f"<{n_dims}Q", mm, pos))
            pos += 8 * n_dims
            ggml_type = u32()
            (offset,) = _U64.unpack_from(mm, pos)
            pos += 8
            infos.append((name, dims, ggml_type, offset))

        align = DEFAULT_ALIGNMENT
        if "general.alignment" in kv:
            if types["general.alignment"] != (4, None):
                raise ValueError("Bad type for general.alignment field")
            align = int(kv["general.alignment"])
            if align == 0 or align & (align - 1):
                raise ValueError("Invalid alignment: must be a non-zero power of two")
        self.alignment = align
        self.data_offset = start = pos + (-pos % align)

        tensors: list[GGUFTensorInfo] = []
        seen: set[str] = set()
        for name, dims, ggml_type, offset in infos:
            if name in seen:
                raise ValueError(f"Found duplicated tensor with name {name}")
            seen.add(name)
            try:
                d = dt.from_ggml(ggml_type)
            except (KeyError, ValueError):
                raise UnknownTensorType(f"tensor {name!r} has unknown GGML type {ggml_type}") from None
            n_el = 1
            for x in dims:
                n_el *= int(x)
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
            data_offset = start + int(offset)
            if data_offset + n_bytes > size:
                raise ValueError(f"tensor {name!r} runs past the end of the file")
            tensors.append(GGUFTensorInfo(name, ggml_type, dims, n_el, n_bytes, data_offset, mm, np_dtype, np_shape))
        self.tensors = tensors


def _strings(mm: mmap.mmap, pos: int, count: int, size: int) -> tuple[list[str], int]:
    out: list[str] = []
    append = out.append
    unpack = _U64.unpack_from
    for _ in range(count):
        (n,) = unpack(mm, pos)
        pos += 8
        end = pos + n
        if end > size:
            raise ValueError("a string runs past the end of the file")
        append(mm[pos:end].decode("utf-8"))
        pos = end
    return out, pos
