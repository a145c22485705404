"""lmconv: convert language-model weights between formats through one neutral model.

The Python API mirrors the command line::

    from lmconv import convert, read_model
    convert("model/", "model.gguf", quant="q8_0")
    model = read_model("model.gguf")          # lazy: nothing loaded yet
    model.tensors["model.embed_tokens.weight"].load()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["convert", "read_model", "LmconvError", "Model", "Tensor"]

if TYPE_CHECKING:
    from .errors import LmconvError
    from .ir import Model, Tensor
    from .pipeline import convert, read_model


def __getattr__(name: str) -> Any:
    # Lazy, so that `import lmconv` (and the CLI's --help) stays fast.
    if name in ("convert", "read_model"):
        from . import pipeline

        return getattr(pipeline, name)
    if name == "LmconvError":
        from .errors import LmconvError

        return LmconvError
    if name in ("Model", "Tensor"):
        from . import ir

        return getattr(ir, name)
    raise AttributeError(name)
