"""Every case of the bad-input corpus (tests/corpus) meets the error contract, also under a memory limit."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.corpus import (
    Case,
    ValidFiles,
    assert_contract,
    counts_by_format,
    load_corpus,
)

ROOT = Path(__file__).resolve().parents[1]
CORPUS = load_corpus()


@pytest.fixture(scope="session")
def valid(tmp_path_factory: pytest.TempPathFactory) -> ValidFiles:
    return ValidFiles(tmp_path_factory.mktemp("valid-inputs"))


@pytest.mark.parametrize("case", CORPUS, ids=lambda c: c.id)
def test_bad_input_meets_the_contract(case: Case, tmp_path: Path, valid: ValidFiles) -> None:
    assert_contract(case, tmp_path, valid)


LYING = [c for c in CORPUS if c.lying]

# Runs the lying cases in one process whose address space is capped at what it has mapped after its
# imports plus 1 GiB: a reader that allocates what a header claims (>= 4 GiB) hits MemoryError and
# exits 1 instead of the case's code. The script first proves that the cap bites.
_UNDER_LIMIT = r"""
import contextlib, importlib, io, json, pkgutil, resource, sys
import numpy, gguf, h5py, safetensors, torch
import lmconv.plugins
for m in pkgutil.walk_packages(lmconv.plugins.__path__, "lmconv.plugins."):
    importlib.import_module(m.name)
if sys.argv[2] == "tf":
    import tensorflow
from lmconv.cli import main
main(["formats"])  # the registry and its plugins, loaded before the cap

def vm_bytes():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024

limit = vm_bytes() + (1 << 30)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
try:
    bytearray(4 << 30)
    raise SystemExit("the address-space cap does not bite")
except MemoryError:
    pass
out = []
for job in json.load(open(sys.argv[1])):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(job["argv"])
    out.append({"id": job["id"], "code": code, "stderr": err.getvalue()})
print(json.dumps(out))
"""


def test_lying_headers_fail_before_allocating(tmp_path: Path, valid: ValidFiles) -> None:
    """Every case whose header claims >= 4 GiB fails the same way with 1 GiB of address space to spare."""
    assert len(LYING) >= 30
    jobs = []
    for i, case in enumerate(LYING):
        folder = tmp_path / f"case{i}"
        (folder / "in").mkdir(parents=True)
        (folder / "out").mkdir()
        src = case.build(folder / "in", valid)
        jobs.append({"id": case.id, "argv": [str(src), str(folder / "out" / case.target), "--quiet", *case.args]})
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    need_tf = "tf" if any(c.fmt == "tf" for c in LYING) else "-"
    proc = subprocess.run([sys.executable, "-c", _UNDER_LIMIT, str(tmp_path / "jobs.json"), need_tf], capture_output=True,
                          text=True, timeout=600, env={**__import__("os").environ, "MALLOC_ARENA_MAX": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {r["id"]: r for r in json.loads(proc.stdout.strip().splitlines()[-1])}
    for i, case in enumerate(LYING):
        r = results[case.id]
        lines = r["stderr"].splitlines()
        assert r["code"] == case.code, f"{case.id}: exit {r['code']} under the memory cap: {r['stderr']!r}"
        assert len(lines) == 1 and lines[0].startswith("lmconv: error: "), f"{case.id}: {r['stderr']!r}"
        # the readers' last-resort MemoryError net must not be what caught it: that means an allocation was tried
        assert "claims more memory" not in lines[0], f"{case.id} allocated what its header claims: {lines[0]!r}"
        assert list((tmp_path / f"case{i}" / "out").iterdir()) == []


def _readme_counts() -> dict[str, int]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Bad input", 1)[1].split("\n## ", 1)[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^\| (\w+) \| (\d+) \|", section, re.M)}


def test_readme_states_how_many_cases_per_format() -> None:
    counts = counts_by_format(CORPUS)
    assert set(counts) >= {"safetensors", "gguf", "pytorch", "h5", "tf", "hf"}
    assert _readme_counts() == counts, "update the table in README.md's 'Bad input' section"


def _representatives() -> list[Case]:
    """Per format: its empty file, a mid-file cut, and its first case that is neither."""
    picked: list[Case] = []
    for fmt in dict.fromkeys(c.fmt for c in CORPUS):
        mine = [c for c in CORPUS if c.fmt == fmt]
        cuts = [c for c in mine if c.name.startswith("cut-at-")]
        others = [c for c in mine if c.name != "empty" and not c.name.startswith("cut-at-")]
        picked += [c for c in mine if c.name == "empty"] + cuts[len(cuts) // 2:len(cuts) // 2 + 1] + others[:1]
    return picked


@pytest.mark.parametrize("case", _representatives(), ids=lambda c: c.id)
def test_real_process_stderr_is_one_line(case: Case, tmp_path: Path, valid: ValidFiles) -> None:
    """In-process runs see only Python's stderr; a real process shows what native libraries (TensorFlow,
    HDF5, torch) print on file descriptor 2 too. It must still be exactly the one error line."""
    from tests.conftest import assert_one_line_error, lmconv

    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    src = case.build(tmp_path / "in", valid)
    proc = lmconv(src, tmp_path / "out" / case.target, *case.args, cwd=tmp_path)
    assert_one_line_error(proc, case.code, case.names or src.name)
    assert list((tmp_path / "out").iterdir()) == []
