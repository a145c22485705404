"""AWQ checkpoints in the GEMM packing (AutoAWQ, llm-awq exports): ``quant_method: awq``, ``version: gemm``.

Each quantised linear ``M`` (weight ``[out, in]``, 4 bits, groups of ``group_size`` input rows) stores:

* ``M.qweight`` int32 ``[in, out/8]``: eight 4-bit values a word along the output axis, nibble ``p``
  (bits ``4p``) holding column ``8k + [0, 2, 4, 6, 1, 3, 5, 7][p]`` (AutoAWQ's ``AWQ_ORDER``; its
  inverse ``[0, 4, 1, 5, 2, 6, 3, 7]`` is compressed-tensors' ``AWQ_REVERSE_ORDER``);
* ``M.qzeros`` int32 ``[in/group_size, out/8]``, packed the same way (absent with ``zero_point: false``,
  where every zero is 8);
* ``M.scales`` float16 ``[in/group_size, out]``.

``W[o, i] = (q[i, o] - zero[i // group_size, o]) * scales[i // group_size, o]``, in float32. The values
are unpacked (and transposed to output rows) when a weight is loaded, slab by slab of input rows; the
scaling runs row-wise on all cores. GEMV and other packings are refused with one line.
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
from .gptq import int_setting

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble p of a word holds column 8k + AWQ_ORDER[p]
PIECES = (".qweight", ".qzeros", ".scales")
SLAB_ROWS = 4096  # input rows unpacked at a time while a weight is loaded


def natural_columns(out_f: int) -> np.ndarray:
    """Index into the nibble-ordered unpacked columns that gives the natural column order."""
    inverse = np.argsort(np.array(AWQ_ORDER))
    cols = np.arange(out_f)
    return cols // 8 * 8 + inverse[cols % 8]


class AWQ(Encoding):
    name = "awq"
    description = "AWQ int4, GEMM packing (qweight, qzeros, scales)"
    priority = 10

    def claims(self, model: Model) -> bool:
        return quant_method(model) == "awq"

    def decode(self, model: Model, warn: Any) -> Model:
        qc = quant_config(model) or {}
        bits = int_setting(qc, model, "bits", "w_bit", default=4)
        if bits != 4:
            raise bad_config(model, f"bits {bits} is not supported for awq; lmconv decodes 4-bit GEMM packing")
        group_size = int_setting(qc, model, "group_size", "q_group_size", default=128)
        if group_size <= 0:
            raise bad_config(model, f"group_size {group_size} is not supported for awq (a positive number of rows)")
        version = str(qc.get("version", "gemm")).lower()
        if version != "gemm":
            raise bad_config(model, f"AWQ version {version!r} is not supported; lmconv decodes the gemm packing")
        backend = qc.get("backend")
        if backend not in (None, "autoawq", "auto"):
            raise bad_config(model, f"AWQ backend {backend!r} is not supported; lmconv decodes AutoAWQ's gemm packing")
        zero_point = bool(qc.get("zero_point", True))

        names = model.tensors
        pieces: set[str] = set()
        decoded: dict[str, Tensor] = {}
        for t in model:
            if t.name.endswith(".qweight"):
                mod = t.name[: -len(".qweight")]
                decoded[t.name], used = self._decoded(mod, names, model, group_size, zero_point)
                pieces |= used
        for t in model:
            if t.name.endswith(PIECES) and t.name not in pieces:
                raise bad(t, model, f"has no {t.name.rsplit('.', 1)[0] + '.qweight'!r} beside it")
        out = [decoded.get(t.name, t) for t in model if t.name in decoded or t.name not in pieces]
        what = f"int4, groups of {group_size}, {'zero points' if zero_point else 'symmetric'}, gemm"
        return finish(model, self, out, [d.name for d in decoded.values()], what)

    def _decoded(self, mod: str, names: dict[str, Tensor], model: Model, group_size: int,
                 zero_point: bool) -> tuple[Tensor, set[str]]:
        qweight = names[f"{mod}.qweight"]
        scales = names.get(f"{mod}.scales")
        qzeros = names.get(f"{mod}.qzeros")
        if scales is None:
            raise bad(qweight, model, f"has no {mod + '.scales'!r} beside it")
        if zero_point and qzeros is None:
            raise bad(qweight, model, f"has no {mod + '.qzeros'!r} beside it (zero_point is true)")
        for t in (qweight, qzeros):
            if t is not None and (t.dtype.name not in ("i32", "u32") or len(t.shape) != 2):
                raise bad(t, model, f"is {t.dtype.name}{list(t.shape)}, not a matrix of int32 words")
        in_f, words = qweight.shape
        out_f = words * 8
        groups = cdiv(in_f, group_size)
        if tuple(scales.shape) != (groups, out_f):
            raise bad(scales, model, f"has shape {list(scales.shape)}, expected {[groups, out_f]} "
                                     f"({in_f} inputs in groups of {group_size}, {out_f} outputs)")
        if qzeros is not None and tuple(qzeros.shape) != (groups, words):
            raise bad(qzeros, model, f"has shape {list(qzeros.shape)}, expected {[groups, words]}")
        order = natural_columns(out_f)

        def fill(rec: np.ndarray) -> None:
            qw = qweight.load()
            w = rec["w"]
            for i0 in range(0, in_f, SLAB_ROWS):  # unpack and transpose a slab of input rows at a time
                i1 = min(i0 + SLAB_ROWS, in_f)
                w[:, i0:i1] = unpack_bits(qw[i0:i1], 4, out_f)[:, order].T
            rec["s"] = as_f32_scales(scales.load(), scales, model).T
            if qzeros is not None:
                rec["z"] = unpack_bits(qzeros.load(), 4, out_f)[:, order].T
            else:
                rec["z"] = 8

        def decode(rec: np.ndarray) -> np.ndarray:
            return affine(rec["w"], rec["s"], rec["z"], in_f, block=group_size)

        fields = [Field("w", np.uint8, in_f), Field("s", np.float32, groups), Field("z", np.uint8, groups)]
        sources = tuple(t for t in (qweight, qzeros, scales) if t is not None)
        weight = packed_weight(f"{mod}.weight", (out_f, in_f), out_f, fields, fill, decode, sources, note="dequant:awq")
        return weight, {t.name for t in sources}
