"""The bad-input corpus: broken, truncated and hostile files for every format lmconv reads.

Nothing here is a committed binary. Each :class:`Case` builds its file from a valid one (made from the
fixtures by :class:`ValidFiles`) and states what lmconv must say about it. ``tests/test_bad_input_corpus.py``
runs every case against one contract (:func:`assert_contract`):

* a documented non-zero exit code (the case's ``code``);
* exactly one line on stderr, ``lmconv: error: ...``, naming the file, and no traceback;
* nothing on stdout; no output and no staging folder left behind; the source folder and an existing
  target (converted with ``--force``) byte-identical to before.

Cases whose header lies about a size (``lying=True``) are also run under an address-space limit far
below what the lie claims, which proves that lmconv fails before allocating (``test_bounded_allocation``).

Each format's cases live in their own module (``safetensors_cases`` ...); :data:`CORPUS` collects them.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT_MODULES = ("safetensors_cases", "gguf_cases", "pytorch_cases", "h5_cases", "tf_cases", "hf_cases")
DOCUMENTED_EXIT_CODES = {1, 2, 3, 4, 5, 6, 7}
GIB = 1 << 30


@dataclass(frozen=True)
class Case:
    """One bad input and what lmconv must do with it."""

    fmt: str
    name: str
    build: Callable[[Path, ValidFiles], Path]  # writes into the folder, returns the SRC to give lmconv
    code: int = 3
    mentions: tuple[str, ...] = ()  # words the error line must hold besides the file name
    names: str | None = None  # the file name the error must name (default: SRC's name)
    lying: bool = False  # its header claims more than GIB bytes: run it under RLIMIT_AS too
    inspect: bool = True  # `lmconv inspect SRC` must fail the same way
    target: str = "old.safetensors"  # the existing DST the failed conversion must leave alone
    args: tuple[str, ...] = ()  # extra flags for the conversion

    @property
    def id(self) -> str:
        return f"{self.fmt}:{self.name}"


class ValidFiles:
    """Valid inputs made once per session from the fixtures, for cases to copy and break."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._made: dict[str, Path] = {}

    def get(self, kind: str) -> Path:
        """A valid file (or folder) of ``kind``; see :data:`MAKERS` for the kinds."""
        if kind not in self._made:
            self._made[kind] = MAKERS[kind](self.folder / kind)
        return self._made[kind]

    def bytes(self, kind: str) -> bytes:
        return self.get(kind).read_bytes()


MAKERS: dict[str, Callable[[Path], Path]] = {}


def maker(kind: str) -> Callable[[Callable[[Path], Path]], Callable[[Path], Path]]:
    """Register how to make a valid ``kind`` (the function gets an empty folder's path to create)."""

    def deco(fn: Callable[[Path], Path]) -> Callable[[Path], Path]:
        MAKERS[kind] = fn
        return fn

    return deco


def convert_quietly(*argv: object) -> None:
    """A conversion that must succeed (used by makers)."""
    code, _, err = invoke([*map(str, argv), "--quiet"])
    assert code == 0, err


