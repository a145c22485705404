"""What the encodings share: reading ``quantization_config``, one-line errors naming the tensor, the
rewritten config, integer unpacking, and the row-packed lazy tensor every decoded weight is.

**Row-packed tensors.** A decoded weight must stream by rows like any cast (``Tensor.map(rows=True)``),
but its scales, zero points and group indices live in other tensors, laid out along other axes (GPTQ
packs along the input axis, AWQ along the output axis). So each weight gets a *parent*: one uint8
row per unit of the output (an output row, or an expert for MXFP4) holding everything that unit
needs, as a numpy structured record (the stored codes, its scales, its zero points). The parent is
built when the weight is loaded, by copying (a quarter of the f32 result for FP8 and for AWQ, whose
codes are unpacked then; an eighth for GPTQ and compressed-tensors int4, which stay packed); the
decoding is a row-wise map of it, so writers compute it in chunks of rows on every core, and a
whole-tensor load decodes it a few MB at a time into the result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
from lmconv import dtypes as dt
from lmconv.encodings import Encoding, note_decoded
from lmconv.errors import InputError
from lmconv.ir import Model, Tensor

U8 = dt.get("u8")

#: config keys that describe how the weights are stored, dropped once they are decoded
QUANT_KEYS = ("quantization_config", "compression_config")

#: float dtypes as transformers spells them in ``torch_dtype`` / ``dtype``
TORCH_FLOAT_NAMES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "f64": "float64"}


# ------------------------------------------------------------------------------------ config
def quant_config(model: Model) -> dict[str, Any] | None:
    """The model's ``quantization_config`` (or the older compressed-tensors ``compression_config``)."""
    for key in QUANT_KEYS:
        qc = model.config.get(key)
        if qc is not None:
            if not isinstance(qc, dict):
                raise InputError(f"{key} must be a JSON object, not {type(qc).__name__}", path=config_path(model))
            return qc
    return None


def quant_method(model: Model) -> str | None:
    qc = quant_config(model)
    if qc is None:
        return None
    method = qc.get("quant_method")
    if method is None and "config_groups" in qc:  # compression_config of compressed-tensors < 0.5
        return "compressed-tensors"
    return str(method).lower() if method is not None else ""


def config_path(model: Model) -> str:
    return model.config_source or model.source


def bad_config(model: Model, message: str) -> InputError:
    return InputError(f"quantization_config: {message}", path=config_path(model))


def bad(t: Tensor, model: Model, message: str) -> InputError:
    """One line naming the file and the tensor."""
    return InputError(f"tensor {t.name!r} {message}", path=t.origin or model.source or None)


def decoded_config(model: Model, decoded: Sequence[str] = ()) -> dict[str, Any]:
    """The config without ``quantization_config``; a ``torch_dtype``/``dtype`` that claims a stored type
    (``float8_e4m3fn``, ``int8``) becomes the float type the other weights hold (float32 if none)."""
    cfg = {k: v for k, v in model.config.items() if k not in QUANT_KEYS}
    skip = set(decoded)
    for key in ("torch_dtype", "dtype"):
        claim = cfg.get(key)
        if isinstance(claim, str) and claim not in ("float32", "float16", "bfloat16", "float64", "auto"):
            floats = [t.dtype.name for t in model if t.name not in skip and t.dtype.name in TORCH_FLOAT_NAMES]
            common = max(set(floats), key=floats.count) if floats else "f32"
            cfg[key] = TORCH_FLOAT_NAMES[common]
    return cfg


def finish(model: Model, encoding: Encoding, tensors: list[Tensor], decoded: list[str], detail: str,
           dropped: Sequence[str] = ()) -> Model:
    """The decoded model: ``tensors`` in the source's order, a config that no longer claims an encoding,
    and the note ``inspect`` shows."""
    out = model.with_tensors(tensors)
    out.config = decoded_config(model, decoded)
    out.metadata = {**model.metadata, "encodings": list(model.metadata.get("encodings", []))}
    note_decoded(out, encoding, detail, len(decoded))
    if dropped:  # activation and KV-cache scales: run-time settings, no part of a weight
        out.metadata["encodings"][-1]["dropped"] = sorted(dropped)
    return out


