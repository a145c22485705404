"""LoRA adapters in the IR, checked against their base model, and merged into it.

An adapter is carried through the pipeline as a :class:`lmconv.ir.Model` whose tensors are low-rank
factor pairs named after the base weight they change, ``<weight>.lora_A`` and ``<weight>.lora_B``,
in one orientation whatever the file stores: ``delta(W) = scale · B @ A`` in the base's own layout of
``W`` (HF names and shapes), ``A [..., r, in]`` and ``B [..., out, r]``. Tensors of another name are
whole tensors the adapter replaces (``modules_to_save``). The rest is metadata:

* ``metadata["adapter"]``: what ``lmconv inspect`` shows (base model, rank, alpha, target modules …);
* ``metadata["adapter.pairs"]``: per weight, the ``alpha`` and whether the scale is rank-stabilised
  (``alpha / sqrt(r)`` instead of ``alpha / r``), so that every pair knows its own scale;
* ``metadata["adapter.detail"]``: what a format plugin keeps for the way back (the adapter's own
  settings file, which pairs act on an embedding, which whole tensors were saved how);
* ``metadata["adapter.base"]``: the base :class:`Model`, when one was given (``--base``).

:mod:`lmconv.adapter_rules` applies a family's layout rules to the factors (a format that renames and
re-lays-out weights, like its models, needs its adapters laid out the same way). :func:`merge_into`
makes the merged model ``W + scale · B @ A``, lazily, one tensor at a time.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .dtypes import F32
from .errors import InputError, UsageError
from .ir import Model, Tensor
from .transforms import dequantize_tensor

LORA_A, LORA_B = ".lora_A", ".lora_B"
META, META_PAIRS, META_DETAIL, META_BASE = "adapter", "adapter.pairs", "adapter.detail", "adapter.base"
MERGE_INSTEAD = "merge it into the base model instead (lmconv merge BASE ADAPTER DST)"


def pair_scale(alpha: float, rslora: bool, rank: int) -> float:
    """What a pair's ``B @ A`` is multiplied by: ``alpha / r``, or ``alpha / sqrt(r)`` (rank-stabilised)."""
    return float(alpha) / (math.sqrt(rank) if rslora else rank)


