"""Stored encodings of already-quantised checkpoints, decoded into lazy float weights as they are read.

FP8 with scales (:mod:`.fp8`), compressed-tensors (:mod:`.compressed_tensors`), GPTQ (:mod:`.gptq`),
AWQ (:mod:`.awq`), MXFP4 (:mod:`.mxfp4`), and :mod:`.guard`, which refuses what none of them decodes.
Each is an :class:`lmconv.encodings.Encoding` (see docs/writing-a-plugin.md, ``register_encodings``).
"""

from __future__ import annotations

from typing import Any

from lmconv.hookspecs import hookimpl

from .awq import AWQ
from .compressed_tensors import CompressedTensors
from .fp8 import FineGrainedFP8
from .gptq import GPTQ
from .guard import Guard
from .mxfp4 import MXFP4Encoding


@hookimpl
def register_encodings(register: Any) -> None:
    for encoding in (FineGrainedFP8(), CompressedTensors(), GPTQ(), AWQ(), MXFP4Encoding(), Guard()):
        register(encoding)
