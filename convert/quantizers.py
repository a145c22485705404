"""What a quantiser plugin provides.

A :class:`Quantizer` turns f32 rows into the block bytes of one type and back, and states the
error bound of that round trip (verification checks every element against it). Its ``dtype`` is
the block type, declared with :func:`lmconv.dtypes.block_type`, so a plugin can bring a block type
lmconv did not know. A :class:`Preset` (q4_k_m …) is a per-tensor policy: it picks a type for each
tensor of a model, the way llama-quantize's mixtures do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .bounds import Bound
from .dtypes import DType


@dataclass(frozen=True)
class Quantizer:
    """One type. ``quantize`` takes float32 rows ``(..., n)`` with ``n % block_size == 0`` and
    returns uint8 ``(..., n // block_size * type_size)`` (or the float type's array); ``dequantize``
    is its inverse. ``quantize`` is None for a type that can only be read (dequantised).
    ``bound`` is the element-wise error of quantize → dequantize; None means no documented bound
    (verification then asks for ``--atol/--rtol``)."""

    name: str
    dtype: DType
    quantize: Callable[[np.ndarray], np.ndarray] | None
    dequantize: Callable[[np.ndarray], np.ndarray]
    description: str = ""
    bound: Bound | None = None

    @property
    def block_size(self) -> int:
        return self.dtype.block_size

    @property
    def can_quantize(self) -> bool:
        return self.quantize is not None


@dataclass(frozen=True)
class TensorChoice:
    """What a preset sees of one tensor: its name in the target and its shape (numpy order)."""

    name: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Preset:
    """A named mixture. ``choose(tensors, **context)`` returns a dtype name per tensor name.

    ``context`` carries ``arch``, ``n_layer``, ``n_head``, ``n_head_kv`` and the user's
    overrides (``pure``, ``output_tensor_type``, ``token_embedding_type``,
    ``leave_output_tensor``, ``tensor_type_overrides``).
    """

    name: str
    base: str
    choose: Callable[..., dict[str, str]]
    description: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)

    def __call__(self, tensors: Sequence[TensorChoice], **context: Any) -> dict[str, str]:
        return self.choose(tensors, **context)
