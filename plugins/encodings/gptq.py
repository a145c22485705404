"""GPTQ checkpoints (AutoGPTQ, GPTQModel, optimum): ``quant_method: gptq``.

Each quantised linear ``M`` (weight ``[out, in]``) stores, for ``b`` bits (2, 3, 4 or 8) and groups of
``group_size`` input columns (``-1``: one group):

* ``M.qweight`` int32 ``[in·b/32, out]``: each output column's values as one little-endian bit stream down
  the input axis (3-bit values straddle words);
* ``M.qzeros`` int32 ``[groups, out·b/32]``: the zero points, packed the same way along the output axis;
  the ``gptq`` (v1) checkpoint format stores ``zero - 1``, ``gptq_v2`` the zero itself;
* ``M.scales`` ``[groups, out]`` (float16);
* ``M.g_idx`` int32 ``[in]``: the group of each input column (with ``desc_act``, act-order, any
  permutation of the groups; without it ``i // group_size``, and it may be absent).

``W[o, i] = scales[g_idx[i], o] * (q[i, o] - zero[g_idx[i], o])``, computed in float32 as llama.cpp's
converter (``dequant_gptq``) does. Packing formats other than ``gptq``/``gptq_v2`` (Marlin, BitBLAS …)
and per-module ``dynamic`` overrides are refused with one line.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from lmconv.encodings import Encoding
from lmconv.ir import Model, Tensor

from .common import (
    Field,
    affine,
    as_f32_scales,
    bad,
    bad_config,
    cdiv,
    finish,
    packed_weight,
    quant_config,
    quant_method,
    unpack_bits,
)

PIECES = (".qweight", ".qzeros", ".scales", ".g_idx")


def int_setting(qc: dict[str, Any], model: Model, *keys: str, default: Any = None) -> Any:
    for k in keys:
        if k in qc:
            v = qc[k]
            if not isinstance(v, int) or isinstance(v, bool):
                raise bad_config(model, f"{k} must be an integer, not {v!r}")
            return v
    return default


class GPTQ(Encoding):
    name = "gptq"
    description = "GPTQ int2/3/4/8 (qweight, qzeros, scales, g_idx; act-order), checkpoint formats gptq and gptq_v2"
    priority = 10

    def claims(self, model: Model) -> bool:
        return quant_method(model) == "gptq"

    def decode(self, model: Model, warn: Any) -> Model:
        qc = quant_config(model) or {}
        bits = int_setting(qc, model, "bits", "w_bit")
        if bits not in (2, 3, 4, 8):
            raise bad_config(model, f"bits {bits!r} is not supported for gptq; lmconv decodes 2, 3, 4 and 8")
        group_size = int_setting(qc, model, "group_size", default=-1)
        if group_size == 0 or group_size < -1:
            raise bad_config(model, f"group_size {group_size} is not supported (a positive number of columns, or -1)")
        fmt = str(qc.get("checkpoint_format") or qc.get("format") or "gptq").lower()
        if fmt not in ("gptq", "gptq_v2"):
            raise bad_config(model, f"GPTQ checkpoint format {fmt!r} is not supported; lmconv decodes gptq and gptq_v2")
        if qc.get("dynamic"):
            raise bad_config(model, "dynamic (per-module bits and group sizes) is not supported")
        desc_act = bool(qc.get("desc_act", False))

        names = model.tensors
        pieces: set[str] = set()
        decoded: dict[str, Tensor] = {}
        for t in model:
            if t.name.endswith(".qweight"):
                mod = t.name[: -len(".qweight")]
                decoded[t.name], used = self._decoded(mod, names, model, bits, group_size, fmt == "gptq", desc_act)
                pieces |= used
        for t in model:
            if t.name.endswith(PIECES) and t.name not in pieces:
                raise bad(t, model, f"has no {t.name.rsplit('.', 1)[0] + '.qweight'!r} beside it")
        out = [decoded.get(t.name, t) for t in model if t.name in decoded or t.name not in pieces]
        what = f"int{bits}, {'groups of ' + str(group_size) if group_size > 0 else 'per-channel'}" + \
               (", act-order" if desc_act else "") + f", {fmt}"
        return finish(model, self, out, [d.name for d in decoded.values()], what)

    def _decoded(self, mod: str, names: dict[str, Tensor], model: Model, bits: int, group_size: int,
                 v1: bool, desc_act: bool) -> tuple[Tensor, set[str]]:
        qweight = names[f"{mod}.qweight"]
        missing = [p for p in (".qzeros", ".scales") if f"{mod}{p}" not in names]
        if missing:
            raise bad(qweight, model, f"has no {mod + missing[0]!r} beside it")
        qzeros, scales = names[f"{mod}.qzeros"], names[f"{mod}.scales"]
        g_idx = names.get(f"{mod}.g_idx")
        if desc_act and g_idx is None:
            raise bad(qweight, model, f"is act-order (desc_act) but {mod + '.g_idx'!r} is missing")
        for t in (qweight, qzeros):
            if t.dtype.kind != "int" or len(t.shape) != 2:
                raise bad(t, model, f"is {t.dtype.name}{list(t.shape)}, not a matrix of packed integer words")
        word_bits = qweight.dtype.type_size * 8
        n_words, out_f = qweight.shape
        if (n_words * word_bits) % bits:
            raise bad(qweight, model, f"has {n_words} rows of {word_bits}-bit words, which hold no whole number of {bits}-bit values")
        in_f = n_words * word_bits // bits
        if g_idx is not None and tuple(g_idx.shape) != (in_f,):
            raise bad(g_idx, model, f"has shape {list(g_idx.shape)}, expected [{in_f}] (one group per input column)")
        groups = cdiv(in_f, group_size) if group_size > 0 else 1
        if tuple(scales.shape) != (groups, out_f):
            raise bad(scales, model, f"has shape {list(scales.shape)}, expected {[groups, out_f]} "
                                     f"({in_f} inputs in groups of {group_size}, {out_f} outputs)")
        z_words = cdiv(out_f * bits, qzeros.dtype.type_size * 8)
        if tuple(qzeros.shape) != (groups, z_words):
            raise bad(qzeros, model, f"has shape {list(qzeros.shape)}, expected {[groups, z_words]}")
        mask = (1 << bits) - 1
        state: dict[str, np.ndarray] = {}

        def fill(rec: np.ndarray) -> None:
            rec["w"] = qweight.load().T
            rec["s"] = as_f32_scales(scales.load(), scales, model).T
            z = unpack_bits(qzeros.load(), bits, out_f).astype(np.int16) & mask
            rec["z"] = (z + 1 if v1 else z).T  # v1 stores zero - 1 (and 2**bits wraps to 0 before the +1)
            if g_idx is not None:
                g = np.asarray(g_idx.load()).reshape(-1).astype(np.int64)
                if g.size and (g.min() < 0 or g.max() >= groups):
                    raise bad(g_idx, model, f"holds group numbers outside 0..{groups - 1}")
            else:
                g = np.arange(in_f) // group_size if group_size > 0 else np.zeros(in_f, np.int64)
            state["g"] = g

        def decode(rec: np.ndarray) -> np.ndarray:
            q = unpack_bits(rec["w"], bits, in_f)
            return affine(q, rec["s"], rec["z"], in_f, index=state["g"])

        fields = [Field("w", qweight.dtype.numpy, n_words), Field("s", np.float32, groups), Field("z", np.int16, groups)]
        sources = tuple(t for t in (qweight, qzeros, scales, g_idx) if t is not None)
        weight = packed_weight(f"{mod}.weight", (out_f, in_f), out_f, fields, fill, decode, sources, note="dequant:gptq")
        return weight, {t.name for t in sources}
