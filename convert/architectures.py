"""What an architecture plugin provides: names, config keys and layouts of one model family.

The core never hard-codes a model family. A GGUF writer asks the registry for the
:class:`Architecture` of ``config["architectures"][0]`` (or of ``general.architecture``
when reading), then lets it rename tensors, translate config keys and apply the
layout transforms (with their exact inverses for the way back).
"""

from __future__ import annotations

from typing import Any

from .ir import Model, Tensor


class Architecture:
    """Base class; override what your family needs (see plugins/arch_llama.py)."""

    #: HF architecture strings this plugin handles ("LlamaForCausalLM", …)
    hf_architectures: tuple[str, ...] = ()
    #: the value of ``general.architecture`` in GGUF ("llama", "gpt2", …)
    gguf_arch: str = ""
    description: str = ""

    def to_gguf_tensors(self, model: Model) -> list[Tensor]:
        """HF-named, HF-laid-out tensors → GGUF-named, GGUF-laid-out tensors (lazy)."""
        raise NotImplementedError

    def from_gguf_tensors(self, tensors: list[Tensor], config: dict[str, Any]) -> list[Tensor]:
        """The exact inverse of :meth:`to_gguf_tensors`."""
        raise NotImplementedError

    def config_to_gguf(self, config: dict[str, Any]) -> dict[str, Any]:
        """HF config.json → GGUF metadata (keys without types; the writer types them)."""
        raise NotImplementedError

    def gguf_to_config(self, kv: dict[str, Any]) -> dict[str, Any]:
        """GGUF metadata → an HF config.json that transformers accepts."""
        raise NotImplementedError

    def tied_output(self, model: Model) -> bool:
        """True when the output projection is the token embedding (no output.weight in GGUF)."""
        return bool(model.config.get("tie_word_embeddings", False))

    def __repr__(self) -> str:
        return f"<Architecture {self.gguf_arch} {self.hf_architectures}>"
