"""MXFP4 weights as gpt-oss ships them: ``quant_method: mxfp4``, ``X_blocks`` and ``X_scales``.

``X_blocks`` uint8 ``[*lead, rows, groups, 16]``: 32 FP4 (E2M1) codes a group, two a byte, element ``2i``
in the low nibble; ``X_scales`` uint8 ``[*lead, rows, groups]``: one E8M0 exponent a group (the OCP MX
spec: ``2**(byte - 127)``; 0xFF is NaN). Dequantised, that is ``[*lead, rows, groups·32]``, and transformers
(``convert_moe_packed_tensors``) stores the *transpose* of its last two axes as the parameter ``X``:
gpt-oss's ``gate_up_proj [E, hidden, 2·ff]`` and ``down_proj [E, ff, hidden]``. The float decoding works
one expert (one unit of ``lead``) at a time and is exact: an E2M1 value times a power of two.

**Into GGUF, without loss.** llama.cpp keeps gpt-oss's experts in its own MXFP4 type: per group one
scale byte, then 16 bytes whose byte ``j`` holds element ``j`` (low nibble) and element ``j + 16`` (high):
only the nibbles move (llama.cpp's ``conversion/gpt_oss.py``, ``repack_mxfp4``; the E2M1 codes and the
exponent are the same numbers, ggml doubling its table and halving the scale). When the model's family
lays the decoded tensor out for GGUF by moving whole rows of its transpose (gpt-oss: ``down_proj``
transposed, ``gate_up_proj`` transposed and de-interleaved into gate = even rows, up = odd rows), each
decoded tensor records, as the :class:`lmconv.ir.Derivation` of that layout rule, the MXFP4 tensors
the rule would produce, repacked from the stored blocks. The GGUF writer then takes those blocks as
they are (the rule engine's shortcut for tensors a rule's inverse made), as llama.cpp's converter does;
any other target, a cast or a ``--quant`` dequantises them like any block type.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from lmconv import dtypes as dt
from lmconv.encodings import Encoding
from lmconv.ir import Derivation, Model, Tensor

from .common import (
    SUB_BLOCK_ELEMENTS,
    Field,
    bad,
    finish,
    packed_weight,
    quant_method,
    unpack_fp4,
)

#: llama.cpp's block_mxfp4: 32 values in 1 scale byte + 16 bytes of codes
MXFP4 = dt.block_type("mxfp4", 32, 17)


def repack_rows(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """HF blocks ``[..., groups, 16]`` and scales ``[..., groups]`` → ggml ``block_mxfp4`` bytes
    ``[..., groups · 17]``: the scale byte, then byte ``j`` = element ``j`` | element ``j + 16`` << 4."""
    elems = np.empty((*blocks.shape[:-1], 32), np.uint8)  # element 2i in the low nibble, 2i+1 in the high
    elems[..., 0::2] = blocks & 0x0F
    elems[..., 1::2] = blocks >> 4
    out = np.empty((*blocks.shape[:-1], 17), np.uint8)
    out[..., 0] = scales
    out[..., 1:] = elems[..., :16] | (elems[..., 16:] << 4)
    return out.reshape(*blocks.shape[:-2], -1)


class MXFP4Encoding(Encoding):
    name = "mxfp4"
    description = "MXFP4 (*_blocks, *_scales) as gpt-oss ships it; kept as GGUF MXFP4 blocks for gpt-oss"
    priority = 10

    def claims(self, model: Model) -> bool:
        return quant_method(model) == "mxfp4"

    def decode(self, model: Model, warn: Any) -> Model:
        names = model.tensors
        rules = _gguf_rules(model)
        decoded: dict[str, Tensor] = {}
        pieces: set[str] = set()
        carried = 0
        for t in model:
            if t.name.endswith("_scales") and t.name[: -len("_scales")] + "_blocks" not in names:
                raise bad(t, model, f"has no {t.name[: -len('_scales')] + '_blocks'!r} beside it")
            if not t.name.endswith("_blocks"):
                continue
            base = t.name[: -len("_blocks")]
            scales = names.get(base + "_scales")
            if scales is None:
                raise bad(t, model, f"has no scale tensor {base + '_scales'!r} beside it")
            weight = self._decoded(base, t, scales, model)
            derivation = _carry(weight, t, scales, rules, model)
            if derivation is not None:
                weight.derivation = derivation
                carried += 1
            decoded[t.name] = weight
            pieces |= {t.name, scales.name}
        out = [decoded.get(t.name, t) for t in model if t.name in decoded or t.name not in pieces]
        detail = "e2m1 in groups of 32, e8m0 scales" + (f"; GGUF keeps {carried} as MXFP4 blocks" if carried else "")
        return finish(model, self, out, [w.name for w in decoded.values()], detail)

    def _decoded(self, base: str, blocks: Tensor, scales: Tensor, model: Model) -> Tensor:
        if blocks.dtype.name != "u8" or len(blocks.shape) < 3 or blocks.shape[-1] != 16:
            raise bad(blocks, model, f"is {blocks.dtype.name}{list(blocks.shape)}, not uint8 [..., rows, groups, 16] MXFP4 blocks")
        if scales.dtype.name != "u8" or tuple(scales.shape) != tuple(blocks.shape[:-1]):
            raise bad(scales, model, f"is {scales.dtype.name}{list(scales.shape)}, expected u8{list(blocks.shape[:-1])} "
                                     "(one E8M0 exponent per group of its blocks)")
        *lead, rows, groups, _ = blocks.shape
        cols = groups * 32
        units = 1
        for d in lead:
            units *= d
        per = rows * groups

        def fill(rec: np.ndarray) -> None:
            rec["b"] = blocks.load().reshape(units, per * 16)
            s = scales.load().reshape(units, per)
            if s.size and int(s.max()) == 0xFF:
                raise bad(scales, model, "holds the E8M0 NaN scale 0xFF")
            rec["s"] = s

        step = max(1, SUB_BLOCK_ELEMENTS // cols)

        def decode(rec: np.ndarray) -> np.ndarray:
            k = rec.shape[0]
            out = np.empty((k, cols, rows), np.float32)  # the transpose, filled a slab of rows at a time
            for u in range(k):
                b_all = rec["b"][u].reshape(rows, groups, 16)
                s_all = rec["s"][u].reshape(rows, groups, 1)
                for r0 in range(0, rows, step):
                    b = b_all[r0:r0 + step]
                    vals = unpack_fp4(b).reshape(b.shape[0], groups, 32)
                    vals = np.ldexp(vals, s_all[r0:r0 + step].astype(np.int32) - 127)
                    out[u, :, r0:r0 + step] = vals.reshape(b.shape[0], cols).T
            return out.reshape(k, -1)

        fields = [Field("b", np.uint8, per * 16), Field("s", np.uint8, per)]
        return packed_weight(base, (*lead, cols, rows), units, fields, fill, decode, (blocks, scales), note="dequant:mxfp4")


def _gguf_rules(model: Model) -> list[Any]:
    """The model family's GGUF layout rules, if it has one (gpt-oss does)."""
    from lmconv.registry import get_registry

    arch = get_registry().architecture_for(model.config)
    layout = arch.layout("gguf") if arch is not None else None
    return list(layout.rules(model.config)) if layout is not None else []


