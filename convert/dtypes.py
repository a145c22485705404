"""Element types of the IR, and how every container spells them.

One table, so that a reader or writer never carries its own dtype mapping: the
safetensors code, the torch dtype name and the GGML type of each lmconv dtype
live here. Plain types map to a numpy dtype (bf16 and fp8 through ml_dtypes);
quantised block types (q8_0 … q6_K) have no element dtype: their payload is the
raw block bytes, laid out as gguf-py lays them out (rows × bytes-per-row).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import ml_dtypes
import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

Kind = Literal["float", "int", "bool", "quant"]


@dataclass(frozen=True)
class DType:
    """An element type: plain (one numpy dtype per element) or a quantised block type."""

    name: str
    kind: Kind
    numpy: np.dtype | None
    block_size: int
    type_size: int
    safetensors: str | None = None
    torch: str | None = None
    ggml: GGMLQuantizationType | None = None

    @property
    def is_float(self) -> bool:
        return self.kind == "float"

    @property
    def is_quantized(self) -> bool:
        return self.kind == "quant"

    def nbytes(self, shape: tuple[int, ...]) -> int:
        """Bytes needed for a tensor of ``shape`` (row-major; blocks run along the last axis)."""
        n = 1
        for d in shape:
            n *= int(d)
        return n // self.block_size * self.type_size

    def storage_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the array ``Tensor.load()`` returns: the shape itself, or rows × bytes for blocks."""
        if not self.is_quantized:
            return tuple(shape)
        if not shape or shape[-1] % self.block_size:
            raise ValueError(f"a row of {shape[-1] if shape else 0} elements does not divide into {self.name} blocks of {self.block_size}")
        return (*shape[:-1], shape[-1] // self.block_size * self.type_size)

    def __str__(self) -> str:
        return self.name


def _plain(name: str, kind: Kind, np_dtype: object, st: str | None, torch: str | None, ggml: str | None) -> DType:
    dt = np.dtype(np_dtype)  # type: ignore[call-overload]
    return DType(
        name=name, kind=kind, numpy=dt, block_size=1, type_size=dt.itemsize,
        safetensors=st, torch=torch, ggml=GGMLQuantizationType[ggml] if ggml else None,
    )


PLAIN_DTYPES: tuple[DType, ...] = (
    _plain("f64", "float", np.float64, "F64", "float64", "F64"),
    _plain("f32", "float", np.float32, "F32", "float32", "F32"),
    _plain("f16", "float", np.float16, "F16", "float16", "F16"),
    _plain("bf16", "float", ml_dtypes.bfloat16, "BF16", "bfloat16", "BF16"),
    _plain("f8_e4m3", "float", ml_dtypes.float8_e4m3fn, "F8_E4M3", "float8_e4m3fn", None),
    _plain("f8_e5m2", "float", ml_dtypes.float8_e5m2, "F8_E5M2", "float8_e5m2", None),
    _plain("i64", "int", np.int64, "I64", "int64", "I64"),
    _plain("i32", "int", np.int32, "I32", "int32", "I32"),
    _plain("i16", "int", np.int16, "I16", "int16", "I16"),
    _plain("i8", "int", np.int8, "I8", "int8", "I8"),
    _plain("u64", "int", np.uint64, "U64", "uint64", None),
    _plain("u32", "int", np.uint32, "U32", "uint32", None),
    _plain("u16", "int", np.uint16, "U16", "uint16", None),
    _plain("u8", "int", np.uint8, "U8", "uint8", None),
    _plain("bool", "bool", np.bool_, "BOOL", "bool", None),
)


def _quantized() -> tuple[DType, ...]:
    plain_ggml = {d.ggml for d in PLAIN_DTYPES if d.ggml is not None}
    out = []
    for qt, (block, size) in GGML_QUANT_SIZES.items():
        if qt in plain_ggml:
            continue
        # GGML spells K-quants "Q4_K"; lmconv's canonical spelling keeps that case ("q4_K")
        # so that names round-trip with llama.cpp's own tables; lookups ignore case.
        name = qt.name.lower().replace("_k", "_K")
        out.append(DType(name=name, kind="quant", numpy=None, block_size=block, type_size=size, ggml=qt))
    return tuple(out)


ALL_DTYPES: tuple[DType, ...] = PLAIN_DTYPES + _quantized()
_BY_NAME = {d.name.lower(): d for d in ALL_DTYPES}
_ALIASES = {
    "float64": "f64", "float32": "f32", "float": "f32", "float16": "f16", "half": "f16",
    "bfloat16": "bf16", "float8_e4m3fn": "f8_e4m3", "f8_e4m3fn": "f8_e4m3", "float8_e5m2": "f8_e5m2",
    "int64": "i64", "int32": "i32", "int16": "i16", "int8": "i8",
    "uint64": "u64", "uint32": "u32", "uint16": "u16", "uint8": "u8",
}
_BY_SAFETENSORS = {d.safetensors: d for d in PLAIN_DTYPES if d.safetensors}
_BY_TORCH = {d.torch: d for d in PLAIN_DTYPES if d.torch}
_BY_GGML = {d.ggml: d for d in ALL_DTYPES if d.ggml is not None}

F32 = _BY_NAME["f32"]
F16 = _BY_NAME["f16"]
BF16 = _BY_NAME["bf16"]


def get(name: str) -> DType:
    """Look a dtype up by any usual spelling, case-insensitive ("F16", "float16", "Q4_K", "q8_0")."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    try:
        return _BY_NAME[key]
    except KeyError:
        raise KeyError(name) from None


def names(kind: Kind | None = None) -> list[str]:
    """All canonical names, optionally of one kind: for error messages that list the valid ones."""
    return [d.name for d in ALL_DTYPES if kind is None or d.kind == kind]


@lru_cache(maxsize=None)
def from_numpy(dtype: np.dtype) -> DType:
    """The lmconv dtype of a numpy array (bf16/fp8 come from ml_dtypes)."""
    dtype = np.dtype(dtype)
    for d in PLAIN_DTYPES:
        if d.numpy == dtype:
            return d
    raise KeyError(str(dtype))


def from_safetensors(code: str) -> DType:
    return _BY_SAFETENSORS[code]


def from_torch(name: str) -> DType:
    """From a torch dtype's name without the ``torch.`` prefix (``str(t.dtype)[6:]``)."""
    return _BY_TORCH[name]


def from_ggml(qtype: int) -> DType:
    return _BY_GGML[GGMLQuantizationType(qtype)]
