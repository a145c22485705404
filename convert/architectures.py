"""The architecture contract: what a family plugin declares about one model family.

An :class:`Architecture` (registered through the ``register_architectures`` hook) says:

* which models it is: HF architecture classes (``config["architectures"]``) and ``model_type`` values;
* what a sane config and a sane tensor look like (``required_ints``, :meth:`check_consistency`,
  :meth:`expected_shape`), checked both ways before any tensor is touched;
* per target format, a :class:`Layout`: the tensor rules (:mod:`lmconv.rules`) that lay the HF
  state dict out in that format, the metadata keys its config maps to (:class:`HParam`), and the
  family's name there (GGUF's ``general.architecture``);
* optionally, its reference forward pass (:meth:`Architecture.forward`) for ``verify --logits``,
  built from the shared blocks in :mod:`lmconv.blocks`.

Formats ask the registry for the architecture of a model and call :meth:`Architecture.to_target` /
:meth:`Architecture.from_target`; the core names no family and no format.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import InputError, LmconvError, UsageError
from .ir import Model, Tensor
from .rule_engine import apply_forward, apply_inverse, coverage
from .rules import Rule

Config = Mapping[str, Any]


# =========================================================================== hyperparameters
def config_get(config: Config, path: str) -> Any:
    """``config["a"]["b"]`` for ``"a.b"``; None when any part is missing."""
    cur: Any = config
    for part in path.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return None
        cur = cur[part]
    return cur


def config_set(config: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    cur = config
    for part in parts[:-1]:
        nxt = cur.get(part)
        if not isinstance(nxt, dict):
            nxt = cur[part] = {}
        cur = nxt
    cur[parts[-1]] = value


def short_float(x: float) -> float:
    """A float32 read back from a file, as the short decimal it was written from (1e-05, not 9.99999e-06)."""
    return float(str(np.float32(x)))


@dataclass(frozen=True)
class HParam:
    """One metadata key of a target and the config key it holds.

    ``key`` may contain ``{arch}`` (gguf-py's ``Keys.LLM.CONTEXT_LENGTH`` is
    ``"{arch}.context_length"``). ``config`` names the config key, dotted for nested ones
    (``"rope_parameters.rope_theta"``); ``fallbacks`` are read too, in order, but only ``config`` is
    written back. ``default`` fills in a missing value both ways; ``required`` refuses a config
    without it (a one-line error naming the key).
    """

    key: str
    config: str
    type: type = int
    default: Any = None
    required: bool = False
    fallbacks: tuple[str, ...] = ()

    def read(self, config: Config) -> Any:
        for path in (self.config, *self.fallbacks):
            v = config_get(config, path)
            if v is not None:
                return v
        return self.default

    def to_target(self, config: Config, arch: str, origin: str | None) -> tuple[str, Any] | None:
        value = self.read(config)
        if value is None:
            if self.required:
                raise InputError(f"{self.config} is missing from the config", path=origin)
            return None
        try:
            value = self.type(value)
        except (TypeError, ValueError):
            raise InputError(f"{self.config} is {value!r} in the config, not a {self.type.__name__}", path=origin) from None
        return self.key.format(arch=arch), value

    def from_target(self, meta: Config, arch: str, config: dict[str, Any], origin: str | None = None) -> None:
        key = self.key.format(arch=arch)
        value = meta.get(key, self.default)
        if value is None:
            if self.required:
                raise InputError(f"metadata {key} is missing; a {arch} model needs it", path=origin)
            return
        config_set(config, self.config, short_float(value) if self.type is float else self.type(value))


# =========================================================================== layouts
RulesOf = Callable[[Config], Sequence[Rule]]


@dataclass
class Layout:
    """How a family is laid out in one target format.

    ``arch`` is the family's name in that format (GGUF ``general.architecture``). ``rules`` maps the
    config to the tensor rules. ``hparams`` map config keys to metadata keys both ways;
    ``extra_meta(config)`` adds computed keys on the way out and ``extra_config(meta, config)``
    reads them back (both optional). ``config_base`` is what every config read back starts from
    (``architectures``, ``model_type``, fixed keys such as the activation). ``requires_output``:
    the target's runtime needs the output projection as a tensor of its own, so a tied model is
    written with a copy of the embedding under the output's name (some of llama.cpp's graphs do).
    """

    target: str
    arch: str
    rules: RulesOf
    hparams: Sequence[HParam] = ()
    extra_meta: Callable[[Config], dict[str, Any]] | None = None
    extra_config: Callable[[Config, dict[str, Any]], None] | None = None
    config_base: dict[str, Any] = field(default_factory=dict)
    requires_output: bool = False

    def meta_from_config(self, config: Config, origin: str | None = None) -> dict[str, Any]:
        meta: dict[str, Any] = {}
        for hp in self.hparams:
            kv = hp.to_target(config, self.arch, origin)
            if kv is not None:
                meta[kv[0]] = kv[1]
        if self.extra_meta is not None:
            meta.update(self.extra_meta(config))
        return meta

    def config_from_meta(self, meta: Config, origin: str | None = None) -> dict[str, Any]:
        config: dict[str, Any] = {k: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v)
                                  for k, v in self.config_base.items()}
        for hp in self.hparams:
            hp.from_target(meta, self.arch, config, origin)
        if self.extra_config is not None:
            self.extra_config(meta, config)
        return config


# =========================================================================== recognition
@dataclass
class Recognition:
    """A family seen in a model's tensor names and shapes (when it came without a config).

    ``config`` holds the keys the tensors tell exactly; ``missing`` the ones they cannot (head
    counts are not in any shape, …): a config.json must give those."""

    family: str
    config: dict[str, Any]
    missing: tuple[str, ...]
    layers: int = 0
    hidden: int = 0
    fit: float = 0.0  # the share of the family's tensor kinds the model has
    priority: int = 0  # the family's recognition_priority

    def describe(self) -> str:
        sizes = ", ".join(x for x in (f"{self.layers} layers" if self.layers else "",
                                      f"hidden {self.hidden}" if self.hidden else "") if x)
        return f"looks like a {self.family}-family model" + (f": {sizes}" if sizes else "")


# =========================================================================== the contract
class Architecture:
    """One model family; see the module docstring. Subclass and set what your family needs."""

    #: the family's name in lmconv (what ``lmconv families`` lists); unique among plugins
    name: str = ""
    #: HF architecture strings (config.json ``architectures[0]``) this family handles
    hf_architectures: tuple[str, ...] = ()
    #: config ``model_type`` values, for a config without ``architectures``
    model_types: tuple[str, ...] = ()
    description: str = ""
    #: HF state-dict name endings that are buffers, not weights (left out, never compared)
    hf_skip: tuple[str, ...] = ()
    #: the HF names of the token embedding and of the output projection (for ties)
    hf_embedding: str = ""
    hf_output: str = "lm_head.weight"
    #: config keys that must be whole numbers >= 1, and those that may also be absent or null: checked
    #: before any of them sizes a reshape, so a broken config.json is a one-line error naming that file
    required_ints: tuple[str, ...] = ()
    optional_ints: tuple[str, ...] = ()
    #: when the tensors of a model without a config fit several families (one state-dict layout can be
    #: shared by many decoder families), the highest priority names it: the most common family sets it
    recognition_priority: int = 0
    #: config keys beyond ``required_ints`` that a model's tensors cannot tell and that matter
    recognition_needs: tuple[str, ...] = ()
    #: config keys beyond the common ones (sizes, heads, vocabulary) that ``inspect`` shows for this family
    summary_keys: tuple[str, ...] = ()
    #: the plugin that registered it (set by the registry)
    plugin: str = ""

    # ---- what it can do -------------------------------------------------------------
    def layouts(self) -> dict[str, Layout]:
        """Target format name → :class:`Layout`. Formats that keep HF names need none."""
        return {}

    def layout(self, target: str) -> Layout | None:
        return self.layouts().get(target)

    @property
    def has_forward(self) -> bool:
        return type(self).forward is not Architecture.forward

    def forward(self, model: Model, ids: Sequence[int], dtype: np.dtype) -> np.ndarray:
        """Logits ``[len(ids), vocab]`` of ``model`` (HF names and layouts) in ``dtype`` (float32 or
        float64), computed as transformers' eager implementation does. Load weights one at a time
        through :class:`lmconv.blocks.Weights`."""
        raise UsageError(f"the {self.name} family has no reference forward pass")

    # ---- checks --------------------------------------------------------------------
    def check_config(self, config: Config, origin: str | None) -> None:
        """Refuse a config whose sizes cannot describe a model of this family."""
        for key in self.required_ints + self.optional_ints:
            value = config.get(key)
            if value is None:
                if key in self.required_ints:
                    raise InputError(f"{key} is missing from the config of a {self.name} model", path=origin)
                continue
            if type(value) is not int or not 1 <= value < 2**40:
                raise InputError(f"{key} is {value!r} in the config; it must be a whole number of at least 1", path=origin)
        self.check_consistency(config, origin)

    def check_consistency(self, config: Config, origin: str | None) -> None:
        """Relations between config values (heads that divide the width, …); override per family."""

    def expected_shape(self, hf_name: str, config: Config) -> tuple[int | None, ...] | None:
        """The HF-layout shape the (checked) config implies for ``hf_name`` (None in a dimension: any
        size, e.g. a padded vocabulary), or None when this family says nothing of that tensor."""
        return None

    def check_shape(self, hf_name: str, shape: tuple[int, ...], config: Config, origin: str | None) -> None:
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
        for t in model:
            self.check_shape(t.name, t.shape, model.config, origin)

    def n_layer(self, config: Config) -> int:
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if isinstance(config.get(key), int):
                return int(config[key])
        raise InputError(f"the config of a {self.name} model gives no layer count")

    # ---- recognition -----------------------------------------------------------------
    def recognize(self, model: Model) -> Recognition | None:
        """Whether ``model``'s tensors (HF names, no config) are this family's, and what they tell.

        The default asks the family's layouts: the model is recognised when every tensor is one a
        layout's rules take (buffers aside) and the embedding is there. :meth:`infer_config` says
        which config keys the tensors give."""
        names = [t.name for t in model if not self.is_buffer(t.name)]
        if not names or (self.hf_embedding and self.hf_embedding not in model.tensors):
            return None
        best = 0.0
        for layout in self.layouts().values():
            try:
                left, share = coverage(layout.rules({}), names)
            except (LmconvError, KeyError, TypeError, ValueError, IndexError):
                continue
            if not left:
                best = max(best, share)
        if best == 0.0:
            return None
        config = self.infer_config(model)
        missing = tuple(k for k in self.required_ints + self.recognition_needs if k not in config)
        blocks = {m for t in model for m in re.findall(r"\.(\d+)\.", t.name)[:1]}
        emb = model.tensors.get(self.hf_embedding)
        return Recognition(self.name, config, missing, layers=len(blocks),
                           hidden=int(emb.shape[-1]) if emb is not None and emb.shape else 0, fit=best,
                           priority=self.recognition_priority)

    def infer_config(self, model: Model) -> dict[str, Any]:
        """The config keys this family's tensors give exactly (override per family; the default: none)."""
        return {}

    def is_buffer(self, name: str) -> bool:
        return any(name.endswith(s) for s in self.hf_skip)

    # ---- ties ----------------------------------------------------------------------
    def is_tied(self, model: Model) -> bool:
        """Tied when the output projection is missing or an alias of the embedding."""
        if not self.hf_output or self.hf_output in model.tensors:
            return False
        return True

    def untied_tensors(self, model: Model) -> list[Tensor]:
        """The tensors without aliases, for a target that stores each name once: a tied output is
        left out (the target reuses the embedding), an output the config says is untied but that is
        one tensor with the embedding in this model is written under both names."""
        tied = self.is_tied(model) and model.config.get("tie_word_embeddings", True) is not False
        out: list[Tensor] = []
        for t in model:
            if self.is_buffer(t.name):
                continue
            out.append(t.replace(aliases=()))
            if self.hf_output in t.aliases and not tied:
                out.append(t.replace(name=self.hf_output, aliases=()))
        return out

    # ---- both ways -------------------------------------------------------------------
    def _layout_or_fail(self, target: str) -> Layout:
        layout = self.layout(target)
        if layout is None:
            raise UsageError(f"the {self.name} family has no layout for {target}")
        return layout

    def to_target(self, model: Model, target: str, warn: Callable[[str], None] = lambda m: None
                  ) -> tuple[list[Tensor], dict[str, Any]]:
        """HF tensors and config → ``target``'s tensors (lazy) and metadata."""
        layout = self._layout_or_fail(target)
        config = model.config
        origin = model.config_source or model.source or None
        self.check_config(config, origin)
        self.check_shapes(model, origin)
        hf = self.untied_tensors(model)
        if layout.requires_output and self.hf_output and not any(t.name == self.hf_output for t in hf):
            emb = next((t for t in hf if t.name == self.hf_embedding), None)
            if emb is not None:
                hf.append(emb.replace(name=self.hf_output, aliases=()))
        tensors, unmatched = apply_forward(layout.rules(config), hf, config)
        for t in unmatched:
            warn(f"tensor {t.name!r} has no {target} name in a {layout.arch} model; left out")
        return tensors, layout.meta_from_config(config, origin)

    def from_target(self, tensors: Sequence[Tensor], config: dict[str, Any], target: str,
                    origin: str | None = None) -> tuple[list[Tensor], dict[str, Any]]:
        """``target``'s tensors and the config read from its metadata → HF tensors (lazy) and config."""
        layout = self._layout_or_fail(target)
        self.check_config(config, origin)
        hf, unmatched, folded = apply_inverse(layout.rules(config), tensors, config)
        if unmatched:
            t = unmatched[0]
            raise InputError(f"tensor {t.name!r} is not part of a {layout.arch} model", path=t.origin or origin)
        config = {**config, **folded}
        for t in hf:
            self.check_shape(t.name, t.shape, config, t.origin or origin)
        names = {t.name for t in hf}
        if self.hf_output and self.hf_embedding in names and self.hf_output not in names:
            if config.get("tie_word_embeddings") is False:
                hf = [t.replace(aliases=t.aliases + (self.hf_output,)) if t.name == self.hf_embedding else t for t in hf]
            else:
                config["tie_word_embeddings"] = True
        elif self.hf_output in names and "tie_word_embeddings" not in config:
            config["tie_word_embeddings"] = False
        return hf, config

    def __repr__(self) -> str:
        return f"<Architecture {self.name} {self.hf_architectures}>"