def invoke(argv: list[str]) -> tuple[int, str, str]:
    """``lmconv ARGV`` in-process: (exit code, stdout, stderr)."""
    from lmconv.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def folder_state(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def check_result(case: Case, src: Path, code: int, stdout: str, stderr: str) -> str:
    """The error contract for one run; returns the error line."""
    lines = stderr.splitlines()
    assert code == case.code, f"{case.id}: exit {code}, wanted {case.code}; stderr: {stderr!r}"
    assert code in DOCUMENTED_EXIT_CODES
    assert "Traceback" not in stderr, f"{case.id}: {stderr}"
    assert len(lines) == 1, f"{case.id}: stderr must be one line, got {stderr!r}"
    assert lines[0].startswith("lmconv: error: "), f"{case.id}: {lines[0]!r}"
    assert stdout == "", f"{case.id}: stdout {stdout!r}"
    assert "claims more memory" not in lines[0], f"{case.id}: a MemoryError was caught: an allocation was tried"
    assert (case.names or src.name) in lines[0], f"{case.id}: the error does not name {case.names or src.name}: {lines[0]!r}"
    for word in case.mentions:
        assert word.lower() in lines[0].lower(), f"{case.id}: {word!r} not in {lines[0]!r}"
    return lines[0]


def assert_contract(case: Case, folder: Path, valid: ValidFiles) -> str:
    """Build the case in ``folder``, convert it onto an existing target, inspect it; check the contract."""
    src_dir, out_dir = folder / "in", folder / "out"
    src_dir.mkdir()
    out_dir.mkdir()
    src = case.build(src_dir, valid)
    dst = out_dir / case.target
    if case.target.endswith("/"):
        dst.mkdir()
        (dst / "config.json").write_bytes(b'{"precious": true}')
    else:
        dst.write_bytes(b"precious bytes of an earlier conversion")
    before_in, before_out = folder_state(src_dir), folder_state(out_dir)
    line = check_result(case, src, *invoke([str(src), str(dst), "--force", "--quiet", *case.args]))
    assert folder_state(out_dir) == before_out, f"{case.id}: the target folder changed (partial output or staging left)"
    assert folder_state(src_dir) == before_in, f"{case.id}: the source folder changed"
    if case.inspect:
        check_result(case, src, *invoke(["inspect", str(src)]))
        assert folder_state(src_dir) == before_in
    return line


def file_case(data: bytes | Callable[[ValidFiles], bytes], name: str) -> Callable[[Path, ValidFiles], Path]:
    """A case builder: ``name`` holding ``data`` (or what ``data(valid)`` makes from the valid files)."""

    def build(folder: Path, valid: ValidFiles) -> Path:
        path = folder / name
        path.write_bytes(data(valid) if callable(data) else data)
        return path

    return build


def cut(kind: str, n: int) -> Callable[[ValidFiles], bytes]:
    """The first ``n`` bytes of the valid ``kind``."""
    return lambda valid: valid.bytes(kind)[:n]


def copy_and_break(kind: str, edit: Callable[[Path], None], src_name: str) -> Callable[[Path, ValidFiles], Path]:
    """A case builder: a copy of the folder holding valid ``kind`` (a sharded model, say), broken by
    ``edit(folder)``; SRC is ``src_name`` in it."""

    def build(folder: Path, valid: ValidFiles) -> Path:
        for p in valid.get(kind).parent.iterdir():
            (folder / p.name).write_bytes(p.read_bytes())
        edit(folder)
        return folder / src_name

    return build


def edit_json(name: str, fn: Callable[[Any], object]) -> Callable[[Path], None]:
    """An edit of ``folder/name``: ``fn`` changes the parsed JSON in place, or returns the new text."""

    def edit(folder: Path) -> None:
        path = folder / name
        doc = json.loads(path.read_text())
        out = fn(doc)
        path.write_text(out if isinstance(out, str) else json.dumps(doc))

    return edit


def load_corpus() -> list[Case]:
    cases: list[Case] = []
    for name in FORMAT_MODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        cases.extend(module.CASES)
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids)), "case names must be unique within a format"
    return cases


def counts_by_format(cases: list[Case]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for c in cases:
        counts[c.fmt] = counts.get(c.fmt, 0) + 1
    return counts


def truncations(data_len: int, marks: list[int], spread: int = 40) -> list[int]:
    """Offsets to cut a file at: every byte up to 24, around each structural mark, and a spread through the rest."""
    offs = set(range(0, min(24, data_len)))
    for m in marks:
        offs.update(o for o in range(m - 2, m + 3) if 0 <= o < data_len)
    step = max(1, data_len // spread)
    offs.update(range(0, data_len, step))
    offs.add(data_len - 1)
    return sorted(offs)


__all__ = ["GIB", "Case", "ValidFiles", "assert_contract", "convert_quietly", "copy_and_break", "counts_by_format",
           "cut", "edit_json", "file_case", "invoke", "load_corpus", "maker", "truncations"]
