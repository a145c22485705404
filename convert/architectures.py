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


# --- a base for families that gguf-py's TensorNameMap knows --------------------------------

import re
from collections.abc import Callable

import numpy as np

from .errors import InputError

LayoutFn = Callable[[np.ndarray, dict[str, Any]], np.ndarray]


class MappedArchitecture(Architecture):
    """An architecture whose tensor names come from ``gguf.TensorNameMap``.

    A subclass lists the HF state-dict layout once (``hf_layout``, names with ``{bid}``
    for the block index) and the layout transforms by HF name suffix
    (``to_gguf_layout`` / ``from_gguf_layout``). Forward names come from gguf-py's
    tables (not retyped here); the reverse map is the forward map of ``hf_layout``
    inverted, so both directions always agree.
    """

    #: gguf.MODEL_ARCH member name ("LLAMA", "GPT2", "QWEN2")
    model_arch: str = ""
    #: HF state-dict names, "{bid}" for the block index
    hf_layout: tuple[str, ...] = ()
    #: HF tensors that are buffers, not weights (skipped on the way to GGUF)
    hf_skip: tuple[str, ...] = ()
    #: the HF name of the output projection and of the token embedding
    hf_output: str = "lm_head.weight"
    hf_embedding: str = ""

    #: config keys that must be whole numbers >= 1, and those that may also be absent or null.
    #: They are checked before any of them sizes a reshape or a loop, so that a hostile or broken
    #: config.json is a one-line error naming that file rather than a crash deep in a layout.
    required_ints: tuple[str, ...] = ()
    optional_ints: tuple[str, ...] = ()

    # ---- config checks ---------------------------------------------------------------
    def check_config(self, config: dict[str, Any], origin: str | None) -> None:
        """Refuse a config whose sizes cannot describe a model of this family."""
        for key in self.required_ints + self.optional_ints:
            value = config.get(key)
            if value is None:
                if key in self.required_ints:
                    raise InputError(f"{key} is missing from the config of a {self.gguf_arch} model", path=origin)
                continue
            if type(value) is not int or not 1 <= value < 2**40:
                raise InputError(f"{key} is {value!r} in the config; it must be a whole number of at least 1", path=origin)
        self.check_consistency(config, origin)

    def check_consistency(self, config: dict[str, Any], origin: str | None) -> None:
        """Relations between config values (heads that divide the width, …); override per family."""

    def expected_shape(self, hf_name: str, config: dict[str, Any]) -> tuple[int | None, ...] | None:
        """The HF-layout shape the (checked) config implies for ``hf_name`` (None in a dimension: any
        size, e.g. a padded vocabulary), or None when this family says nothing of that tensor."""
        return None

    def check_shape(self, hf_name: str, shape: tuple[int, ...], config: dict[str, Any], origin: str | None) -> None:
        """Refuse a tensor whose shape the config contradicts: a transposed or resized tensor of the
        same byte size would otherwise convert into a model that computes nonsense."""
        want = self.expected_shape(hf_name, config)
        if want is None:
            return
        if len(want) != len(shape) or any(w is not None and w != s for w, s in zip(want, shape)):
            shown = ["*" if w is None else w for w in want]
            raise InputError(f"tensor {hf_name!r} has shape {list(shape)} but the config implies {shown}: "
                             "config and weights disagree", path=origin)

    def check_shapes(self, model: Model, origin: str | None) -> None:
        """Every tensor of the model against :meth:`expected_shape`."""
        for t in model:
            self.check_shape(t.name, t.shape, model.config, origin)

    # ---- names -------------------------------------------------------------------
    def _name_map(self, n_layer: int) -> Any:
        import gguf

        return gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, self.model_arch), n_layer)

    def n_layer(self, config: dict[str, Any]) -> int:
        raise NotImplementedError

    def hf_names(self, config: dict[str, Any]) -> list[str]:
        out = []
        for tmpl in self.hf_layout:
            if "{bid}" in tmpl:
                out += [tmpl.format(bid=i) for i in range(self.n_layer(config))]
            else:
                out.append(tmpl)
        return out

    def gguf_name(self, hf_name: str, n_layer: int) -> str | None:
        return self._name_map(n_layer).get_name(hf_name, try_suffixes=(".weight", ".bias"))

    def reverse_names(self, config: dict[str, Any]) -> dict[str, str]:
        """GGUF name → HF name for every tensor this layout can have."""
        nmap = self._name_map(self.n_layer(config))
        rev = {}
        for hf in self.hf_names(config):
            g = nmap.get_name(hf, try_suffixes=(".weight", ".bias"))
            if g is not None:
                rev[g] = hf
        return rev

    # ---- layouts (override in subclasses) ------------------------------------------------
    def to_gguf_layout(self, hf_name: str, config: dict[str, Any]) -> LayoutFn | None:
        return None

    def from_gguf_layout(self, hf_name: str, config: dict[str, Any]) -> LayoutFn | None:
        return None

    def layout_shape(self, hf_name: str, shape: tuple[int, ...], config: dict[str, Any], forward: bool) -> tuple[int, ...]:
        """Shape after the layout transform (transposes swap the two axes)."""
        return shape

    # ---- tensors ---------------------------------------------------------------------
    def to_gguf_tensors(self, model: Model, warn: Callable[[str], None] = lambda m: None) -> list[Tensor]:
        config = model.config
        origin = model.config_source or model.source or None
        self.check_config(config, origin)
        self.check_shapes(model, origin)
        n_layer = self.n_layer(config)
        tied = self.is_tied(model)
        out = []
        for t in model:
            names = (t.name,) + t.aliases
            if any(n.endswith(s) for n in names for s in self.hf_skip):
                continue
            if t.name == self.hf_output and tied:
                continue
            gname = self.gguf_name(t.name, n_layer)
            if gname is None:
                warn(f"tensor {t.name!r} has no GGUF name for {self.gguf_arch}; left out")
                continue
            fn = self.to_gguf_layout(t.name, config)
            shape = self.layout_shape(t.name, t.shape, config, True)
            if t.undo is not None and t.undo.name == gname:
                t = t.undo  # read from GGUF with the inverse layout: take the original as it was
            elif fn is not None:
                t = t.map(lambda a, fn=fn: fn(a, config), shape=shape)
            if not tied and self.hf_output in t.aliases:
                # Untied in the config but one tensor in the file: write both names (llama.cpp needs output).
                out.append(t.replace(name=gname, aliases=()))
                out.append(t.replace(name="output.weight", aliases=()))
                continue
            out.append(t.replace(name=gname, aliases=()))
        return out

    def is_tied(self, model: Model) -> bool:
        """Tied when the output projection is missing or an alias of the embedding."""
        if self.hf_output in model.tensors:
            return False
        emb = model.tensors.get(self.hf_embedding)
        if emb is not None and self.hf_output in emb.aliases:
            return True
        return self.hf_output not in model.tensors

    def from_gguf_tensors(self, tensors: list[Tensor], config: dict[str, Any]) -> list[Tensor]:
        self.check_config(config, tensors[0].origin if tensors else None)
        rev = self.reverse_names(config)
        out = []
        for t in tensors:
            hf = rev.get(t.name)
            if hf is None:
                raise InputError(f"tensor {t.name!r} is not part of a {self.gguf_arch} model", path=t.origin or None)
            fn = self.from_gguf_layout(hf, config)
            shape = self.layout_shape(hf, t.shape, config, False)
            self.check_shape(hf, shape, config, t.origin or None)
            original = t
            if fn is not None:
                if t.dtype.is_quantized:
                    from .transforms import dequantize_tensor

                    t = dequantize_tensor(t)
                t = t.map(lambda a, fn=fn: fn(a, config), shape=shape)
            out.append(t.replace(name=hf, undo=original))
        return out


def rope_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF → GGUF rotary layout: within each head, interleave the two halves (llama.cpp's permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def rope_unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """The exact inverse of :func:`rope_permute` (GGUF → HF)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def block_index(name: str) -> int | None:
    m = re.search(r"\.(\d+)\.", name)
    return int(m.group(1)) if m else None
