"""The verification report: per-tensor results, config and tokenizer findings, logits; its summary
line, its failures in words, and its JSON (schemas/verify-report.schema.json)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..bounds import fmt
from .compare import TensorResult
from .config import ConfigDiff
from .tokenizer import TokenizerDiff
from .values import jsonable, ratio, short

REPORT_SCHEMA = "lmconv-verify-report/1"


@dataclass
class Report:
    a: dict[str, Any]
    b: dict[str, Any]
    tensors: list[TensorResult]
    config: ConfigDiff
    tokenizer: TokenizerDiff
    tolerance: dict[str, Any]
    logits: dict[str, Any] | None = None
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.tensors) and self.config.ok and self.tokenizer.ok

    def failures(self) -> list[str]:
        """One phrase per problem, tensors first (in model order)."""
        out = [_failure_text(t) for t in self.tensors if not t.ok]
        if not self.config.ok:
            keys = list(self.config.changed)
            k = keys[0]
            ch = self.config.changed[k]
            more = f" and {len(keys) - 1} more key(s)" if len(keys) > 1 else ""
            out.append(f"config {k!r} differs: {short(ch.get('a'))} vs {short(ch.get('b'))}{more}")
        if not self.tokenizer.ok and self.tokenizer.error:
            out.append(f"tokenizer could not be compared: {self.tokenizer.error}")
        elif not self.tokenizer.ok:
            d = self.tokenizer.differences[0]
            more = f" and {len(self.tokenizer.differences) - 1} more" if len(self.tokenizer.differences) > 1 else ""
            out.append(f"tokenizer {d['field']} differs: {d['detail']}{more}")
        return out

    @property
    def first_failure(self) -> str | None:
        f = self.failures()
        return f[0] if f else None

    def failure_line(self) -> str | None:
        """The first problem, named, and how many more there are (None when all is well)."""
        fails = self.failures()
        if not fails:
            return None
        more = f" (+{len(fails) - 1} more problem{'s' if len(fails) > 2 else ''})" if len(fails) > 1 else ""
        return f"{fails[0]}{more}"

    def summary(self) -> str:
        """One line: "OK: …" with the worst tensor, or "N problem(s): <the first one, named>"."""
        fails = self.failures()
        compared = [t for t in self.tensors if t.status not in ("missing_in_a", "missing_in_b", "skipped")]
        n_exact = sum(1 for t in compared if t.status == "exact")
        n_within = sum(1 for t in compared if t.status == "within")
        if fails:
            more = f" (+{len(fails) - 1} more)" if len(fails) > 1 else ""
            return f"{len(fails)} problem{'s' if len(fails) > 1 else ''}: {fails[0]}{more}"
        n_requant = sum(1 for t in compared if t.status == "requantized")
        text = f"OK: {len(compared)} tensors ({n_exact} exact, {n_within} within bounds"
        if n_requant:
            text += f", {n_requant} re-quantised exactly where no bound holds with the importance matrix"
        lossy = [t for t in compared if t.status == "within" and t.max_ratio is not None]
        if lossy:
            worst = max(lossy, key=lambda t: t.max_ratio or 0.0)
            worst_rel = max(lossy, key=lambda t: t.rel_err or 0.0)
            text += (f"; worst {ratio(worst.max_ratio)} of its bound at {worst.name} [{'+'.join(worst.steps) or 'override'}]"
                     f"; max rel err {fmt(worst_rel.rel_err)}")
        text += ")"
        if not (self.config.only_in_a or self.config.only_in_b or self.config.notes):
            text += "; config equal"
        elif self.config.notes and not (self.config.only_in_a or self.config.only_in_b):
            text += "; config not compared"
        else:
            text += "; config compatible (keys only on one side)"
        tok = self.tokenizer
        if tok.compared == "not compared":
            text += f"; tokenizer not compared ({tok.error})" if tok.error else "; tokenizer not compared"
        else:
            text += "; tokenizer " + ("not compared" if tok.compared == "none" else "equal")
        if self.logits:
            lg = self.logits
            text += (f"; logits rel {fmt(lg['rel_max_diff'])}, KL {fmt(lg['kl_mean'])}, "
                     f"top-1 {100 * lg['top1_agreement']:.0f}%")
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": REPORT_SCHEMA,
            "ok": self.ok,
            "summary": self.summary(),
            "first_failure": self.first_failure,
            "a": self.a,
            "b": self.b,
            "tolerance": self.tolerance,
            "tensors": [t.to_dict() for t in self.tensors],
            "skipped": self.skipped,
            "notes": self.notes,
            "config": self.config.to_dict(),
            "tokenizer": self.tokenizer.to_dict(),
            "logits": jsonable(self.logits) if self.logits is not None else None,
        }

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON text (schemas/verify-report.schema.json); infinities and NaN become null."""
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False, allow_nan=False)


def _failure_text(t: TensorResult) -> str:
    n = f"tensor {t.name!r}"
    if t.status == "missing_in_b":
        return f"{n} is missing in B"
    if t.status == "missing_in_a":
        return f"{n} is missing in A"
    if t.status == "shape":
        return f"{n} changed shape {t.shape_a} → {t.shape_b}"
    if t.status == "nonfinite":
        return f"{n} has {t.n_nonfinite_mismatch} NaN/Inf value(s) that do not match"
    if t.status == "no_bound":
        return f"{n}: {t.detail}"
    at = f" at {t.worst_index}" if t.worst_index is not None else ""
    if t.status == "differs":
        if t.exact:
            return f"{n} differs in its bits ({t.detail or 'signed zeros or NaN payloads'}) where a lossless copy was expected"
        return (f"{n} differs where a lossless copy was expected: max|diff| {fmt(t.max_abs_diff)}{at}, "
                f"{t.n_exceeding} element(s) changed")
    what = "+".join(t.steps) if t.steps else "the given"
    return (f"{n} exceeds its {what} bound: max|diff| {fmt(t.max_abs_diff)}{at} is {fmt(t.max_ratio)}× the bound "
            f"({t.n_exceeding} element(s) over; rel err {fmt(t.rel_err)}, bound {fmt(t.rel_bound)})")