# ------------------------------------------------------------------------------------ scales
def as_f32_scales(arr: np.ndarray, t: Tensor, model: Model) -> np.ndarray:
    """A scale tensor as float32, checked finite. uint8 scales are E8M0 exponents (``2**(b - 127)``,
    0xFF is NaN in the OCP MX spec), as transformers reads them."""
    if arr.dtype == np.uint8:
        if arr.size and int(arr.max()) == 0xFF:
            raise bad(t, model, "holds the E8M0 NaN scale 0xFF")
        return np.ldexp(np.float32(1), arr.astype(np.int32) - 127).astype(np.float32)
    try:
        is_float = dt.from_numpy(arr.dtype).is_float
    except KeyError:
        is_float = False
    if not is_float:
        raise bad(t, model, f"holds {arr.dtype} values, not float scales")
    out = arr.astype(np.float32)
    if not np.isfinite(out).all():
        n = int((~np.isfinite(out)).sum())
        raise bad(t, model, f"holds {n} NaN or infinite scale{'s' if n > 1 else ''}")
    return out


def check_shape(t: Tensor, model: Model, want: Sequence[int], what: str = "") -> None:
    if tuple(t.shape) != tuple(want):
        raise bad(t, model, f"has shape {list(t.shape)}, expected {list(want)}{' ' + what if what else ''}")


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ------------------------------------------------------------------------------------ integers
def unpack_bits(words: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Values of ``bits`` bits stored as one little-endian bit stream in the words of each row (the
    last axis; words of any width): value ``i`` sits at bit ``i * bits`` of the row. This is how GPTQ
    (2, 3, 4, 8 bits; 3-bit values straddle words), AWQ (before its column order) and compressed-tensors'
    pack-quantized (1 … 8 bits) pack. Returns uint8 ``[..., count]``."""
    raw = np.ascontiguousarray(words)
    raw = raw.view(np.uint8).reshape(*raw.shape[:-1], -1)
    lead = raw.shape[:-1]
    if 8 % bits == 0:
        if bits == 8:
            vals = raw
        else:  # value j of each byte at positions j, j + per, …: strided writes (a broadcast axis of 2 is slow)
            per = 8 // bits
            vals = np.empty((*lead, raw.shape[-1] * per), np.uint8)
            mask = np.uint8((1 << bits) - 1)
            for j in range(per):
                np.bitwise_and(raw >> np.uint8(j * bits), mask, out=vals[..., j::per])
    else:
        stream = np.unpackbits(raw, axis=-1, bitorder="little")
        n = stream.shape[-1] // bits
        stream = stream[..., : n * bits].reshape(*lead, n, bits)
        vals = np.zeros((*lead, n), np.uint8)
        for k in range(bits):
            vals |= stream[..., k] << np.uint8(k)
    if vals.shape[-1] < count:
        raise ValueError(f"{vals.shape[-1]} packed values, {count} needed")
    return vals[..., :count]


def fp8_values(codes: np.ndarray, fp8: Any) -> np.ndarray:
    """uint8 codes of an FP8 type (ml_dtypes ``float8_e4m3fn``/``float8_e5m2``) → their float32 values
    (exact), by a 256-entry table: several times faster than ml_dtypes' cast."""
    return np.take(_fp8_table(np.dtype(fp8)), codes)


@cache
def _fp8_table(fp8: np.dtype) -> np.ndarray:
    return np.arange(256, dtype=np.uint8).view(fp8).astype(np.float32)


#: FP4 E2M1 (OCP MX): the value of each 4-bit code
E2M1 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], np.float32)


def unpack_fp4(raw: np.ndarray) -> np.ndarray:
    """uint8 ``[..., n]`` of E2M1 pairs, element ``2i`` in the low nibble → float32 ``[..., 2n]``."""
    out = np.empty((*raw.shape[:-1], raw.shape[-1] * 2), np.float32)
    np.take(E2M1, raw & 0x0F, out=out[..., 0::2])
    np.take(E2M1, raw >> 4, out=out[..., 1::2])
    return out


