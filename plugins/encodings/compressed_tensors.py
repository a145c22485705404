"""compressed-tensors checkpoints (llm-compressor, vLLM): ``quant_method: compressed-tensors``.

Each quantised module ``M`` stores, by the format of its config group:

* ``pack-quantized``: ``M.weight_packed`` int32 ``[rows, ceil(cols·b/32)]``, ``b``-bit values as one
  little-endian bit stream per row (offset by ``2**(b-1)`` so they are unsigned), ``M.weight_shape``
  (the true ``[rows, cols]``), ``M.weight_scale`` and, when asymmetric, ``M.weight_zero_point`` packed the
  same way down the rows (``packed_dim=0``);
* ``float-quantized``: ``M.weight`` FP8 e4m3 and ``M.weight_scale``;
* ``int-quantized`` / ``naive-quantized``: ``M.weight`` int8, ``M.weight_scale`` (and a zero point);
* ``mxfp4-pack-quantized``: ``M.weight_packed`` uint8 (two E2M1 codes a byte, low nibble first) and
  ``M.weight_scale`` uint8 E8M0 exponents, one per 32 values.

The weight is ``(q - zero_point) * scale`` (``compressed_tensors.quantization.lifecycle.forward.dequantize``)
with one scale per tensor, per row (``channel``), per ``group_size`` columns (``group``; with activation
ordering ``M.weight_g_idx`` gives each column its group) or per ``block_structure`` block (``block``).
Activation and KV-cache scales (``input_scale``, ``k_scale`` …) are no weights and are dropped.
Sparsity compressors, transforms (rotations), NVFP4 and uncompressed (``frozen``) checkpoints are refused
with one line: decoding them as if they were plain would give wrong weights.
"""

from __future__ import annotations

import re
from typing import Any

import ml_dtypes
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
    fp8_values,
    packed_weight,
    quant_config,
    quant_method,
    unpack_bits,
    unpack_fp4,
)

FORMATS = ("pack-quantized", "float-quantized", "int-quantized", "naive-quantized", "mxfp4-pack-quantized")
PARAMS = ("weight_packed", "weight_shape", "weight_scale", "weight_zero_point", "weight_g_idx")
# qparams of activations and the KV cache: how to quantise at run time, not part of a weight
DROPPED = ("input_scale", "input_zero_point", "input_g_idx", "output_scale", "output_zero_point", "k_scale",
           "v_scale", "k_zero_point", "v_zero_point", "q_scale", "q_zero_point")


class CompressedTensors(Encoding):
    name = "compressed-tensors"
    description = "compressed-tensors pack-quantized (int 1-8 bit), float-quantized (FP8), int-quantized and mxfp4-pack-quantized"
    priority = 10

    def claims(self, model: Model) -> bool:
        return quant_method(model) == "compressed-tensors"

    def decode(self, model: Model, warn: Any) -> Model:
        qc = quant_config(model) or {}
        status = qc.get("quantization_status", "compressed")
        if status != "compressed":
            raise bad_config(model, f"quantization_status is {status!r}: the weights were saved uncompressed (fake-"
                                    "quantised); lmconv decodes compressed checkpoints")
        for key in ("sparsity_config", "transform_config"):
            if qc.get(key):
                raise bad_config(model, f"{key} is set: compressed-tensors {key.split('_')[0]} checkpoints are not "
                                        "supported (their weights cannot be decoded one tensor at a time)")
        groups = qc.get("config_groups")
        if not isinstance(groups, dict) or not groups:
            raise bad_config(model, "config_groups is missing or empty")
        top_format = qc.get("format")
        parsed = [_Group(name, g, top_format, model) for name, g in groups.items()]

        names = model.tensors
        modules = sorted({n.rsplit(".", 1)[0] for n in names if n.rsplit(".", 1)[-1] in ("weight_packed", "weight_scale")})
        pieces: set[str] = set()
        decoded: dict[str, Tensor] = {}
        kinds: set[str] = set()
        for mod in modules:
            group = _group_for(mod, parsed, model)
            t, used, kind = group.decode(mod, names, model)
            decoded[f"{mod}.weight"] = t
            pieces |= used
            kinds.add(kind)
        dropped = {n for n in names if n.rsplit(".", 1)[-1] in DROPPED}
        for t in model:  # a stored FP8/int8 weight no scale came with would pass as its codes
            if t.name not in pieces and t.name.endswith(".weight") and t.dtype.name in ("f8_e4m3", "f8_e5m2", "i8"):
                raise bad(t, model, f"is {t.dtype.name} but its scale tensor {t.name + '_scale'!r} is missing")
        # each decoded weight takes the place of its first stored piece
        placed: set[str] = set()
        first: dict[str, str] = {}
        for t in model:
            mod_w = t.name.rsplit(".", 1)[0] + ".weight"
            if t.name in pieces and mod_w in decoded and mod_w not in placed:
                first[t.name] = mod_w
                placed.add(mod_w)
        out = [decoded[first[t.name]] if t.name in first else t for t in model
               if t.name in first or (t.name not in pieces and t.name not in dropped)]
        return finish(model, self, out, list(decoded), ", ".join(sorted(kinds)) or "no quantised weights", dropped)