@dataclass
class LoraPair:
    """One weight's factors: ``delta(W) = scale · b @ a`` (``a [..., r, in]``, ``b [..., out, r]``)."""

    name: str
    a: Tensor
    b: Tensor
    alpha: float
    rslora: bool = False

    @property
    def rank(self) -> int:
        return self.b.shape[-1]

    @property
    def scale(self) -> float:
        return pair_scale(self.alpha, self.rslora, self.rank)

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the weight it changes."""
        return (*self.b.shape[:-1], self.a.shape[-1])


@dataclass
class Adapter:
    """The view of an adapter model: its pairs and whole tensors by weight name, and its metadata."""

    pairs: dict[str, LoraPair]
    full: dict[str, Tensor]
    config: dict[str, Any]  # the base model's config, when known
    summary: dict[str, Any]
    detail: dict[str, Any] = field(default_factory=dict)
    base: Model | None = None
    source: str = ""


def is_adapter(model: Model) -> bool:
    return isinstance(model.metadata.get(META), dict)


def adapter_view(model: Model) -> Adapter:
    """The pairs and whole tensors of an adapter model (after any cast or wrap the pipeline made)."""
    info = model.metadata.get(META_PAIRS) or {}
    halves: dict[str, dict[str, Tensor]] = {}
    full: dict[str, Tensor] = {}
    for t in model:
        for suffix in (LORA_A, LORA_B):
            if t.name.endswith(suffix):
                halves.setdefault(t.name[: -len(suffix)], {})[suffix] = t
                break
        else:
            full[t.name] = t
    pairs = {}
    for name, h in halves.items():
        if len(h) != 2:
            raise InputError(f"LoRA weight {name!r} lacks its {'lora_B' if LORA_A in h else 'lora_A'} factor",
                             path=model.source or None)
        meta = info.get(name) or {}
        pairs[name] = LoraPair(name, h[LORA_A], h[LORA_B], float(meta.get("alpha", h[LORA_B].shape[-1])),
                               bool(meta.get("rslora", False)))
    base = model.metadata.get(META_BASE)
    return Adapter(pairs, full, dict(model.config), dict(model.metadata.get(META) or {}),
                   dict(model.metadata.get(META_DETAIL) or {}), base if isinstance(base, Model) else None,
                   model.source)


def adapter_model(pairs: list[LoraPair], full: list[Tensor], *, config: dict[str, Any], summary: dict[str, Any],
                  detail: dict[str, Any], source: str, format: str, base: Model | None = None) -> Model:
    """The IR model that carries an adapter (see the module docstring)."""
    model = Model(config=dict(config), source=source, format=format)
    for p in pairs:
        model.add(p.a.replace(name=p.name + LORA_A, aliases=()))
        model.add(p.b.replace(name=p.name + LORA_B, aliases=()))
    for t in full:
        model.add(t.replace(aliases=()))
    model.metadata[META] = {**summarize(pairs), **{k: v for k, v in summary.items() if v is not None}}
    model.metadata[META_PAIRS] = {p.name: {"alpha": p.alpha, "rslora": p.rslora} for p in pairs}
    model.metadata[META_DETAIL] = detail
    if base is not None:
        model.metadata[META_BASE] = base
        model.config_source = base.config_source or base.source
    return model


def module_of(weight: str) -> str:
    return weight.removesuffix(".weight")


def summarize(pairs: list[LoraPair]) -> dict[str, Any]:
    """Rank and alpha (the most common), the short names of the modules targeted, how many pairs."""
    ranks = Counter(p.rank for p in pairs)
    alphas = Counter(p.alpha for p in pairs)
    short = sorted({module_of(p.name).rsplit(".", 1)[-1] for p in pairs})
    out: dict[str, Any] = {"type": "lora", "pairs": len(pairs), "target_modules": short}
    if ranks:
        out["rank"] = ranks.most_common(1)[0][0]
        alpha = alphas.most_common(1)[0][0]
        out["alpha"] = int(alpha) if float(alpha).is_integer() else alpha
        out["use_rslora"] = any(p.rslora for p in pairs)
        if len(ranks) > 1:
            out["ranks"] = sorted(ranks)
    return out


# =========================================================================== the base model
def read_base(base: str | Path, warn: Callable[[str], None] = lambda m: None) -> Model:
    """The base model an adapter is for (any format lmconv reads); refused when it is an adapter itself."""
    from .pipeline import read_model  # the pipeline imports this module

    model = read_model(base, warn=warn)
    if is_adapter(model):
        raise UsageError("is a LoRA adapter, not the base model it applies to", path=base)
    if not model.config:
        raise InputError("the base model has no config.json: give the model folder", path=base)
    return model


def base_names(base: Model) -> dict[str, Tensor]:
    """Name (and alias, and the output a family ties to the embedding) → tensor of the base."""
    from .registry import get_registry

    table = {t.name: t for t in base}
    for t in base:
        for a in t.aliases:
            table.setdefault(a, t)
    arch = get_registry().architecture_for(base.config)
    if arch is not None and arch.hf_output and arch.hf_embedding in table and arch.hf_output not in table:
        if base.config.get("tie_word_embeddings", True) is not False:
            table[arch.hf_output] = table[arch.hf_embedding]
    return table


def check_against_base(adapter: Adapter, base: Model, origin: str | None = None) -> None:
    """Every weight the adapter changes exists in ``base`` with the shape the adapter's factors imply."""
    table = base_names(base)
    where = origin or adapter.source or None
    base_src = base.source or "the base model"
    for name, shape in [(p.name, p.shape) for p in adapter.pairs.values()] + \
                       [(n, t.shape) for n, t in adapter.full.items()]:
        t = table.get(name)
        if t is None:
            raise InputError(f"the adapter changes {name!r}, which {base_src} does not have: an adapter for another "
                             "base model, or an unknown target module", path=where)
        if tuple(t.shape) != tuple(shape):
            raise InputError(f"the adapter's {name!r} is {list(shape)} but {base_src} has {list(t.shape)}: "
                             "an adapter for another base model", path=where)


def check_target_modules(targets: Any, base: Model, origin: str | None) -> None:
    """Each module an adapter's settings name (a list of names or name endings) is one the base has."""
    if not isinstance(targets, list):
        return  # a regular expression or a special value ("all-linear"): nothing to look up one by one
    modules = {module_of(n) for n in base_names(base)}
    for target in targets:
        if not isinstance(target, str):
            raise InputError(f"target module {target!r} is not a name", path=origin)
        if not any(m == target or m.endswith("." + target) for m in modules):
            raise InputError(f"target module {target!r} matches no module of {base.source or 'the base model'}",
                             path=origin)


def attach_base(model: Model, base: Model, origin: str | None = None) -> None:
    """Give an adapter model its base: checked, its config adopted, kept for the writers."""
    check_against_base(adapter_view(model), base, origin)
    model.config = dict(base.config)
    model.config_source = base.config_source or base.source
    model.metadata[META_BASE] = base
    model.metadata[META]["base"] = base.source


