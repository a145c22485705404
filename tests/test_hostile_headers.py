"""Fuzzed headers meet the error contract; interrupted conversions leave nothing half-done.

The fixed bad inputs (lying headers included) are the corpus in tests/corpus; here hypothesis mutates
valid GGUF and safetensors headers, and SIGINT / SIGKILL interrupt a real conversion.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lmconv.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTED = {0, 2, 3, 4, 5, 7}


def _st(header: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


_VALID_GGUF: list[bytes] = []


def _valid_gguf(tmp: Path) -> bytes:
    """The tiny GPT-2 fixture as GGUF (made once per session)."""
    if not _VALID_GGUF:
        out = tmp / "valid-made.gguf"
        assert main([str(ROOT / "fixtures" / "tiny-gpt2"), str(out), "--quiet"]) == 0
        _VALID_GGUF.append(out.read_bytes())
        out.unlink()
    return _VALID_GGUF[0]


def _contract(tmp_path: Path, capsys: pytest.CaptureFixture[str], src: Path, dst_name: str) -> int:
    """Convert a mutated ``src`` onto an existing target: any documented exit; on failure one line, old target kept."""
    dst = tmp_path / dst_name
    dst.write_bytes(b"precious")
    code = main([str(src), str(dst), "--force", "--quiet", "--no-companions"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code in DOCUMENTED, err
    if code:
        assert len(err) == 1 and err[0].startswith("lmconv: error:") and src.name in err[0], err
        assert "claims more memory" not in err[0], err
        assert dst.read_bytes() == b"precious"
    assert not any(p.name.startswith(".lmconv-tmp-") for p in tmp_path.iterdir())
    return code


FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(pos=st.integers(0, 4096), value=st.integers(0, 255), cut=st.one_of(st.none(), st.integers(0, 8192)))
def test_mutated_gguf_bytes_never_crash(tmp_path: Path, capsys: pytest.CaptureFixture[str], pos: int, value: int, cut: int | None) -> None:
    data = bytearray(_valid_gguf(tmp_path))
    data[pos % len(data)] = value
    if cut is not None:
        data = data[:cut]
    src = tmp_path / "m.gguf"
    src.write_bytes(bytes(data))
    _contract(tmp_path, capsys, src, "out.safetensors")


def _gguf_slots(path: Path) -> list[tuple[int, int]]:
    """(offset, size) of every number in the header, KV section and tensor infos: counts, string
    lengths, value types, array lengths, values, dims, ggml types and data offsets."""
    import gguf

    reader = gguf.GGUFReader(path)
    slots = []
    for f in [*reader.fields.values(), *(t.field for t in reader.tensors)]:
        at = f.offset
        for part in f.parts:
            if part.dtype != np.uint8 and part.size <= 4:  # numbers, not the bytes of a string
                slots += [(at + i * part.itemsize, part.itemsize) for i in range(part.size)]
            at += part.nbytes
    return slots


@FUZZ
@given(pick=st.integers(0, 2**31), value=st.one_of(st.sampled_from([0, 1, 2**31 - 1, 2**32 - 1, 2**62, 2**64 - 1]),
                                                   st.integers(0, 2**64 - 1)))
def test_hostile_numbers_in_gguf_header_and_kv(tmp_path: Path, capsys: pytest.CaptureFixture[str], pick: int, value: int) -> None:
    """One count, length, type, dim or offset of a valid GGUF set to a hostile value, same contract."""
    valid = tmp_path / "valid.gguf"
    valid.write_bytes(_valid_gguf(tmp_path))
    slots = _gguf_slots(valid)
    at, size = slots[pick % len(slots)]
    data = bytearray(valid.read_bytes())
    data[at:at + size] = (value % (1 << (8 * size))).to_bytes(size, "little")
    src = tmp_path / "m.gguf"
    src.write_bytes(bytes(data))
    _contract(tmp_path, capsys, src, "out.safetensors")


@FUZZ
@given(header=st.dictionaries(st.text(max_size=8), st.one_of(
    st.fixed_dictionaries({"dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "X"]),
                           "shape": st.lists(st.integers(-2, 2**40), max_size=3),
                           "data_offsets": st.lists(st.integers(-1, 2**40), min_size=0, max_size=3)}),
    st.integers(), st.text(max_size=4), st.none()), max_size=4), payload=st.binary(max_size=64))
def test_random_safetensors_headers_never_crash(tmp_path: Path, capsys: pytest.CaptureFixture[str], header: dict, payload: bytes) -> None:
    src = tmp_path / "m.safetensors"
    src.write_bytes(_st(header, payload))
    _contract(tmp_path, capsys, src, "out.pt")


ST_VALUES = st.one_of(st.integers(-(2**63), 2**64), st.lists(st.integers(-2, 2**40), max_size=4), st.text(max_size=6),
                      st.none(), st.floats(allow_nan=True), st.sampled_from(["F32", "F16", "BF16", "I8", "F8_E4M3", "BOOL", "Q4"]))


@FUZZ
@given(which=st.integers(0, 2**16), field=st.sampled_from(["dtype", "shape", "data_offsets", "(delete)", "(extra)"]),
       value=ST_VALUES, index=st.integers(0, 3))
def test_edited_safetensors_header_of_a_real_model(tmp_path: Path, capsys: pytest.CaptureFixture[str], which: int, field: str,
                                                  value: object, index: int) -> None:
    """One field of one tensor of the fixture's header replaced (or one element of a list field), same contract;
    an edit that still describes a valid file converts."""
    data = (ROOT / "fixtures" / "tiny-llama" / "model.safetensors").read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    name = sorted(k for k in header if k != "__metadata__")[which % (len(header) - 1)]
    entry = header[name]
    if field == "(delete)":
        del entry[["dtype", "shape", "data_offsets"][index % 3]]
    elif field == "(extra)":
        entry["extra"] = value
    elif isinstance(entry[field], list) and entry[field] and isinstance(value, int):
        entry[field][index % len(entry[field])] = value
    else:
        entry[field] = value
    src = tmp_path / "m.safetensors"
    src.write_bytes(_st(header, data[8 + n:]))
    _contract(tmp_path, capsys, src, "out.safetensors")


def _paused_conversion(tmp_path: Path, *extra: str) -> tuple[Any, Path, Path]:
    """A conversion stopped, for sure, in the middle of writing: its source (tests/plugins/lmconv_pause_plugin.py)
    blocks in the loader of one tensor after others were written, until the test releases it."""
    import subprocess
    import sys
    import time

    from tests.conftest import write_dist

    site = write_dist(tmp_path / "site", {"pause": "lmconv_pause_plugin"}, dist="lmconv-pause")
    src = tmp_path / "model.pause"
    src.write_text(json.dumps({"pause": [[f"w{i}", [256, 256]] for i in range(8)], "at": "w5"}))
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT / "tests" / "plugins")])}
    env.pop("LMCONV_DISABLE_PLUGINS", None)
    proc = subprocess.Popen([sys.executable, "-m", "lmconv", str(src), str(out / "big.safetensors"), *extra],
                            stderr=subprocess.PIPE, text=True, env=env)
    reached = Path(f"{src}.reached")
    deadline = time.time() + 120
    while not reached.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert reached.exists(), f"the conversion never reached the pausing tensor: {proc.poll()} {proc.stderr and proc.stderr.read()}"
    assert proc.poll() is None
    assert any(p.name.startswith(".lmconv-tmp-") for p in out.iterdir()), "no staging folder while writing"
    return proc, src, out


def test_sigint_exits_130_and_leaves_nothing(tmp_path: Path) -> None:
    """Ctrl-C in the middle of writing: exit 130, no output, no staging folder."""
    import signal

    proc, src, out = _paused_conversion(tmp_path)
    proc.send_signal(signal.SIGINT)
    Path(f"{src}.release").write_text("")  # let the loader's thread finish so the process can exit
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "lmconv: interrupted" in err, err
    assert list(out.iterdir()) == []


def test_sigkill_leaves_old_target_and_next_run_cleans_up(tmp_path: Path) -> None:
    """SIGKILL in the middle of writing: the old DST is intact; the staging folder left behind is
    removed by the next run."""
    import signal

    out = tmp_path / "out"
    out.mkdir()
    (out / "big.safetensors").write_bytes(b"the old file")
    proc, src, out = _paused_conversion(tmp_path, "--force", "--quiet")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert (out / "big.safetensors").read_bytes() == b"the old file"
    left = [p.name for p in out.iterdir() if p.name != "big.safetensors"]
    assert left and all(n.startswith(f".lmconv-tmp-{proc.pid}-") for n in left)
    assert main([str(ROOT / "fixtures" / "tiny-llama"), str(out / "small.gguf"), "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["big.safetensors", "small.gguf"]