def _pattern(pattern: str) -> re.Pattern[str]:
    """A rule's name pattern (``{bid}``, ``{xid}`` stand for numbers) as a regular expression."""
    parts = re.split(r"\{(?:bid|xid)\}", pattern)
    return re.compile(r"\d+".join(re.escape(p) for p in parts))


def _rule_for(name: str, rules: list[Any]) -> Any | None:
    for rule in rules:
        if any(_pattern(p).fullmatch(name) for p in rule.sources):
            return rule if len(rule.sources) == 1 else None
    return None


def _row_selections(rule: Any, model: Model, shape: tuple[int, ...]) -> list[np.ndarray] | None:
    """What ``rule`` does to a tensor of ``shape`` (the decoded, transposed layout), if it only picks
    whole rows of the un-transposed tensor: the row indices each of its outputs takes (on a small probe,
    checked element by element); None for anything else (a cast, a permutation inside rows …)."""
    lead = (1,) * (len(shape) - 2)
    probe_cols, probe_rows = 4, 6  # the transposed probe: [.., cols, rows]; rows split evenly by 2 and 3
    probe = np.arange(probe_cols * probe_rows, dtype=np.float32).reshape(*lead, probe_cols, probe_rows)
    try:
        outs = rule.forward([probe], model.config)
    except Exception:  # noqa: BLE001 - a rule that needs the real sizes: no blocks carried, the floats still are right
        return None
    plain = np.swapaxes(probe, -1, -2)  # [.., rows, cols]: what the blocks are rows of
    selections = []
    for out in outs:
        out = np.asarray(out)
        if out.ndim != plain.ndim or out.shape[:-2] != plain.shape[:-2] or out.shape[-1] != probe_cols:
            return None
        idx = out[(0,) * len(lead)][:, 0].astype(np.int64)  # plain[r, c] = c·rows + r: column 0 names the row
        if not np.array_equal(out, plain[..., idx, :]):
            return None
        selections.append(idx)
    return selections


def _carry(weight: Tensor, blocks: Tensor, scales: Tensor, rules: list[Any], model: Model) -> Derivation | None:
    """The derivation that lets a GGUF writer take MXFP4 blocks for ``weight`` (see the module docstring)."""
    rule = _rule_for(weight.name, rules)
    if rule is None:
        return None
    selections = _row_selections(rule, model, weight.shape)
    if selections is None:
        return None
    *lead, rows, groups, _ = blocks.shape
    probe_rows = 6
    parts = []
    for k, idx in enumerate(selections):
        if probe_rows % len(selections) or len(idx) * len(selections) != probe_rows:
            return None
        step = len(selections)
        if not (np.array_equal(idx, np.arange(k, probe_rows, step)) or
                np.array_equal(idx, np.arange(k * len(idx), (k + 1) * len(idx)))):
            return None  # only interleaves and contiguous splits scale from the probe to the real size
        interleaved = np.array_equal(idx, np.arange(k, probe_rows, step))
        n = rows // step
        sel = slice(k, None, step) if interleaved else slice(k * n, (k + 1) * n)

        def load(sel: slice = sel) -> np.ndarray:
            s = scales.load()[..., sel, :]
            if s.size and int(s.max()) == 0xFF:
                raise bad(scales, model, "holds the E8M0 NaN scale 0xFF")
            return repack_rows(blocks.load()[..., sel, :, :], s)

        if rows % step:
            return None
        parts.append(Tensor(f"{weight.name}#mxfp4.{k}", (*lead, n, groups * 32), MXFP4, load, origin=blocks.origin,
                            release=blocks.release))
    return Derivation(rule, tuple(parts), 0, 1, object())
