"""The searching quantisers run in worker processes when there is more than one compute thread
(plugins/quantizers/offload.py): the bytes must not change, a kernel's error must come back as
itself, a dead worker must not lose the chunk, and a conversion must leave no worker behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from lmconv.plugins.quantizers import offload
from lmconv.registry import get_registry

from tests.conftest import lmconv
from tests.test_kquants import random_matrix

ROOT = Path(__file__).resolve().parent.parent
TYPES = ["q4_0", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "iq4_nl", "iq4_xs", "iq3_s", "iq3_xxs", "iq2_s",
         "iq2_xs", "iq2_xxs", "iq1_s", "iq1_m"]


@pytest.fixture
def forced(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Every chunk goes to a worker (even the small ones of a test); the pool is new and closed after."""
    offload.shutdown()
    monkeypatch.setenv(offload.ENV, "1")
    yield
    offload.shutdown()


def _workers() -> list[subprocess.Popen[bytes]]:
    pool = offload._pool
    return [] if pool is None else [w.proc for w in pool.all]


@pytest.mark.parametrize("name", TYPES)
def test_worker_bytes_equal_in_process_bytes(name: str, forced: None, monkeypatch: pytest.MonkeyPatch) -> None:
    q = get_registry().quantizer(name)
    rng = np.random.default_rng(sum(map(ord, name)))
    x = random_matrix("weights", rng, (6, 512))
    w = np.exp(rng.standard_normal(512)).astype(np.float32)
    got = q.quantize(x, imatrix=w)
    assert _workers() and all(p.poll() is None and p.pid != os.getpid() for p in _workers())
    monkeypatch.setenv(offload.ENV, "0")
    assert np.array_equal(got, q.quantize(x, imatrix=w))
    if name not in ("iq2_xxs", "iq2_xs", "iq1_s"):
        monkeypatch.setenv(offload.ENV, "1")
        got = q.quantize(x)
        monkeypatch.setenv(offload.ENV, "0")
        assert np.array_equal(got, q.quantize(x))


def test_a_kernel_error_comes_back_as_itself(forced: None) -> None:
    q = get_registry().quantizer("iq2_xxs")
    with pytest.raises(ValueError, match="needs an importance matrix"):
        q.quantize(np.ones((2, 256), np.float32))
    with pytest.raises(ValueError, match="not a multiple"):
        q.quantize(np.ones((2, 100), np.float32), imatrix=np.ones(100, np.float32))
    assert _workers()  # the error was raised there, and the worker is still in the pool
    assert np.array_equal(q.quantize(np.ones((1, 256), np.float32), imatrix=np.ones(256, np.float32)).shape, (1, 66))


def test_a_killed_worker_costs_nothing(forced: None) -> None:
    q = get_registry().quantizer("q4_K")
    x = random_matrix("heavy", np.random.default_rng(3), (4, 1024))
    first = q.quantize(x)
    dead = _workers()
    for p in dead:
        p.kill()
        p.wait()
    again = q.quantize(x)  # computed in-process after the dead worker is dropped
    assert np.array_equal(first, again)
    third = q.quantize(x)  # and a fresh worker takes over
    assert np.array_equal(first, third)
    live = _workers()
    assert live and not {p.pid for p in live} & {p.pid for p in dead}


def test_automatic_choice() -> None:
    """Automatic: small chunks stay, big ones go only when there is more than one compute thread."""
    env = {k: v for k, v in os.environ.items() if k not in (offload.ENV, "LMCONV_THREADS")}
    code = ("import os; from lmconv.plugins.quantizers import offload as o; "
            "print(o.enabled(o.MIN_ELEMENTS - 1), o.enabled(o.MIN_ELEMENTS))")
    for threads, want in (("2", "False True"), ("1", "False False")):
        out = subprocess.run([sys.executable, "-c", code], env={**env, "LMCONV_THREADS": threads},
                             capture_output=True, text=True, check=True)
        assert out.stdout.split() == want.split()


def _children(pid: int) -> set[int]:
    """Every live process whose parent is ``pid`` or that is in ``pid``'s session of workers."""
    kids = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                kids.add(int(d.name))
    return kids


@pytest.mark.parametrize("quant", ["q4_k_m", "iq4_xs"])
def test_a_conversion_through_workers_writes_the_same_file(quant: str, tmp_path: Path) -> None:
    src = ROOT / "fixtures" / "tiny-llama"
    files = {}
    for mode in ("0", "1"):
        out = tmp_path / f"{mode}.gguf"
        r = lmconv(src, out, "--quant", quant, "--quiet", env={offload.ENV: mode, "LMCONV_THREADS": "2"})
        assert r.returncode == 0 and r.stderr == "", r.stderr
        files[mode] = out.read_bytes()
    assert files["0"] == files["1"]


