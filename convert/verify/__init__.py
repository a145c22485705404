"""Verification: read two models and prove that the numbers survived (or say where they did not).

:func:`verify_models` pairs the tensors of two IR models by canonical (HF) name (aliases count, so a
tied embedding in one model and two equal tensors in the other are the same thing) and compares
each pair one at a time, in float64 (:mod:`.compare`). It also reports tensors missing on either
side, shape and dtype changes, config keys that differ (:mod:`.config`) and tokenizer differences
(:mod:`.tokenizer`), and on request runs both models forward and compares their logits (:mod:`.logits`).

What counts as "close enough" depends on what happened to each tensor (:mod:`.steps`): a lossless
hop must be bit-exact; a cast, a quantisation or a lossy layout rule must stay inside its documented
element-wise bound (:mod:`lmconv.bounds`; quantisers state theirs). ``atol``/``rtol`` replace the
derived bounds altogether. The report (:mod:`.report`) says all of it in one line or as JSON.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import dtypes as _dt
from ..bounds import SLACK, override_bound
from ..formats import recorded_for_verify
from ..ir import Model, Tensor
from ..pipeline import read_model
from .compare import TensorResult, compare_tensors, name_table
from .config import compare_configs
from .logits import compare_logits, forward
from .report import Report
from .steps import Policy, auto_steps, bound_for, lossy_tags, parse_steps, policy_for, represents, stored, value_dtype
from .tokenizer import compare_tokenizers

__all__ = ["Report", "verify_models", "verify_paths", "verify_conversion", "bound_for", "parse_steps", "represents",
           "forward", "SLACK"]


def _describe(model: Model) -> dict[str, Any]:
    return {"path": model.source, "format": model.format, "architecture": model.architecture,
            "tensors": len(model.tensors)}


def verify_models(
    a: Model,
    b: Model,
    *,
    policy: Policy = None,
    atol: float | None = None,
    rtol: float | None = None,
    assume: Mapping[str, Iterable[str]] | None = None,
    requant: Mapping[str, tuple[str, Any]] | None = None,
    logits: bool = False,
    ids: Sequence[int] | None = None,
    text: str | None = None,
    runtime: str = "numpy",
    logits_dtype: Any = np.float32,
) -> Report:
    """Compare model ``b`` against the reference ``a``; see the module docstring.

    ``policy``: None/"auto" (steps read from B), "lossless", a step spec for every tensor
    ("q8_0", "f16", "cast:f16+quant:q8_0"), a mapping name → spec, or a function name → spec
    (None = auto for that tensor). ``assume``: name → steps known to have been applied, added to
    the detected ones. ``requant``: name → (quantizer, importance weights) of tensors no bound covers,
    checked by re-quantising A (:func:`compare_tensors`). ``atol``/``rtol`` replace every bound by
    ``atol + rtol·|a|``.
    """
    override = override_bound(atol or 0.0, rtol or 0.0) if (atol is not None or rtol is not None) else None
    table_a, implied_a, skip_a = name_table(a)
    table_b, implied_b, skip_b = name_table(b)
    skip = skip_a + skip_b

    pairs: dict[tuple[int, int], list[str]] = {}
    order: list[tuple[Tensor, Tensor]] = []
    missing: list[TensorResult] = []
    skipped: list[str] = []

    def is_buffer(n: str) -> bool:
        return any(n.endswith(s) for s in skip)

    names_a = list(table_a)
    names_b = [n for n in table_b if n not in table_a]
    for n in names_a + names_b:
        ta, tb = table_a.get(n), table_b.get(n)
        if ta is None or tb is None:
            if is_buffer(n):
                skipped.append(n)
                continue
            t = ta or tb
            assert t is not None
            missing.append(TensorResult(name=n, status="missing_in_b" if tb is None else "missing_in_a", ok=False,
                                        shape_a=list(ta.shape) if ta else None, shape_b=list(tb.shape) if tb else None,
                                        dtype_a=stored(ta).dtype.name if ta else None,
                                        dtype_b=stored(tb).dtype.name if tb else None))
            continue
        key = (id(ta), id(tb))
        if key in pairs:
            pairs[key].append(n)
        else:
            pairs[key] = [n]
            order.append((ta, tb))

    results: list[TensorResult] = []
    for ta, tb in order:
        names = pairs[(id(ta), id(tb))]
        name, aliases = names[0], names[1:]
        given = policy_for(policy, names)
        steps = auto_steps(ta, tb) if given is None else given
        if assume:
            extra: list[str] = []
            for n in names:
                extra += list(parse_steps(list(assume.get(n, ()))) or ())
            steps = tuple(dict.fromkeys([*steps, *extra]))
        rq = next((requant[n] for n in names if n in requant), None) if requant else None
        results.append(compare_tensors(ta, tb, steps=steps, model_a=a, model_b=b, override=override,
                                       name=name, aliases=aliases, requant=rq))
    # Missing tensors where the model order puts them.
    results += missing

    tolerance: dict[str, Any] = {"mode": "override" if override else ("policy" if policy is not None else "auto"),
                                 "atol": atol, "rtol": rtol, "slack": SLACK,
                                 "policy": policy if isinstance(policy, str) else (None if policy is None else "per-tensor")}
    report = Report(a=_describe(a), b=_describe(b), tensors=results, config=compare_configs(a.config, b.config),
                    tokenizer=compare_tokenizers(a, b), tolerance=tolerance, skipped=skipped)
    if implied_a or implied_b:
        report.notes.append("tied output implied by tie_word_embeddings: " + ", ".join(sorted(implied_a | implied_b)))
    if logits:
        report.logits = compare_logits(a, b, ids=ids, text=text, runtime=runtime, dtype=logits_dtype)
    return report


def verify_paths(a_path: str, b_path: str, **kw: Any) -> Report:
    """Read two paths (any supported format) and :func:`verify_models` them."""
    a = read_model(a_path)
    b = read_model(b_path)
    return verify_models(a, b, **kw)


def _main_output(outputs: Sequence[Any]) -> Any:
    """The path that reads back as the whole model: a shard index when sharded, else the first output."""
    for p in outputs:
        if str(p).endswith(".index.json"):
            return p
    return outputs[0] if not Path(outputs[0]).name.startswith(("config.json", "tokenizer")) else next(
        (p for p in outputs if not Path(p).name.endswith(".json")), outputs[0])


def verify_conversion(result: Any, quiet: bool = False) -> Report:
    """``lmconv SRC DST --verify``: re-read SRC and DST and compare them with the policy of the
    transforms that were applied (read from DST's stored types and the written model's history)."""
    a = read_model(result.source)
    b = read_model(_main_output(result.outputs))
    written: Model = result.model
    if written.config and a.config != written.config:
        a.config = written.config  # the conversion used --config: that is the reference
    assume: dict[str, list[str]] = {}
    # what the writer did itself (imatrix:TYPE steps, weighted quantisation no bound covers), recorded
    # under the names it wrote: read back, each tensor's stored form carries that name
    notes = recorded_for_verify(written, _main_output(result.outputs))
    if notes:
        for tb in b:
            for n in (stored(tb).name, *stored(tb).aliases):
                if n in notes:
                    notes.setdefault(tb.name, notes[n])
    requant = {n: e["requantize"] for n, e in notes.items() if "requantize" in e}
    for t in written:
        tags = sorted(s for s in lossy_tags(t) if s.startswith(("cast:", "quant:")))
        more = next((notes[n].get("steps", []) for n in (t.name, *t.aliases) if n in notes), [])
        tags = sorted(set(tags) | set(more))
        if tags:
            for n in (t.name, *t.aliases):
                assume[n] = tags
    # A step the written model recorded is only lossy relative to the source when the source's values
    # do not survive it: auto_steps applies that test to B's stored types; history casts are filtered here.
    table_a, _, _ = name_table(a)
    for n, tags in list(assume.items()):
        ta = table_a.get(n)
        if ta is None:
            continue
        keep = []
        for s in tags:
            kind, _, what = s.partition(":")
            if kind == "cast" and represents(_dt.get(what), value_dtype(ta)):
                continue
            if kind in ("quant", "imatrix") and stored(ta).dtype.is_quantized and stored(ta).dtype.name == what:
                continue
            keep.append(s)
        assume[n] = keep
    report = verify_models(a, b, assume=assume, requant=requant)
    if not quiet:
        sys.stderr.write(f"lmconv: verify: {report.summary()}\n")
        sys.stderr.flush()
    return report
