"""Element types of the IR.

Plain types (floats, ints, bool) are fixed here, one numpy dtype each (bf16 and fp8 through
ml_dtypes). Quantised block types (q8_0, q4_K, iq4_nl …) belong to the plugins that read, store or
produce them: a plugin declares one with :func:`block_type`, which interns it by name, so that a
GGUF reader and a quantiser that both know q4_K share one ``DType``, and a new quantiser plugin can
bring a block type nobody knew. How a container spells a type (safetensors' ``"F16"``, torch's
``float16``, a GGML type id) is that format plugin's business, not the core's.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import ml_dtypes
import numpy as np

Kind = Literal["float", "int", "bool", "quant"]


@dataclass(frozen=True)
class DType:
    """An element type: plain (one numpy dtype per element) or a quantised block type, whose
    payload is raw bytes: ``block_size`` elements of a row take ``type_size`` bytes."""

    name: str
    kind: Kind
    numpy: np.dtype | None
    block_size: int
    type_size: int

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


def _plain(name: str, kind: Kind, np_dtype: object) -> DType:
    dt = np.dtype(np_dtype)  # type: ignore[call-overload]
    return DType(name=name, kind=kind, numpy=dt, block_size=1, type_size=dt.itemsize)


PLAIN_DTYPES: tuple[DType, ...] = (
    _plain("f64", "float", np.float64),
    _plain("f32", "float", np.float32),
    _plain("f16", "float", np.float16),
    _plain("bf16", "float", ml_dtypes.bfloat16),
    _plain("f8_e4m3", "float", ml_dtypes.float8_e4m3fn),
    _plain("f8_e5m2", "float", ml_dtypes.float8_e5m2),
    _plain("i64", "int", np.int64),
    _plain("i32", "int", np.int32),
    _plain("i16", "int", np.int16),
    _plain("i8", "int", np.int8),
    _plain("u64", "int", np.uint64),
    _plain("u32", "int", np.uint32),
    _plain("u16", "int", np.uint16),
    _plain("u8", "int", np.uint8),
    _plain("bool", "bool", np.bool_),
)
_ALIASES = {
    "float64": "f64", "float32": "f32", "float": "f32", "float16": "f16", "half": "f16",
    "bfloat16": "bf16", "float8_e4m3fn": "f8_e4m3", "f8_e4m3fn": "f8_e4m3", "float8_e5m2": "f8_e5m2",
    "int64": "i64", "int32": "i32", "int16": "i16", "int8": "i8",
    "uint64": "u64", "uint32": "u32", "uint16": "u16", "uint8": "u8",
}
_BY_NAME: dict[str, DType] = {d.name.lower(): d for d in PLAIN_DTYPES}
_BLOCKS: dict[str, DType] = {}
_lock = threading.Lock()

F32 = _BY_NAME["f32"]
F16 = _BY_NAME["f16"]
BF16 = _BY_NAME["bf16"]


def block_type(name: str, block_size: int, type_size: int) -> DType:
    """The quantised block type ``name`` (declared here on first use, shared afterwards).

    ``name`` is the spelling lmconv shows (llama.cpp's, e.g. ``q4_K``); lookups ignore case. Declaring
    a name again with other sizes is a plugin bug and raises ``ValueError``.
    """
    key = name.lower()
    with _lock:
        known = _BLOCKS.get(key)
        if known is not None:
            if (known.block_size, known.type_size) != (block_size, type_size):
                raise ValueError(f"block type {name!r} declared with blocks of {block_size}/{type_size} bytes, "
                                 f"but it is already {known.block_size}/{known.type_size}")
            return known
        if key in _BY_NAME:
            raise ValueError(f"{name!r} is a plain dtype, not a block type")
        d = DType(name=name, kind="quant", numpy=None, block_size=int(block_size), type_size=int(type_size))
        _BLOCKS[key] = d
        return d


def _lookup(key: str) -> DType | None:
    return _BY_NAME.get(key) or _BLOCKS.get(key)


def get(name: str) -> DType:
    """Look a dtype up by any usual spelling, case-insensitive ("F16", "float16", "Q4_K", "q8_0").

    Block types exist once a plugin has declared them; when a name is not known yet, the plugins
    are loaded (once) before giving up, so that callers never depend on who imported what first.
    """
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    found = _lookup(key)
    if found is None:
        from .registry import get_registry  # the plugins declare block types as they register

        get_registry()
        found = _lookup(key)
    if found is None:
        raise KeyError(name)
    return found


def names(kind: Kind | None = None) -> list[str]:
    """All canonical names known now, optionally of one kind: for error messages that list the valid ones."""
    every = list(PLAIN_DTYPES) + sorted(_BLOCKS.values(), key=lambda d: d.name)
    return [d.name for d in every if kind is None or d.kind == kind]


@lru_cache(maxsize=None)
def from_numpy(dtype: np.dtype) -> DType:
    """The lmconv dtype of a numpy array (bf16/fp8 come from ml_dtypes)."""
    dtype = np.dtype(dtype)
    for d in PLAIN_DTYPES:
        if d.numpy == dtype:
            return d
    raise KeyError(str(dtype))
