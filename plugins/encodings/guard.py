"""The last encoding: refuses a checkpoint that is still quantised after every installed encoding ran.

A ``quantization_config`` no encoding took (bitsandbytes, HQQ, torchao …), or tensors that only make
sense as pieces of a quantised weight (``qweight``, ``weight_packed``, ``*_scale_inv``, ``*_blocks``)
without a config that says how to put them together, would otherwise convert as their raw codes:
silent corruption. This says so in one line (exit 3) instead.
"""

from __future__ import annotations

from typing import Any

from lmconv.encodings import Encoding
from lmconv.ir import Model, Tensor

from .common import bad, bad_config, quant_config

PIECE_SUFFIXES = (".qweight", ".qzeros", ".weight_packed", "_scale_inv")


def _stray(model: Model) -> Tensor | None:
    names = model.tensors
    for t in model:
        if t.name.endswith(PIECE_SUFFIXES):
            return t
        if t.name.endswith("_blocks") and t.name[: -len("_blocks")] + "_scales" in names:
            return t
    return None


class Guard(Encoding):
    name = "unsupported-quantisation"
    description = "refuses quantised checkpoints that no installed encoding decodes (one line, exit 3)"
    priority = -1000

    def claims(self, model: Model) -> bool:
        return quant_config(model) is not None or _stray(model) is not None

    def decode(self, model: Model, warn: Any) -> Model:
        from lmconv.registry import get_registry

        known = sorted(n for n in get_registry().encodings if n != self.name)
        qc = quant_config(model)
        if qc is not None:
            method = qc.get("quant_method")
            raise bad_config(model, f"quant_method {method!r} is not supported: lmconv decodes {', '.join(known)}; "
                                    "converting the stored codes as weights would give wrong numbers")
        t = _stray(model)
        assert t is not None
        raise bad(t, model, "is a piece of a quantised weight, but no quantization_config says how it was stored "
                            "(give the model's config.json with --config)")
