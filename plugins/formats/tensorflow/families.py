"""Model families in TF checkpoints and Keras h5 files: the layouts families register for these formats.

A family lays its model out here through :class:`lmconv.architectures.Layout`\\ s keyed by the format
(``h5``, ``tf``) or by the format and a variant after a dot (``h5.weights`` for Keras 3's
``.weights.h5``, ``tf.v1`` for a TF1 name-based checkpoint). The layouts' rule targets are the
variable names themselves, in the order the file keeps them (Keras 2 h5 files are loaded by position).

**Writing** asks the model's family (by its config) for the layout of the target: ``h5`` for a
``.h5``, ``h5.weights`` for a ``.weights.h5``, for a checkpoint ``config["tf_layout"]`` when the family
has it (the reader records it when a variant read the file), else ``tf``. Without one, the formats
fall back to their HF-TF naming.

**Reading** asks the registry for a family that claims the file's variables. Each layout for the
format is offered the variables through its ``extra_config(meta, config)``, with ``meta``:

* ``tensorflow.variables``: ``[[name, shape], …]`` in file order (names without ``:0`` and
  ``/.ATTRIBUTES/VARIABLE_VALUE``);
* ``tensorflow.config``: the config.json found beside the file (or ``{}``);
* ``tensorflow.options``: the command's plugin options (``ReadOptions.extra``);
* ``tensorflow.warn``: a callback for warnings.

A layout claims the file by filling in a config of its family; the variables must then be exactly its
rules' targets by name — or, in a file whose order is meaningful (``ordered``, Keras 2 h5), as many in
the same order, as Keras' own ``load_weights`` matches them. A family that recognises its model but
cannot convert it exactly raises an :class:`lmconv.errors.InputError` (exit 3).
"""

from __future__ import annotations

from typing import Any

from lmconv.errors import InputError
from lmconv.formats import PlannedTensor, ReadOptions
from lmconv.ir import Model, Tensor
from lmconv.registry import get_registry
from lmconv.rule_engine import coverage
from lmconv.rules import Rename

from . import names as tn


def _candidates(target: str, config: dict[str, Any], family: str | None) -> list[tuple[Any, str, Any]]:
    reg = get_registry()
    known = reg.architecture_for(config) if config else None
    out = []
    for arch in reg.architectures.values():
        if (family and arch.name != family) or (known is not None and arch is not known):
            continue
        for key, layout in arch.layouts().items():
            if key == target or key.startswith(target + "."):
                out.append((arch, key, layout))
    return out


def _matched(names: list[str], targets: list[str], ordered: bool) -> list[str] | None:
    """``names`` when they are exactly ``targets`` (patterns allowed), ``targets`` themselves when the
    file's order is meaningful and the count agrees (positional, as Keras loads a Keras 2 h5), else None."""
    left, share = coverage([Rename(p, p) for p in targets], names)
    if not left and share == 1.0 and len(set(names)) == len(names):
        return names
    if ordered and len(names) == len(targets) and not any("{" in p for p in targets):
        return list(targets)
    return None


def claim(model: Model, target: str, *, meta: dict[str, Any] | None, ordered: bool, options: ReadOptions,
          origin: str, remember: bool = False) -> str | None:
    """Give ``model`` (variables under their file names) to the family whose ``target`` layout claims
    it: its tensors become the family's (lazy, HF names) and its config the family's. Returns the
    layout's key, or None when no family claims the variables (the model is left as it was).
    ``remember`` records a variant's key in the config (``tf_layout``), so that the model is written
    back in that layout."""
    meta = meta or {}
    config = dict(model.config) if model.config else {}
    if not config and isinstance(meta.get("config"), dict):
        config = dict(meta["config"])  # a file lmconv wrote, without its config.json
    family = meta.get("family") if isinstance(meta.get("family"), str) else None
    found = _candidates(target, config, family)
    if isinstance(meta.get("layout"), str):
        found.sort(key=lambda c: c[1] != meta["layout"])
    if not found:
        return None
    reg = get_registry()
    tensors = list(model)
    names = [t.name for t in tensors]
    info = {"tensorflow.variables": [[t.name, list(t.shape)] for t in tensors], "tensorflow.config": config,
            "tensorflow.options": dict(options.extra), "tensorflow.warn": options.warn}
    for arch, key, layout in found:
        try:
            cfg = layout.config_from_meta(info, origin)
        except InputError as exc:  # the family knows this model and says why it cannot convert it
            if exc.path is not None:
                raise
            raise InputError(str(exc), path=origin) from None
        if reg.architecture_for(cfg) is not arch:
            continue
        targets = [p for r in layout.rules(cfg) for p in r.targets]
        renamed = _matched(names, targets, ordered)
        if renamed is None:
            continue
        if renamed is not names:
            tensors = [t.replace(name=n) for t, n in zip(tensors, renamed)]
        hf, cfg = arch.from_target(tensors, cfg, key, origin)
        if remember and key != target:
            cfg[f"{target}_layout"] = key
        model.tensors = {}
        for t in hf:
            model.add(t)
        model.config = cfg
        return key
    return None


def write_layout(model: Model, key: str) -> tuple[Any, str] | None:
    """The model's family and ``key`` when the family has a layout there."""
    arch = get_registry().architecture_for(model.config) if model.config else None
    if arch is None or arch.layout(key) is None:
        return None
    return arch, key


def checkpoint_layout(model: Model) -> tuple[Any, str] | None:
    """For a TF checkpoint: the variant the config asks for (``tf_layout``), else ``tf``."""
    want = model.config.get("tf_layout") if model.config else None
    if isinstance(want, str) and (want == "tf" or want.startswith("tf.")):
        got = write_layout(model, want)
        if got is not None:
            return got
    return write_layout(model, "tf")


def target_tensors(model: Model, arch: Any, key: str, warn: Any) -> list[Tensor]:
    """The family's tensors for ``key`` (lazy), in the order of its layout's targets."""
    tensors, _ = arch.to_target(model, key, warn)
    order: dict[str, int] = {}
    try:
        for r in arch.layout(key).rules(model.config):
            for p in r.targets:
                order.setdefault(p, len(order))
    except InputError:
        pass  # to_target has said what is wrong already
    return sorted(tensors, key=lambda t: order.get(t.name, len(order)))


def planned(model: Model, arch: Any, key: str, warn: Any) -> list[PlannedTensor]:
    """What ``--dry-run`` lists for a family's layout: the variables under their own names."""
    return [PlannedTensor(t.name, t.shape, t.dtype.name, t.nbytes) for t in target_tensors(model, arch, key, warn)]


def plan(model: Model, tensors: list[Tensor], key_of: Any, h5_of: Any) -> tn.WritePlan:
    """A write plan of the family's tensors under their own (variable) names."""
    p = tn.WritePlan(scope="", architecture=model.architecture)
    for t in tensors:
        p.outs.append(tn.Out(t, t.name.split("/"), tn.NONE, h5_name=h5_of(t.name), ckpt_key=key_of(t.name)))
    return p


def meta_extra(model: Model, arch: Any, key: str) -> dict[str, Any]:
    """What ``_lmconv_metadata`` adds for a family's file: the family, the layout and the config (so
    that the file reads back without its config.json)."""
    return {"family": arch.name, "layout": key, "config": model.config}
