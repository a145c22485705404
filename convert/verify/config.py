"""Two configs compared key by key (values equal, or equal after float32 rounding: GGUF keeps floats
as float32)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .values import jsonable


@dataclass
class ConfigDiff:
    ok: bool = True
    changed: dict[str, dict[str, Any]] = field(default_factory=dict)
    only_in_a: list[str] = field(default_factory=list)
    only_in_b: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "changed": jsonable(self.changed), "only_in_a": self.only_in_a,
                "only_in_b": self.only_in_b, "notes": self.notes}



IGNORED_CONFIG_KEYS = frozenset({"transformers_version", "torch_dtype", "dtype", "_name_or_path"})


def same_value(x: Any, y: Any) -> bool:
    if isinstance(x, bool) or isinstance(y, bool):
        return x is y or (isinstance(x, bool) and isinstance(y, bool) and x == y)
    if isinstance(x, (int, float)) and isinstance(y, (int, float)):
        if x == y:
            return True
        # GGUF keeps floats as float32: equal after rounding to float32 counts as equal.
        return bool(np.float32(x) == np.float32(y))
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(same_value(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        return len(x) == len(y) and all(same_value(p, q) for p, q in zip(x, y))
    return x == y


def compare_configs(a: dict[str, Any], b: dict[str, Any]) -> ConfigDiff:
    out = ConfigDiff()
    if not a or not b:
        if a or b:
            out.notes.append(f"config only in {'A' if a else 'B'}; not compared")
        return out
    for k in a:
        if k in IGNORED_CONFIG_KEYS:
            continue
        if k not in b:
            out.only_in_a.append(k)
        elif not same_value(a[k], b[k]):
            out.changed[k] = {"a": a[k], "b": b[k]}
    out.only_in_b = [k for k in b if k not in a and k not in IGNORED_CONFIG_KEYS]
    out.ok = not out.changed
    return out


