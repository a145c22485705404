"""A jobs file checked against ``schemas/batch.schema.json`` with ``jsonschema``, the first problem in
one line: ``jobs[0].force: "yes" is not a boolean``.

Every error ``jsonschema`` finds is placed where it is in the document (the order of the TOML
file, not of the schema); the first one is said in words, which name the place as a jobs file
author writes it (``jobs[2].options.pure``) and say the problem without repeating the document.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError, relevance

SCHEMA = Path(__file__).with_name("batch.schema.json")  # a link to schemas/batch.schema.json (a copy in a wheel)


@lru_cache(maxsize=1)
def batch_schema() -> dict[str, Any]:
    return json.loads(SCHEMA.read_text(encoding="utf-8"))


def _validator(schema: dict[str, Any]) -> Any:
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    cls.check_schema(schema)
    return cls(schema)


@lru_cache(maxsize=1)
def _batch_validator() -> Any:
    return _validator(batch_schema())


def first_error(doc: Any, schema: dict[str, Any] | None = None) -> str | None:
    """The first way ``doc`` breaks ``schema`` (the batch schema by default), in words; None when it fits."""
    validator = _batch_validator() if schema is None else _validator(schema)
    errors = list(validator.iter_errors(doc))
    if not errors:
        return None
    first = min(_place(doc, e) for e in errors)
    here = [e for e in errors if _place(doc, e) == first]
    return _words(min(here, key=relevance))  # jsonschema's own choice among errors at one place


def _place(doc: Any, error: ValidationError) -> tuple[int, ...]:
    """Where ``error`` is in ``doc``, as positions in document order (a key's position in its table)."""
    place = []
    node = doc
    for part in error.absolute_path:
        if isinstance(node, dict):
            place.append(list(node).index(part) if part in node else len(node))
        else:
            place.append(int(part))
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            break
    return tuple(place)


def _where(error: ValidationError) -> str:
    text = ""
    for part in error.absolute_path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "the top level"


def _words(error: ValidationError) -> str:
    kind, want, value = error.validator, error.validator_value, error.instance
    if kind == "type":
        names = [want] if isinstance(want, str) else list(want)
        what = f"{_show(value)} is not {' or '.join(_article(n) for n in names)}"
    elif kind == "enum":
        what = f"{_show(value)} is not one of {', '.join(map(str, want))}"
    elif kind == "minLength":
        what = "must not be empty"
    elif kind == "minItems":
        what = f"needs at least {want} item{'s' if want != 1 else ''}"
    elif kind == "required":
        missing = [k for k in want if isinstance(value, dict) and k not in value]
        what = f"{(missing or want)[0]!r} is missing"
    elif kind == "additionalProperties" and want is False and isinstance(value, dict):
        known = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
        unknown = [k for k in value if k not in known]
        what = f"unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})" if unknown else error.message
    else:
        what = " ".join(error.message.split())
    return f"{_where(error)}: {what}"


def _article(name: str) -> str:
    return {"object": "a table", "array": "a list", "integer": "an integer"}.get(name, f"a {name}")


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 40 else text[:37] + "…"