def test_workers_do_not_outlive_an_interrupted_conversion(tmp_path: Path) -> None:
    """SIGINT while workers are busy: one line, exit 130, and no worker is left once it exits."""
    src = ROOT / "fixtures" / "tiny-llama"
    env = {k: v for k, v in os.environ.items() if k not in ("LMCONV_DISABLE_PLUGINS", "LMCONV_DEBUG")}
    env.update({offload.ENV: "1", "LMCONV_THREADS": "2"})
    proc = subprocess.Popen([sys.executable, "-m", "lmconv", str(src), str(tmp_path / "o.gguf"), "--quant", "iq2_s",
                             "--quiet"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    workers: set[int] = set()
    while time.monotonic() < deadline and not workers and proc.poll() is None:
        workers = _children(proc.pid) - {proc.pid}
        time.sleep(0.05)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert workers, "no worker was started"
    if proc.returncode == 130:
        assert err.strip().splitlines() == ["lmconv: interrupted; no output was written"]
        assert not (tmp_path / "o.gguf").exists()
    else:  # it finished before the signal landed
        assert proc.returncode == 0, err
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() and
                                              "Z" not in Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1][:3]
                                              for p in workers):
        time.sleep(0.1)
    left = [p for p in workers if Path(f"/proc/{p}").exists()
            and "Z" not in Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1][:3]]
    assert not left, f"workers still running: {left}"


def test_workers_are_waited_for_at_exit() -> None:
    """lmconv waits for its workers as it exits: none is left running, and their CPU time counts in
    lmconv's own resource usage (what `time` and the benchmarks read through wait4)."""
    code = ("import numpy as np; from lmconv.registry import get_registry; "
            "from lmconv.plugins.quantizers import offload; "
            "get_registry().quantizer('q4_K').quantize(np.ones((4, 256), np.float32)); "
            "print(' '.join(str(w.proc.pid) for w in offload._pool.all))")
    env = {**os.environ, offload.ENV: "1"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    _, _, usage = os.wait4(proc.pid, 0)
    pids = [int(p) for p in proc.stdout.read().split()]  # type: ignore[union-attr]
    assert pids
    assert not [p for p in pids if Path(f"/proc/{p}").exists()]
    assert usage.ru_utime + usage.ru_stime > 0


def test_a_worker_that_cannot_start_turns_the_workers_off(forced: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the worker module cannot even start (a broken install), the chunk is computed in-process
    and no further worker is tried: one failed start, not one per chunk."""
    monkeypatch.setattr(offload, "_MODULE", "lmconv.no_such_module_here")
    monkeypatch.setattr(offload, "_broken", False)
    q = get_registry().quantizer("q4_K")
    x = random_matrix("normal", np.random.default_rng(4), (4, 512))
    starts = []
    real = offload._Worker.__init__

    def counting(self: offload._Worker) -> None:
        starts.append(1)
        real(self)

    monkeypatch.setattr(offload._Worker, "__init__", counting)
    first = q.quantize(x)
    assert offload._broken and not offload.enabled(1 << 20)
    for _ in range(3):
        assert np.array_equal(q.quantize(x), first)
    assert len(starts) == 1
    monkeypatch.setenv(offload.ENV, "0")
    assert np.array_equal(q.quantize(x), first)


def test_a_thread_waiting_for_a_worker_is_not_stranded_when_workers_die() -> None:
    """More callers than workers: a caller waiting for one is woken when a worker is dropped and
    starts a replacement, instead of waiting for a worker that will never come back."""
    import threading

    pool = offload._Pool(1)
    try:
        first = pool.take()
        got: list[object] = []
        waiter = threading.Thread(target=lambda: got.append(pool.take()), daemon=True)
        waiter.start()
        time.sleep(0.3)
        assert not got  # the only worker is busy
        pool.drop(first)
        waiter.join(30)
        assert got and got[0] is not first and got[0].proc.poll() is None  # type: ignore[attr-defined]
    finally:
        pool.close()


def test_no_process_can_start(forced: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Process limits reached: the chunk is computed here and no further start is tried."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(offload.subprocess, "Popen", refuse)
    monkeypatch.setattr(offload, "_broken", False)
    q = get_registry().quantizer("q6_K")
    x = random_matrix("normal", np.random.default_rng(5), (3, 256))
    got = q.quantize(x)
    assert offload._broken
    monkeypatch.setenv(offload.ENV, "0")
    assert np.array_equal(got, q.quantize(x))
