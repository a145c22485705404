"""How the verification modules show numbers and values (tables, one-line messages, JSON)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from ..bounds import fmt


def num(x: float | None) -> float | None:
    """A JSON number: None for a missing, infinite or NaN one."""
    if x is None or not math.isfinite(x):
        return None
    return float(x)


def ratio(x: float | None) -> str:
    """A fraction of a bound, never rounded up to 1 when it is below."""
    if x is None:
        return "-"
    return f"{math.floor(x * 1000) / 1000:.3f}" if x < 1 else fmt(x)


def short(v: Any) -> str:
    s = json.dumps(v, ensure_ascii=False, default=str)
    return s if len(s) <= 60 else s[:57] + "..."


def jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return num(float(v))
    if isinstance(v, (str, int, bool)) or v is None:
        return v
    return str(v)
