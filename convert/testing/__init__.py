"""A conformance kit for format plugins (import name ``lmconv.testing``; needs pytest).

Subclass :class:`FormatConformance` in your plugin's test suite and name your format::

    from lmconv.testing import FormatConformance

    class TestNpz(FormatConformance):
        format_name = "npz"

pytest collects the inherited checks and runs them against the format, with the
other installed formats and lmconv's dtypes as parameters:

- ``test_registered`` — the plugin loaded, the format is registered and describes itself sanely;
- ``test_round_trip`` — a synthetic model (f32/f16/bf16 with NaN, ±inf, -0.0 and
  subnormals, ints at their extremes, a 0-d tensor, a config) comes back bit-exact;
- ``test_declared_dtype[...]`` — every dtype in ``stores_dtypes`` comes back exactly; any
  other dtype is refused with an :class:`~lmconv.errors.LmconvError` or stored as a
  declared dtype with its values kept;
- ``test_ties`` — a tied tensor comes back as one tensor with its alias;
- ``test_round_trip_via[other]`` — this format → each other writable format → this
  format is bit-exact (on what both formats keep when used alone);
- ``test_sniff_accepts_own_file``, ``test_sniff_rejects_other_formats[other]``,
  ``test_sniff_rejects_junk`` — ``sniff`` claims its own files and nothing else, and never raises;
- ``test_bad_input[damage]`` — an empty, truncated, scrambled or garbage file gives an
  ``LmconvError`` naming the file, never another exception, and never silently less data;
- ``test_lazy_read`` — reading and listing tensors calls no ``Tensor.load`` and allocates
  no tensor data; loading one tensor does not load the others.

Checks that cannot apply are skipped (a read-only format is not written, a format whose
optional dependency is missing is skipped with the ``MissingDependencyError`` message).
A check your format knowingly fails can be listed with its reason in ``known_failures``;
it then runs as a strict ``xfail``, so fixing it makes you remove the entry.
"""

from __future__ import annotations

try:
    import pytest  # noqa: F401 - the kit is made of pytest tests
except ImportError as exc:  # pragma: no cover - lmconv itself never imports this package
    raise ImportError("lmconv.testing is a pytest kit: pip install pytest") from exc

from .conformance import FormatConformance
from .samples import (
    DAMAGES,
    SAMPLE_CONFIG,
    SAMPLE_OPTIONS,
    assert_same,
    compare_models,
    damage_file,
    declared_dtypes,
    sample_array,
    sample_model,
    target_path,
    write_model,
)

__all__ = [
    "DAMAGES", "FormatConformance", "SAMPLE_CONFIG", "SAMPLE_OPTIONS", "assert_same", "compare_models", "damage_file", "declared_dtypes",
    "sample_array", "sample_model", "target_path", "write_model",
]
