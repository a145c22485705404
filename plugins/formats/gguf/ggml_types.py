"""GGML's element types and lmconv's: which DType a GGML type id is, and back.

Plain GGML types (F32, F16, BF16, F64, I8 … I64) are lmconv's plain dtypes. Every GGML block type
(Q8_0, Q4_K, IQ2_XXS, MXFP4 …) is declared to lmconv with its block size and bytes per block from
gguf-py's table, so that a GGUF holding any of them can be read and its blocks copied as they are,
even when no installed quantiser can produce or dequantise that type.
"""

from __future__ import annotations

from functools import lru_cache

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from lmconv import dtypes as dt
from lmconv.dtypes import DType

PLAIN = {"F64": "f64", "F32": "f32", "F16": "f16", "BF16": "bf16", "I64": "i64", "I32": "i32", "I16": "i16", "I8": "i8"}


def lmconv_name(qtype: GGMLQuantizationType) -> str:
    """GGML spells K-quants "Q4_K"; lmconv keeps that case ("q4_K") so that names round-trip with
    llama.cpp's own tables (lookups ignore case)."""
    return PLAIN.get(qtype.name) or qtype.name.lower().replace("_k", "_K")


@lru_cache(maxsize=None)
def dtype_of(qtype: int) -> DType:
    """The lmconv dtype of a GGML type id; raises ``ValueError`` for an id GGML does not have."""
    qt = GGMLQuantizationType(qtype)
    if qt.name in PLAIN:
        return dt.get(PLAIN[qt.name])
    block, size = GGML_QUANT_SIZES[qt]
    return dt.block_type(lmconv_name(qt), block, size)


def ggml_type(d: DType) -> GGMLQuantizationType | None:
    """The GGML type that stores ``d``, or None (fp8, unsigned ints, bool, a plugin's own block type)."""
    for qt in GGMLQuantizationType:
        if lmconv_name(qt).lower() == d.name.lower():
            return qt
    return None


def declare_block_types() -> None:
    """Declare every GGML block type to lmconv (done when the plugin registers)."""
    for qt in GGMLQuantizationType:
        if qt.name not in PLAIN and qt in GGML_QUANT_SIZES:
            dtype_of(int(qt))
