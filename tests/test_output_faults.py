"""Output faults: a folder that cannot be written, a full disk, a target that is the source.

Each must end in one line on stderr and exit 5, with the source untouched, an existing target
byte-identical to before and no staging folder left. Runs as a real subprocess, because the faults
(permissions, a full filesystem) belong to the process. Root ignores file permissions, so as root the
unwritable-folder run drops the capabilities that let it (CAP_DAC_OVERRIDE and friends) with setpriv.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import (
    FIXTURES,
    assert_one_line_error,
    folder_state,
    staging_leftovers,
)

SRC = FIXTURES / "tiny-llama"
NO_OVERRIDE = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner",
               "--inh-caps", "-dac_override,-dac_read_search,-fowner", "--"]


def _lmconv(*args: object, cwd: Path, prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LMCONV_DISABLE_PLUGINS", "LMCONV_DEBUG")}
    return subprocess.run([*(prefix or []), sys.executable, "-m", "lmconv", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def source_state() -> dict[str, bytes | None]:
    before = folder_state(SRC)
    yield before
    assert folder_state(SRC) == before, "the source was touched"


@pytest.mark.parametrize("existing", [False, True], ids=["new-target", "existing-target"])
@pytest.mark.parametrize("target", ["m.gguf", "m.safetensors", "hf/"])
def test_unwritable_folder(tmp_path: Path, source_state: dict, existing: bool, target: str) -> None:
    out = tmp_path / "ro"
    out.mkdir()
    if existing:
        if target.endswith("/"):
            (out / "hf").mkdir()
            (out / "hf" / "config.json").write_text("{}")
        else:
            (out / target).write_bytes(b"old bytes")
    before = folder_state(out)
    out.chmod(0o555)
    try:
        prefix = NO_OVERRIDE if os.geteuid() == 0 else []
        # the capability drop is real: this process cannot create a file in the folder
        probe = subprocess.run([*prefix, sys.executable, "-c", f"open({str(out / 'probe')!r}, 'w')"], capture_output=True)
        assert probe.returncode != 0 and not (out / "probe").exists()
        proc = _lmconv(SRC, f"{out}/{target}", "--force", cwd=tmp_path, prefix=prefix)
    finally:
        out.chmod(0o755)
    line = assert_one_line_error(proc, 5, "ro", "permission denied")
    assert "ro" in line
    assert folder_state(out) == before
    assert staging_leftovers(out) == []


@pytest.fixture
def small_disk(tmp_path: Path) -> Path:
    """A 320 KiB tmpfs (a real ENOSPC) when this process may mount one, else a folder under RLIMIT_FSIZE."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=320k", f"lmconv-test-{uuid.uuid4().hex[:8]}", str(mnt)],
        capture_output=True).returncode == 0
    yield mnt
    if mounted:
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.parametrize("target", ["m.safetensors", "m.gguf", "hf/", "m.safetensors.index.json"])
def test_full_disk(tmp_path: Path, small_disk: Path, source_state: dict, target: str) -> None:
    """The fixture needs ~560 KB; the disk holds 320 KiB and an older target of 100 KB."""
    (small_disk / "old.bin").write_bytes(b"\x01" * 100_000)
    if not target.endswith("/"):
        (small_disk / target).write_bytes(b"old target")
    before = folder_state(small_disk)
    on_tmpfs = os.path.ismount(small_disk)
    prefix = [] if on_tmpfs else ["prlimit", "--fsize=200000", "--"]
    extra = ("--max-shard-size", "100KB") if target.endswith(".index.json") else ()
    proc = _lmconv(SRC, f"{small_disk}/{target}", "--force", *extra, cwd=tmp_path, prefix=prefix)
    assert_one_line_error(proc, 5, "no space left" if on_tmpfs else "file too large")
    assert folder_state(small_disk) == before
    assert staging_leftovers(small_disk) == []
    # and the space is given back: nothing of the failed run still holds blocks
    if on_tmpfs:
        assert shutil.disk_usage(small_disk).used < 200_000


def test_target_is_the_source_folder(tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(SRC, model)
    before = folder_state(model)
    proc = _lmconv(model, model, "--force", cwd=tmp_path)
    assert_one_line_error(proc, 5, "model")
    proc = _lmconv(model, f"{model}/", "--force", "--dtype", "f16", cwd=tmp_path)
    assert_one_line_error(proc, 5, "model")
    assert folder_state(model) == before


def test_target_is_a_link_to_the_source(tmp_path: Path) -> None:
    """DST names SRC through a symlink or a hard link: refused, and SRC keeps its bytes."""
    src = tmp_path / "m.safetensors"
    src.write_bytes((SRC / "model.safetensors").read_bytes())
    (tmp_path / "sym.safetensors").symlink_to(src)
    os.link(src, tmp_path / "hard.safetensors")
    data = src.read_bytes()
    for link in ("sym.safetensors", "hard.safetensors"):
        proc = _lmconv(src, tmp_path / link, "--force", "--dtype", "f16", "--no-companions", cwd=tmp_path)
        assert_one_line_error(proc, 5, link)
        assert src.read_bytes() == data
    assert staging_leftovers(tmp_path) == []


def test_target_folder_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "afile").write_bytes(b"x")
    proc = _lmconv(SRC, tmp_path / "afile" / "m.gguf", cwd=tmp_path)
    assert_one_line_error(proc, 5, "afile")
    assert (tmp_path / "afile").read_bytes() == b"x"
