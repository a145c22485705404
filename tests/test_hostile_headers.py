"""Lying headers fail fast with one line and exit 3; mutated headers never produce a traceback."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmconv.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTED = {0, 2, 3, 4, 5, 7}


def _gguf(n_tensors: int = 0, kvs: bytes = b"", n_kv: int = 0, tail: bytes = b"") -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv) + kvs + tail


def _string(s: bytes, claimed: int | None = None) -> bytes:
    return struct.pack("<Q", len(s) if claimed is None else claimed) + s


def _st(header: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


HOSTILE = {
    "gguf-n_tensors-2^62": ("x.gguf", _gguf(n_tensors=2**62)),
    "gguf-n_kv-2^62": ("x.gguf", _gguf(n_kv=2**62)),
    "gguf-string-2^40": ("x.gguf", _gguf(n_kv=1, kvs=_string(b"general.name") + struct.pack("<I", 8) + _string(b"abc", 2**40))),
    "gguf-unknown-value-type": ("x.gguf", _gguf(n_kv=1, kvs=_string(b"k") + struct.pack("<I", 99) + b"\0" * 16)),
    "gguf-array-of-2^50": ("x.gguf", _gguf(n_kv=1, kvs=_string(b"k") + struct.pack("<IIQ", 9, 6, 2**50))),
    "gguf-bad-version": ("x.gguf", b"GGUF" + struct.pack("<IQQ", 99, 0, 0)),
    "gguf-tensor-past-end": ("x.gguf", _gguf(n_tensors=1, tail=_string(b"t") + struct.pack("<IQQIQ", 2, 1024, 1024, 0, 0) + b"\0" * 64)),
    "gguf-absurd-dims": ("x.gguf", _gguf(n_tensors=1, tail=_string(b"t") + struct.pack("<I", 2**31) + b"\0" * 64)),
    "st-header-10^12": ("x.safetensors", struct.pack("<Q", 10**12) + b"{}"),
    "st-header-past-end": ("x.safetensors", struct.pack("<Q", 4096) + b'{"a":1}'),
    "st-overlap": ("x.safetensors", _st({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                                        "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, b"\0" * 24)),
    "st-data-past-end": ("x.safetensors", _st({"a": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}, b"\0" * 8)),
    "st-unknown-dtype": ("x.safetensors", _st({"a": {"dtype": "F7", "shape": [1], "data_offsets": [0, 1]}}, b"\0")),
    "st-non-utf8": ("x.safetensors", struct.pack("<Q", 4) + b"\xff\xfe{}"),
    "st-negative-shape": ("x.safetensors", _st({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}})),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_lying_header_is_one_line_exit_3(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name, data = HOSTILE[case]
    src = tmp_path / name
    src.write_bytes(data)
    old = tmp_path / "old.safetensors"
    old.write_bytes(b"precious")
    assert main([str(src), str(old), "--force"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lmconv: error:") and name in err[0]
    assert old.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "old.safetensors"])


def _valid_gguf(tmp: Path) -> bytes:
    out = tmp / "valid.gguf"
    if not out.exists():
        assert main([str(ROOT / "fixtures" / "tiny-gpt2"), str(out), "--quiet"]) == 0
    return out.read_bytes()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pos=st.integers(0, 4096), value=st.integers(0, 255), cut=st.one_of(st.none(), st.integers(0, 8192)))
def test_mutated_gguf_header_never_crashes(tmp_path: Path, capsys: pytest.CaptureFixture[str], pos: int, value: int, cut: int | None) -> None:
    data = bytearray(_valid_gguf(tmp_path))
    data[pos % len(data)] = value
    if cut is not None:
        data = data[:cut]
    src = tmp_path / "m.gguf"
    src.write_bytes(bytes(data))
    dst = tmp_path / "out.safetensors"
    code = main([str(src), str(dst), "--force", "--quiet", "--no-companions"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code in DOCUMENTED, err
    if code:
        assert len(err) == 1 and err[0].startswith("lmconv: error:")
    assert not any(p.name.startswith(".lmconv-tmp-") for p in tmp_path.iterdir())


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.dictionaries(st.text(max_size=8), st.one_of(
    st.fixed_dictionaries({"dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "X"]),
                           "shape": st.lists(st.integers(-2, 2**40), max_size=3),
                           "data_offsets": st.lists(st.integers(-1, 2**40), min_size=0, max_size=3)}),
    st.integers(), st.text(max_size=4), st.none()), max_size=4), payload=st.binary(max_size=64))
def test_mutated_safetensors_header_never_crashes(tmp_path: Path, capsys: pytest.CaptureFixture[str], header: dict, payload: bytes) -> None:
    src = tmp_path / "m.safetensors"
    src.write_bytes(_st(header, payload))
    code = main([str(src), str(tmp_path / "out.pt"), "--force", "--quiet", "--no-companions"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code in DOCUMENTED, err
    if code:
        assert len(err) == 1 and err[0].startswith("lmconv: error:")


def test_sigint_exits_130_and_leaves_nothing(tmp_path: Path) -> None:
    """Ctrl-C halfway through a conversion: exit 130, no output, no staging folder."""
    import signal
    import subprocess
    import sys
    import time

    from fixtures.make_fixtures import build_llama

    src = build_llama(tmp_path / "big", hidden_size=1024, intermediate_size=4096, num_layers=6, num_heads=8,
                      num_kv_heads=2, vocab_size=8192, tokenizer=False)
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "lmconv", str(src), str(out / "big.gguf"), "--quant", "q4_k_m"],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not any(p.name.startswith(".lmconv-tmp-") for p in out.iterdir()):
        time.sleep(0.02)
    time.sleep(0.3)
    assert proc.poll() is None, "the conversion finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "lmconv: interrupted" in err, err
    assert list(out.iterdir()) == []


def test_sigkill_leaves_old_target_and_next_run_cleans_up(tmp_path: Path) -> None:
    """SIGKILL halfway: the old DST is intact; the staging folder left behind is removed by the next run."""
    import signal
    import subprocess
    import sys
    import time

    from fixtures.make_fixtures import build_llama

    src = build_llama(tmp_path / "big", hidden_size=1024, intermediate_size=4096, num_layers=6, num_heads=8,
                      num_kv_heads=2, vocab_size=8192, tokenizer=False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "big.gguf").write_bytes(b"the old file")
    proc = subprocess.Popen([sys.executable, "-m", "lmconv", str(src), str(out / "big.gguf"), "--quant", "q4_k_m",
                             "--force", "--quiet"])
    deadline = time.time() + 60
    while time.time() < deadline and not any(p.name.startswith(".lmconv-tmp-") for p in out.iterdir()):
        time.sleep(0.02)
    time.sleep(0.3)
    assert proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert (out / "big.gguf").read_bytes() == b"the old file"
    left = [p.name for p in out.iterdir() if p.name != "big.gguf"]
    assert all(n.startswith(f".lmconv-tmp-{proc.pid}-") for n in left)
    assert main([str(ROOT / "fixtures" / "tiny-llama"), str(out / "small.gguf"), "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["big.gguf", "small.gguf"]