# =========================================================================== the output format
def output_format(model: Model, fmt: Any, explicit: bool) -> Any:
    """The format to write ``model`` in: an adapter goes to a format that stores adapters (a folder
    target becomes the adapter folder format), a model to one that is not for adapters only; anything
    else is refused in one line."""
    if not is_adapter(model):
        if getattr(fmt, "adapters_only", False):
            raise UsageError(f"is not a LoRA adapter, and {fmt.name} holds adapters only", path=model.source or None)
        return fmt
    if getattr(fmt, "stores_adapters", False):
        return fmt
    from .registry import get_registry

    if fmt.is_directory and not explicit:
        for other in get_registry().formats.values():
            if other.is_directory and other.can_write and getattr(other, "stores_adapters", False):
                return other
    able = sorted(f.name for f in get_registry().formats.values() if getattr(f, "stores_adapters", False))
    raise UsageError(f"is a LoRA adapter, which {fmt.name} cannot hold (adapters go to: {', '.join(able) or 'none'}); "
                     f"or {MERGE_INSTEAD}", path=model.source or None)


# =========================================================================== merging
def _floats(t: Tensor) -> np.ndarray:
    return np.asarray(dequantize_tensor(t).load(), dtype=np.float32)


def delta(pair: LoraPair) -> np.ndarray:
    """``scale · B @ A`` in float32, in the reference trainer's order (the product, then the scale)."""
    d = np.matmul(_floats(pair.b), _floats(pair.a))
    scale = np.float32(pair.scale)
    return d if scale == 1 else d * scale


def _merged(t: Tensor, pairs: list[LoraPair]) -> Tensor:
    out = t.dtype if t.dtype.is_float else F32

    def load() -> np.ndarray:
        w = _floats(t)
        with np.errstate(over="ignore"):
            for p in pairs:
                w = w + delta(p)
            return w.astype(out.numpy)

    def release() -> None:
        for x in (t, *(f for p in pairs for f in (p.a, p.b))):
            x.release()

    return Tensor(t.name, t.shape, out, load, aliases=t.aliases, history=t.history, origin=t.origin, release=release)


def merge_into(base: Model, adapter: Model, warn: Callable[[str], None] = lambda m: None) -> Model:
    """``base`` with the adapter applied: each changed weight is ``W + scale · B @ A`` (computed when a
    writer loads it), each whole tensor of the adapter replaces the base's (and a LoRA of the same
    weight applies on top of it). A tied weight changes under all its names, as the reference
    trainer's ``merge_and_unload`` does; a whole tensor replaces one name only (the tie is cut, and the config
    says so)."""
    ad = adapter_view(adapter)
    if not ad.pairs and not ad.full:
        raise InputError("the adapter holds no tensors", path=ad.source or None)
    check_against_base(ad, base)
    table = base_names(base)
    by_owner: dict[str, list[str]] = {}  # base tensor → the adapter's names that land on it
    for name in dict.fromkeys([*ad.pairs, *ad.full]):
        by_owner.setdefault(table[name].name, []).append(name)
    out: list[Tensor] = []
    config = dict(base.config)
    for t in base:
        names = by_owner.get(t.name)
        if not names:
            out.append(t)
            continue
        stored = (t.name, *t.aliases)
        shared = [n for n in stored if n not in ad.full]
        pairs = [ad.pairs[n] for n in dict.fromkeys([*shared, *names]) if n in ad.pairs and n not in ad.full]
        if shared:
            kept = t.replace(name=shared[0], aliases=tuple(shared[1:]))
            if pairs:
                changed = {p.name for p in pairs}
                others = [n for n in (*stored, *names) if n not in changed and n not in ad.full]
                if others:
                    warn(f"{', '.join(sorted(changed))} is tied to {', '.join(dict.fromkeys(others))}: the LoRA "
                         "changes them all (as merge_and_unload does)")
                kept = _merged(kept, pairs)
            out.append(kept)
        for n in [n for n in dict.fromkeys([*stored, *names]) if n in ad.full]:
            whole = ad.full[n].replace(name=n, aliases=())
            out.append(_merged(whole, [ad.pairs[n]]) if n in ad.pairs else whole)
            if len(stored) > 1 or n not in stored:
                config["tie_word_embeddings"] = False  # a tie cut: one name now has a tensor of its own
    merged = base.with_tensors(out)
    merged.config = config
    merged.metadata = dict(base.metadata)
    merged.metadata["merged_adapter"] = {"adapter": ad.source, "pairs": len(ad.pairs), "whole": sorted(ad.full)}
    return merged
