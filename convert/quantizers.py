"""What a quantiser plugin provides.

A :class:`Quantizer` turns f32 rows into the block bytes of one GGML type and
back. A :class:`Preset` (q4_k_m …) is a per-tensor policy: it picks a type for
each tensor of a model, the way llama-quantize's mixtures do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .dtypes import DType


@dataclass(frozen=True)
class Quantizer:
    """One block type. ``quantize`` takes float32 rows ``(..., n)`` with ``n % block_size == 0``
    and returns uint8 ``(..., n // block_size * type_size)``; ``dequantize`` is its inverse."""

    name: str
    dtype: DType
    quantize: Callable[[np.ndarray], np.ndarray]
    dequantize: Callable[[np.ndarray], np.ndarray]
    description: str = ""

    @property
    def block_size(self) -> int:
        return self.dtype.block_size


@dataclass(frozen=True)
class TensorChoice:
    """What a preset sees of one tensor: its GGUF name and shape (numpy order)."""

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
