"""Runtimes: programs that run a model file and give its logits (``verify --runtime NAME``).

lmconv's own reference is ``numpy``: each family's forward pass over the IR. Other runtimes come
from plugins; the GGUF plugin registers llama.cpp. A runtime takes a path to a file of one of its
formats and a list of token ids, and returns ``[len(ids), vocab]`` logits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Runtime:
    """``logits(path, ids)`` for files of ``formats`` (format names, e.g. ``("gguf",)``)."""

    name: str
    formats: tuple[str, ...]
    logits: Callable[[str, Sequence[int]], np.ndarray]
    description: str = ""
