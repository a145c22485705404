"""FP8 weights with their scales: the Hugging Face fine-grained layout (DeepSeek-V3/R1, Qwen3-FP8 …).

``quantization_config = {"quant_method": "fp8", "weight_block_size": [128, 128], …}``; each quantised
``X.weight`` is ``float8_e4m3fn`` (or e5m2) with ``X.weight_scale_inv`` beside it: one float32 per
128×128 block (``ceil`` of the weight's shape when it does not divide), and the true weight is
``float32(w) * scale_inv`` blockwise (transformers' ``Fp8Dequantize``; llama.cpp's converter
``dequant_simple``). Without ``weight_block_size`` the scale's own shape says what it covers: one value
(per tensor), one per row (per channel) or a grid that divides the weight. Experts stored as 3-D
``[n_expert, rows, cols]`` carry ``[n_expert, …]`` scales; a scale grid other than the configured one
is taken when it divides the weight, as transformers does (FP4 experts in ``1×32`` blocks beside
``128×128`` FP8 blocks). uint8 scales are E8M0 exponents
(``scale_fmt: ue8m0``). Weights stored as int8 with scales are FP4 (E2M1) pairs, low nibble first
(transformers' ``expert_dtype: fp4``), so their rows hold twice as many values as bytes.

Activation scales (``*.activation_scale``, ``*.input_scale``) say how to quantise activations at run
time; they are not part of any weight and are dropped. Without a config, FP8 weights that have a
``*_scale_inv`` beside them are decoded the same way (the grid must divide the weight then).
"""

from __future__ import annotations

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
    unpack_fp4,
)

SUFFIX = "_scale_inv"
FP8 = {"f8_e4m3": ml_dtypes.float8_e4m3fn, "f8_e5m2": ml_dtypes.float8_e5m2}
FP4 = ("i8", "u8")  # two E2M1 values a byte
ACTIVATION_SUFFIXES = (".activation_scale", "_activation_scale", ".input_scale")


