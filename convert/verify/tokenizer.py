"""Two tokenizers compared: the files themselves when both sides have the same ones, else the
runtime-level fields (vocabulary, types, scores, merges, special ids, flags) that a registered
tokenizer bridge reads from the files. A comparison that could not run says so: it never counts
as equal, and a bridge that crashes fails the verification."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import LmconvError
from ..ir import Model
from ..tokenizer_files import bridge, tokenizer_fields
from .config import same_value
from .values import short

STRICT_FIELDS = ("model", "tokens", "token_type", "merges")


@dataclass
class TokenizerDiff:
    ok: bool = True
    compared: str = "none"  # identical-files | fields | tokenizer.json | files | none (nothing to compare) | not compared
    error: str = ""  # why a comparison that should have run could not
    differences: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, what: str, detail: str) -> None:
        self.ok = False
        self.differences.append({"field": what, "detail": detail})

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "compared": self.compared, "differences": self.differences, "notes": self.notes,
                "error": self.error}



def _list_diff(what: str, a: list[Any], b: list[Any], out: TokenizerDiff, *, floats: bool = False) -> None:
    if len(a) != len(b):
        out.add(what, f"{len(a)} entries vs {len(b)}")
        return
    if floats:
        aa, bb = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
        bad = np.flatnonzero(~((aa == bb) | (np.isnan(aa) & np.isnan(bb))))
    else:
        bad = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
    if len(bad):
        i = int(bad[0])
        out.add(what, f"{len(bad)} of {len(a)} differ, first at {i}: {short(a[i])} vs {short(b[i])}")


def _compare_fields(fa: dict[str, Any], fb: dict[str, Any], out: TokenizerDiff) -> None:
    keys = list(dict.fromkeys([*fa, *fb]))
    for k in keys:
        name = k
        strict = k in STRICT_FIELDS or k.endswith("_token_id")
        if k not in fa or k not in fb:
            if strict:
                out.add(name, f"only in {'A' if k in fa else 'B'}")
            else:
                out.notes.append(f"{name} only in {'A' if k in fa else 'B'}")
            continue
        va, vb = fa[k], fb[k]
        if isinstance(va, (list, tuple)) and isinstance(vb, (list, tuple)):
            _list_diff(name, list(va), list(vb), out, floats=k == "scores")
        elif not same_value(va, vb):
            out.add(name, f"{short(va)} vs {short(vb)}")


def _compare_tokenizer_json(ja: dict[str, Any], jb: dict[str, Any], out: TokenizerDiff) -> None:
    ma, mb = ja.get("model") or {}, jb.get("model") or {}
    if ma.get("type") != mb.get("type"):
        out.add("model", f"{ma.get('type')} vs {mb.get('type')}")
    va, vb = ma.get("vocab"), mb.get("vocab")
    if isinstance(va, dict) and isinstance(vb, dict):
        ia = sorted(va.items(), key=lambda kv: kv[1])
        ib = sorted(vb.items(), key=lambda kv: kv[1])
        _list_diff("tokens", [k for k, _ in ia], [k for k, _ in ib], out)
        if [v for _, v in ia] != [v for _, v in ib]:
            out.add("token ids", "the vocabularies assign different ids")
    elif va != vb:
        _list_diff("tokens", list(va or []), list(vb or []), out)

    def merges(m: dict[str, Any]) -> list[str]:
        return [" ".join(x) if isinstance(x, (list, tuple)) else str(x) for x in m.get("merges") or []]

    _list_diff("merges", merges(ma), merges(mb), out)

    def added(j: dict[str, Any]) -> list[tuple[Any, ...]]:
        return [(t.get("id"), t.get("content"), bool(t.get("special"))) for t in j.get("added_tokens") or []]

    _list_diff("added_tokens", added(ja), added(jb), out)


def _fields(model: Model, out: TokenizerDiff) -> dict[str, Any] | None:
    """The model's tokenizer fields; None (with a note) when its files cannot be translated."""
    try:
        return tokenizer_fields(model.tokenizer, model.config)
    except LmconvError as exc:
        out.notes.append(f"{model.source or 'a model'}: tokenizer files not translatable to fields ({exc})")
        return None


def compare_tokenizers(a: Model, b: Model) -> TokenizerDiff:
    out = TokenizerDiff()
    ta, tb = a.tokenizer, b.tokenizer
    if not ta or not tb:
        if ta or tb:
            out.notes.append(f"tokenizer only in {'A' if ta else 'B'}; not compared")
        return out
    if ta.files and tb.files and ta.files == tb.files:
        out.compared = "identical-files"
        return out
    try:
        fa = _fields(a, out)
        fb = _fields(b, out)
    except Exception as exc:  # noqa: BLE001 - a bridge bug: the comparison did not run, and that is a failure
        out.compared, out.ok = "not compared", False
        out.error = f"the tokenizer bridge failed ({type(exc).__name__}: {' '.join(str(exc).split())[:160]})"
        return out
    if fa is not None and fb is not None:
        out.compared = "fields"
        _compare_fields(fa, fb, out)
        return out
    if "tokenizer.json" in ta.files and "tokenizer.json" in tb.files:
        try:
            ja, jb = json.loads(ta.files["tokenizer.json"]), json.loads(tb.files["tokenizer.json"])
        except ValueError as exc:
            out.add("tokenizer.json", f"unreadable ({exc})")
            return out
        out.compared = "tokenizer.json"
        _compare_tokenizer_json(ja, jb, out)
        return out
    if ta.files and tb.files:
        out.compared = "files"
        for name in sorted(set(ta.files) | set(tb.files)):
            if name not in ta.files or name not in tb.files:
                out.notes.append(f"{name} only in {'A' if name in ta.files else 'B'}")
            elif ta.files[name] != tb.files[name]:
                out.add(name, "file contents differ")
        return out
    out.compared = "not compared"
    out.error = ("one side has HF tokenizer files, the other runtime fields, and "
                 + ("they could not be translated" if bridge() is not None else "no tokenizer bridge is installed"))
    return out