class _Group:
    """One config group: which modules it targets and how their weights are stored."""

    def __init__(self, name: str, g: Any, top_format: Any, model: Model) -> None:
        if not isinstance(g, dict):
            raise bad_config(model, f"config group {name!r} is not an object")
        self.name = name
        self.targets = [str(t) for t in g.get("targets") or []]
        fmt = g.get("format") or top_format
        if fmt == "mixed-precision" or fmt is None:
            raise bad_config(model, f"config group {name!r} names no format")
        if fmt not in FORMATS:
            raise bad_config(model, f"format {fmt!r} (group {name!r}) is not supported; lmconv decodes {', '.join(FORMATS)}")
        self.format = fmt
        w = g.get("weights")
        if not isinstance(w, dict):
            raise bad_config(model, f"config group {name!r} has no weights arguments")
        self.bits = w.get("num_bits")
        self.type = w.get("type", "int")
        self.strategy = w.get("strategy")
        self.symmetric = bool(w.get("symmetric", True))
        self.group_size = w.get("group_size")
        self.block = w.get("block_structure")
        if not isinstance(self.bits, int) or isinstance(self.bits, bool) or not 1 <= self.bits <= 8:
            raise bad_config(model, f"num_bits {self.bits!r} (group {name!r}) is not supported; lmconv decodes 1 to 8 bits")
        if fmt == "float-quantized" and (self.type != "float" or self.bits != 8):
            raise bad_config(model, f"float-quantized {self.type} with {self.bits} bits (group {name!r}) is not supported; "
                                    "lmconv decodes FP8 (float, 8 bits)")
        if fmt in ("int-quantized", "naive-quantized") and self.bits != 8:
            raise bad_config(model, f"{fmt} with {self.bits} bits (group {name!r}) is not supported")
        if fmt == "mxfp4-pack-quantized" and (self.bits != 4 or self.type != "float"):
            raise bad_config(model, f"mxfp4-pack-quantized with {self.type} {self.bits} bits (group {name!r}) is not MXFP4")
        if self.strategy not in ("tensor", "channel", "group", "block"):
            raise bad_config(model, f"weight strategy {self.strategy!r} (group {name!r}) is not supported; lmconv decodes "
                                    "tensor, channel, group and block")
        if self.strategy == "group" and not (isinstance(self.group_size, int) and self.group_size > 0):
            raise bad_config(model, f"group_size {self.group_size!r} (group {name!r}) must be a positive integer")
        if self.strategy == "block" and not (isinstance(self.block, list) and len(self.block) == 2
                                             and all(isinstance(b, int) and b > 0 for b in self.block)):
            raise bad_config(model, f"block_structure {self.block!r} (group {name!r}) must be two positive integers")

    def matches(self, module: str) -> int:
        """2: by name or regex; 1: by class (``Linear``: any module with quantised pieces); 0: not at all."""
        best = 0
        for target in self.targets:
            if target.startswith("re:"):
                if re.match(target[3:], module):
                    return 2
            elif target == module:
                return 2
            elif "." not in target:
                best = 1
        return best

    def scale_shape(self, rows: int, cols: int) -> tuple[int, int]:
        if self.strategy == "tensor":
            return 1, 1
        if self.strategy == "channel":
            return rows, 1
        if self.strategy == "group":
            return rows, cdiv(cols, self.group_size)
        bm, bn = self.block
        return cdiv(rows, bm), cdiv(cols, bn)

    def decode(self, mod: str, names: dict[str, Tensor], model: Model) -> tuple[Tensor, set[str], str]:
        fmt, bits = self.format, self.bits
        scale = names.get(f"{mod}.weight_scale")
        packed = fmt in ("pack-quantized", "mxfp4-pack-quantized")
        stored = names.get(f"{mod}.weight_packed" if packed else f"{mod}.weight")
        first = stored or scale
        assert first is not None
        if stored is None:
            raise bad(first, model, f"has no {'weight_packed' if packed else 'weight'} beside it ({fmt}, group {self.name!r})")
        if scale is None:
            raise bad(stored, model, f"has no scale tensor {mod + '.weight_scale'!r}")
        zp = names.get(f"{mod}.weight_zero_point")
        gidx = names.get(f"{mod}.weight_g_idx")
        used = {stored.name, scale.name} | {t.name for t in (zp, gidx) if t is not None}
        if len(stored.shape) != 2:
            raise bad(stored, model, f"has shape {list(stored.shape)}; compressed-tensors weights are matrices")
        rows = stored.shape[0]

        # the true shape, and how a row's values are stored
        if fmt == "pack-quantized":
            shape_t = names.get(f"{mod}.weight_shape")
            if shape_t is None:
                raise bad(stored, model, f"has no {mod + '.weight_shape'!r} beside it")
            used.add(shape_t.name)
            if stored.dtype.name != "i32":
                raise bad(stored, model, f"is {stored.dtype.name}, not int32 words")
            true_shape = [int(v) for v in np.asarray(shape_t.load()).reshape(-1)]
            if len(true_shape) != 2 or true_shape[0] != rows or cdiv(true_shape[1] * bits, 32) != stored.shape[1]:
                raise bad(shape_t, model, f"says {true_shape}, which {list(stored.shape)} int32 words of "
                                          f"{bits}-bit values cannot hold")
            cols = true_shape[1]
        elif fmt == "mxfp4-pack-quantized":
            if stored.dtype.name != "u8":
                raise bad(stored, model, f"is {stored.dtype.name}, not uint8 pairs of FP4 codes")
            cols = stored.shape[1] * 2
        else:
            want = "f8_e4m3" if fmt == "float-quantized" else "i8"
            if stored.dtype.name != want:
                raise bad(stored, model, f"is {stored.dtype.name}, not {want} ({fmt})")
            cols = stored.shape[1]

        if fmt == "mxfp4-pack-quantized":
            s_rows, s_cols = rows, cdiv(cols, 32)
            bm, bn = 1, 32
        else:
            s_rows, s_cols = self.scale_shape(rows, cols)
            bm = self.block[0] if self.strategy == "block" else 1
            bn = (self.block[1] if self.strategy == "block" else self.group_size if self.strategy == "group" else cols)
        if gidx is not None and self.strategy != "group":
            raise bad(gidx, model, f"is a group index, but the strategy is {self.strategy}")
        scale_ok = (tuple(scale.shape) == (s_rows, s_cols)
                    or (self.strategy == "tensor" and scale.numel == 1)
                    or (self.strategy == "channel" and tuple(scale.shape) == (rows,)))
        if not scale_ok:
            raise bad(scale, model, f"has shape {list(scale.shape)}, expected {[s_rows, s_cols]} for a {self.strategy} "
                                    f"scale of a {[rows, cols]} weight")
        if gidx is not None and tuple(gidx.shape) != (cols,):
            raise bad(gidx, model, f"has shape {list(gidx.shape)}, expected [{cols}]")
        # zero points: absent when symmetric; packed down the rows for pack-quantized
        asym = zp is not None
        if not self.symmetric and zp is None and fmt == "pack-quantized":
            raise bad(stored, model, f"is asymmetric but its zero point {mod + '.weight_zero_point'!r} is missing")
        if asym:
            want_zp = ((cdiv(s_rows * bits, 32), s_cols) if fmt == "pack-quantized" else (s_rows, s_cols))
            if fmt == "pack-quantized" and zp.dtype.name != "i32":
                raise bad(zp, model, f"is {zp.dtype.name}, not int32 words")
            if tuple(zp.shape) != want_zp and not (self.strategy == "tensor" and zp.numel == 1):
                raise bad(zp, model, f"has shape {list(zp.shape)}, expected {list(want_zp)}")

        state: dict[str, np.ndarray] = {}
        offset = 1 << (bits - 1)
        word_count = stored.shape[1]

        def fill(rec: np.ndarray) -> None:
            raw = stored.load()
            rec["w"] = raw.view(np.int32 if fmt == "pack-quantized" else np.uint8).reshape(rows, -1)
            sc = as_f32_scales(scale.load(), scale, model).reshape(-1, s_cols)
            if sc.shape[0] == 1:
                sc = np.broadcast_to(sc, (rows, s_cols))
            elif sc.shape[0] != rows:
                sc = sc[np.arange(rows) // bm]
            rec["s"] = sc
            if asym:
                z = np.asarray(zp.load())
                if fmt == "pack-quantized":  # packed down the rows (packed_dim=0), offset like the weights
                    z = z.reshape(-1, s_cols)
                    z = unpack_bits(np.ascontiguousarray(z.T), bits, s_rows).T.astype(np.int16) - offset
                z = z.astype(np.int16 if z.dtype.kind in "iu" else np.float32).reshape(-1, s_cols)
                if fmt == "float-quantized" and np.any(z.astype(np.float32) != 0):
                    raise bad(zp, model, "is non-zero: asymmetric FP8 is not supported")
                if z.shape[0] == 1:
                    z = np.broadcast_to(z, (rows, s_cols))
                elif z.shape[0] != rows:
                    z = z[np.arange(rows) // bm]
                rec["z"] = z
            if gidx is not None:
                g = np.asarray(gidx.load()).reshape(-1).astype(np.int64)
                if g.size and (g.min() < 0 or g.max() >= s_cols):
                    raise bad(gidx, model, f"holds group numbers outside 0..{s_cols - 1}")
                state["g"] = g

        def decode(rec: np.ndarray) -> np.ndarray:
            index = state.get("g")
            if fmt == "pack-quantized":
                q = unpack_bits(rec["w"], bits, cols).astype(np.int16) - offset
            elif fmt == "mxfp4-pack-quantized":
                q = unpack_fp4(rec["w"])
            elif fmt == "float-quantized":
                q = fp8_values(rec["w"], ml_dtypes.float8_e4m3fn)
            else:
                q = rec["w"].view(np.int8)
            return affine(q, rec["s"], rec["z"] if asym else None, cols, block=bn, index=index)

        fields = [Field("w", np.int32 if fmt == "pack-quantized" else np.uint8, word_count if fmt == "pack-quantized" else stored.shape[1]),
                  Field("s", np.float32, s_cols)]
        if asym:
            fields.append(Field("z", np.int16, s_cols))
        sources = tuple(t for t in (stored, scale, zp, gidx) if t is not None)
        weight = packed_weight(f"{mod}.weight", (rows, cols), rows, fields, fill, decode, sources, aliases=stored.aliases,
                               note="dequant:compressed-tensors")
        what = {"tensor": "per-tensor", "channel": "per-channel", "group": f"groups of {self.group_size}",
                "block": f"{bm}×{bn} blocks"}[self.strategy]
        kind = {"pack-quantized": f"int{bits}", "float-quantized": "fp8 e4m3", "int-quantized": "int8",
                "naive-quantized": "int8", "mxfp4-pack-quantized": "mxfp4"}[fmt]
        if fmt == "mxfp4-pack-quantized":
            what = "groups of 32"
        extras = (" asymmetric" if asym else "") + (" act-order" if gidx is not None else "")
        return weight, used, f"{fmt} {kind}{extras}, {what}"


def _group_for(module: str, groups: list[_Group], model: Model) -> _Group:
    ranked = sorted(((g.matches(module), i) for i, g in enumerate(groups)), key=lambda x: (-x[0], x[1]))
    score, i = ranked[0]
    if score == 0:
        if len(groups) == 1:
            return groups[0]
        raise bad_config(model, f"no config group targets module {module!r}, which holds quantised weights")
    return groups[i]
