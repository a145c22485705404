"""Encodings: weights a checkpoint stores already quantised (FP8 with scales, GPTQ/AWQ int4, MXFP4 …).

A format reads tensors as the file lays them out; an encoding knows that some of those tensors
are really one weight in pieces (``w`` plus ``w_scale_inv``; ``qweight`` + ``qzeros`` + ``scales``)
and puts the weight back together as one lazy tensor that dequantises when loaded, so every
family, writer, cast and quantiser downstream sees an ordinary float weight. Encodings are found
by the config a checkpoint carries (``quantization_config``) or by the tensors themselves, and are
applied by :func:`decode_encodings` right after a model is read, before its family is recognised.

An encoding that claims a model but finds it broken (a scale of the wrong shape, a missing
``qzeros``) raises :class:`lmconv.errors.InputError`, a one-line message naming the tensor; it
never lets a weight through undecoded, as silent corruption is the worst result a converter has.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .ir import Model


class Encoding:
    """One stored encoding. Subclasses set ``name`` and ``description`` and implement
    :meth:`claims` and :meth:`decode`."""

    name: str = ""
    description: str = ""
    plugin: str = ""
    #: When two encodings claim a model, the higher priority decodes it first.
    priority: int = 0

    def claims(self, model: Model) -> bool:
        """Whether ``model`` (as read, with its config) holds weights in this encoding."""
        raise NotImplementedError

    def decode(self, model: Model, warn: Callable[[str], None]) -> Model:
        """``model`` with each encoded weight replaced by one lazy float tensor, the helper tensors
        (scales, zero points, group indices) gone and the config rewritten to describe what the
        tensors now are (``quantization_config`` dropped). Records what it did with
        :func:`note_decoded` so ``inspect`` and the report can say so."""
        raise NotImplementedError


def note_decoded(model: Model, encoding: Encoding, detail: str, count: int) -> None:
    """Record on ``model`` that ``count`` tensors were decoded from ``encoding`` (``detail``: the
    variant, e.g. ``"e4m3, 128×128 block scales"``)."""
    found: list[dict[str, Any]] = model.metadata.setdefault("encodings", [])
    found.append({"encoding": encoding.name, "detail": detail, "tensors": count})


def describe_encodings(model: Model) -> list[str]:
    """One line per encoding the model was stored in (empty for plain float checkpoints)."""
    return [f"{e['encoding']} ({e['detail']}): {e['tensors']} tensors decoded"
            for e in model.metadata.get("encodings", [])]


def decode_encodings(model: Model, warn: Callable[[str], None] = lambda m: None) -> Model:
    """Apply every registered encoding that claims ``model``, highest priority first."""
    from .registry import get_registry

    encodings = sorted(get_registry().encodings.values(), key=lambda e: (-e.priority, e.name))
    for enc in encodings:
        if enc.claims(model):
            model = enc.decode(model, warn)
    return model
