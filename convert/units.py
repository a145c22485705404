"""Sizes as people write them on the command line ("5GB", "500M", "2G"), and as lmconv prints them."""

from __future__ import annotations

from .errors import UsageError

_UNITS = {"": 1, "B": 1, "K": 1000, "KB": 1000, "M": 1000**2, "MB": 1000**2, "G": 1000**3, "GB": 1000**3,
          "T": 1000**4, "TB": 1000**4, "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "TIB": 1024**4}


def parse_size(text: str | int, *, option: str = "size") -> int:
    """Bytes from "5GB", "500M", "2G", "1.5GiB" or a plain number (decimal units, as llama.cpp and HF use)."""
    if isinstance(text, int):
        return text
    t = str(text).strip().upper()
    num = t.rstrip("KMGTIB")
    unit = t[len(num):]
    try:
        value = float(num)
    except ValueError:
        value = -1
    if unit not in _UNITS or value <= 0:
        raise UsageError(f"{option} {text!r} is not a size like 500M, 5GB or 2G")
    return int(value * _UNITS[unit])


def format_size(n: float) -> str:
    """``163.6 KB``: decimal units, as :func:`parse_size` reads them."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)