class FineGrainedFP8(Encoding):
    name = "fp8"
    description = "FP8 (e4m3/e5m2) or FP4 weights with per-tensor, per-channel or block scales (*.weight_scale_inv)"
    priority = 10

    def claims(self, model: Model) -> bool:
        method = quant_method(model)
        if method == "fp8":
            return True
        if method is not None:
            return False
        names = model.tensors
        return any(n.endswith(SUFFIX) and names.get(n[: -len(SUFFIX)]) is not None
                   and names[n[: -len(SUFFIX)]].dtype.name in FP8 for n in names)

    def decode(self, model: Model, warn: Any) -> Model:
        qc = quant_config(model) or {}
        block = qc.get("weight_block_size")
        if block is not None:
            if not (isinstance(block, (list, tuple)) and len(block) == 2
                    and all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block)):
                raise bad_config(model, f"weight_block_size must be two positive integers, not {block!r}")
            block = (int(block[0]), int(block[1]))
        fmt = qc.get("scale_fmt", "float")
        if fmt not in (None, "float", "ue8m0"):
            raise bad_config(model, f"scale_fmt {fmt!r} is not one lmconv knows (float, ue8m0)")
        from_config = quant_method(model) == "fp8"

        names = model.tensors
        pieces: set[str] = set()
        decoded: dict[str, Tensor] = {}
        kinds: list[str] = []
        for t in model:
            if not t.name.endswith(SUFFIX):
                continue
            base = t.name[: -len(SUFFIX)]
            w = names.get(base)
            if w is None:
                raise bad(t, model, f"is a scale without its weight {base!r}")
            decoded[base], kind = self._decoded(w, t, block, model)
            kinds.append(kind)
            pieces.add(t.name)
        if from_config:
            for t in model:
                if t.dtype.name in FP8 and t.name not in decoded:
                    raise bad(t, model, f"is FP8 but its scale tensor {t.name + SUFFIX!r} is missing")
        dropped = {t.name for t in model if t.name.endswith(ACTIVATION_SUFFIXES)} if from_config else set()
        out = [decoded.get(t.name, t) for t in model if t.name not in pieces and t.name not in dropped]
        detail = ", ".join(sorted(set(kinds))) or "no FP8 weights"
        if not decoded:
            warn("quantization_config says fp8 but no weight has a *_scale_inv: the tensors are taken as they are")
        return finish(model, self, out, list(decoded), detail, dropped)

    def _decoded(self, w: Tensor, s: Tensor, block: tuple[int, int] | None, model: Model) -> tuple[Tensor, str]:
        if w.dtype.name in FP8:
            fp4 = False
            np_fp8 = FP8[w.dtype.name]
            kind = w.dtype.name.removeprefix("f8_")
        elif w.dtype.name in FP4:
            fp4 = True
            kind = "fp4 e2m1"
        else:
            raise bad(w, model, f"has a scale {s.name!r} but is {w.dtype.name}, not FP8 (or FP4 pairs in int8)")
        if len(w.shape) < 2:
            raise bad(w, model, f"has shape {list(w.shape)}: an FP8 weight with scales is a matrix (or a stack of them)")
        *lead, rows, stored_cols = w.shape
        cols = stored_cols * 2 if fp4 else stored_cols
        units = rows
        for d in lead:
            units *= d
        grid = _scale_grid(s, lead, rows, cols, block, model)
        bm, bn, s_rows, s_cols = grid
        what = ("per-tensor scale" if s_rows == s_cols == 1 and (bm, bn) == (rows, cols) else
                "per-channel scales" if (bm, s_cols) == (1, 1) else f"{bm}×{bn} block scales")

        def fill(rec: np.ndarray) -> None:
            rec["w"] = w.load().view(np.uint8).reshape(units, stored_cols)
            sc = as_f32_scales(s.load(), s, model).reshape(-1, s_rows, s_cols)
            if sc.shape[0] == 1 and len(lead):
                sc = np.broadcast_to(sc, (units // rows, s_rows, s_cols))
            per_row = sc[:, np.arange(rows) // bm, :] if s_rows > 1 else np.broadcast_to(sc, (sc.shape[0], rows, s_cols))
            rec["s"] = per_row.reshape(units, s_cols)

        def decode(rec: np.ndarray) -> np.ndarray:
            raw = rec["w"]
            if fp4:
                q = unpack_fp4(raw)
            else:
                q = fp8_values(raw, np_fp8)
            return affine(q, rec["s"], None, cols, block=bn)

        fields = [Field("w", np.uint8, stored_cols), Field("s", np.float32, s_cols)]
        return packed_weight(w.name, (*lead, rows, cols), units, fields, fill, decode, (w, s), aliases=w.aliases,
                             note="dequant:fp8"), \
            f"{kind}, {what}"


def _scale_grid(s: Tensor, lead: list[int], rows: int, cols: int, block: tuple[int, int] | None,
                model: Model) -> tuple[int, int, int, int]:
    """``(block rows, block cols, scale rows, scale cols)`` of the scale ``s`` of a ``[*lead, rows, cols]``
    weight, or a one-line error naming ``s``."""
    shape = tuple(s.shape)
    numel = 1
    for d in shape:
        numel *= d
    if numel == 1 or (lead and shape in (tuple(lead), (*lead, 1), (*lead, 1, 1))):
        return rows, cols, 1, 1  # one scale per tensor (per expert of a stack)
    if block is not None:
        bm, bn = block
        want = (*lead, cdiv(rows, bm), cdiv(cols, bn))
        if shape == want:
            return bm, bn, want[-2], want[-1]
    if shape in ((*lead, rows, 1), (*lead, rows)):
        return 1, cols, rows, 1
    # Another grid that divides the weight (transformers derives the block from the scale's shape:
    # checkpoints mix 128×128 FP8 blocks with 1×32 FP4 experts under one weight_block_size).
    if len(shape) == len(lead) + 2 and tuple(shape[:-2]) == tuple(lead):
        sr, sc = shape[-2:]
        if sr and sc and rows % sr == 0 and cols % sc == 0:
            return rows // sr, cols // sc, sr, sc
    if block is not None:
        raise bad(s, model, f"has shape {list(shape)}, expected {list(want)} for {block[0]}×{block[1]} blocks of a "
                            f"{[*lead, rows, cols]} weight")
    raise bad(s, model, f"has shape {list(shape)}, which is no scale grid of a {[*lead, rows, cols]} weight "
                        f"(without weight_block_size in the config, the grid must divide the weight)")
