"""Command-line options that plugins declare for themselves.

A format or quantiser plugin registers an :class:`Option` (through the ``register_options`` hook);
the CLI adds it to ``lmconv convert`` (``--help`` lists it with the plugin that declared it),
parses the user's value to the option's type, runs ``parse`` on it, and hands the result to the
plugins in ``options.extra[dest]``. The core itself declares none of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import LmconvError, UsageError

#: The value types an option may take; ``list`` means a repeatable option of strings.
VALUE_TYPES: tuple[type, ...] = (str, int, float, bool, list)


@dataclass(frozen=True)
class Option:
    """One ``--flag`` of ``lmconv convert``.

    ``type`` is one of :data:`VALUE_TYPES` (``bool`` makes a flag without a value, ``list`` a
    repeatable string option). ``parse`` turns the typed value into what the plugin wants (e.g.
    "2G" into bytes) and raises :class:`lmconv.errors.UsageError` for a bad one; ``metavar`` names the
    value in ``--help``. ``plugins`` is filled in by the registry: who declared it.
    """

    flag: str
    type: type
    help: str
    dest: str = ""
    default: Any = None
    metavar: str | None = None
    parse: Callable[[Any], Any] | None = None
    plugins: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if not self.flag.startswith("--") or len(self.flag) < 4:
            raise ValueError(f"option flag {self.flag!r} must look like --name")
        if self.type not in VALUE_TYPES:
            raise ValueError(f"option {self.flag}: type must be one of str, int, float, bool, list")
        if not self.dest:
            object.__setattr__(self, "dest", self.flag[2:].replace("-", "_"))
        if not self.dest.isidentifier():
            raise ValueError(f"option {self.flag}: {self.dest!r} is not a valid name")

    def signature(self) -> tuple[Any, ...]:
        """What must agree when two plugins declare the same flag."""
        return (self.flag, self.type, self.dest, self.default)

    def value(self, raw: Any) -> Any:
        """The value a plugin receives for what the user typed (unset means the default, parsed too)."""
        if raw is None or raw is False or raw == []:
            raw = self.default
        if raw is None or self.parse is None:
            return raw
        try:
            return self.parse(raw)
        except LmconvError:
            raise
        except (TypeError, ValueError) as exc:
            raise UsageError(f"{self.flag} {raw!r}: {exc}") from None


#: ``--generic``: write a file its usual consumer cannot use as a model (a model folder transformers
#: cannot load, a GGUF llama.cpp cannot run) instead of stopping; the formats that check it declare it
GENERIC = Option("--generic", bool, "Write the output even when its usual consumer cannot run it (an unknown family "
                 "keeps its tensor names).")