# ------------------------------------------------------------------------------------ row-packed
#: elements decoded at a time (the decoders' temporaries are a few times this many floats)
SUB_BLOCK_ELEMENTS = 1 << 20


@dataclass(frozen=True)
class Field:
    """One field of a unit's record: ``count`` values of ``dtype``."""

    name: str
    dtype: Any
    count: int


def packed_weight(
    name: str,
    shape: tuple[int, ...],
    units: int,
    fields: Sequence[Field],
    fill: Callable[[np.ndarray], None],
    decode: Callable[[np.ndarray], np.ndarray],
    sources: Sequence[Tensor],
    *,
    note: str,
    aliases: tuple[str, ...] = (),
) -> Tensor:
    """A lazy float32 tensor ``name`` of ``shape``: ``decode(records)`` of a row-packed parent of
    ``units`` records (``fill(records)`` fills them all when the weight is loaded; ``decode`` maps any
    run of records to float32 ``[k, numel // units]``). ``sources`` are the stored tensors it reads:
    the parent releases them when the writer is done. ``note`` (``dequant:NAME``) enters the tensor's
    history: the decoded values are a quantisation's, so verification compares two tensors decoded
    from the same encoding exactly, and one re-quantised from it by the bound of the new step only."""
    record = np.dtype([(f.name, f.dtype, (f.count,)) for f in fields])
    origin = sources[0].origin if sources else ""

    def load() -> np.ndarray:
        records = np.zeros(units, record)
        fill(records)
        return records.view(np.uint8).reshape(units, record.itemsize)

    def release() -> None:
        for s in sources:
            s.release()

    per_unit = 1
    for d in shape:
        per_unit *= d
    per_unit //= max(units, 1)
    step = max(1, SUB_BLOCK_ELEMENTS // max(per_unit, 1))

    def rows(chunk: np.ndarray) -> np.ndarray:
        # A whole tensor may arrive at once (a load inside the compute pool is not split again):
        # decode it a few MB at a time into the result, so temporaries stay small.
        recs = np.ascontiguousarray(chunk).reshape(-1).view(record)
        out = np.empty((recs.shape[0], per_unit), np.float32)
        for i in range(0, recs.shape[0], step):
            out[i:i + step] = np.asarray(decode(recs[i:i + step]), dtype=np.float32).reshape(-1, per_unit)
        return out

    parent = Tensor(f"{name}#stored", (units, record.itemsize), U8, load, origin=origin, release=release,
                    aliases=aliases)
    return parent.map(rows, shape=shape, dtype=dt.F32, name=name, note=note, rows=True)


def scale_columns(s: np.ndarray, cols: int, block: int | None = None, index: np.ndarray | None = None) -> np.ndarray:
    """Per-row scales ``[k, S]`` spread over ``cols`` columns: one per row (S == 1), one per ``block``
    columns (the last block may be short), or column ``c`` takes scale ``index[c]`` (act-order)."""
    if index is not None:
        return s[:, index]
    if s.shape[1] == 1:
        return s
    assert block is not None
    return np.repeat(s, block, axis=1)[:, :cols]


def affine(q: np.ndarray, s: np.ndarray, z: np.ndarray | None, cols: int, block: int | None = None,
           index: np.ndarray | None = None) -> np.ndarray:
    """``(q - z) * s`` in float32 (``q - z`` is exact: small integers or FP8 values; the product is
    one IEEE rounding, as transformers, compressed-tensors and llama.cpp compute it)."""
    out = q.astype(np.float32)
    k = out.shape[0]
    if index is None and s.shape[1] > 1 and block is not None and s.shape[1] * block == cols:
        blocks = out.reshape(k, s.shape[1], block)  # whole blocks: broadcast in place, no spread copy
        if z is not None:
            blocks -= z.astype(np.float32)[:, :, None]
        blocks *= s[:, :, None]
        return out
    if z is not None:
        out -= scale_columns(z.astype(np.float32), cols, block, index)
    out *= scale_columns(s, cols, block, index)
    return out
