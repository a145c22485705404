"""``lmconv batch --engine ray`` on a real Ray cluster that this test starts on this machine
(``ray start --head --block --num-cpus 2`` in a temporary folder, stopped at the end): six jobs, the
worker of one of them killed with SIGKILL while it writes, Ray retries that task, every output is
complete and verified, no staging folder is left, and the one bad job fails alone."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from tests.conftest import ROOT, SCHEMAS, lmconv, staging_leftovers
from tests.ladder_support import kill_when_staging_appears, small_llama

TINY = ROOT / "fixtures" / "tiny-llama"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ours(temp: Path) -> list[int]:
    """Processes whose command line names the cluster's temporary folder (its own processes)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(temp).encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    # Ray's socket paths must stay short: a folder right under /tmp, not pytest's deep tmp_path.
    temp = Path(tempfile.mkdtemp(prefix="lmray", dir="/tmp"))
    gcs = _free_port()
    cmd = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", "--num-cpus", "2",
           "--temp-dir", str(temp), "--node-ip-address", "127.0.0.1", "--port", str(gcs),
           "--ray-client-server-port", str(_free_port()), "--dashboard-port", str(_free_port()),
           "--include-dashboard", "false", "--disable-usage-stats"]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    with open(temp / "start.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list(temp.glob("session_*/sockets/raylet")):
            assert proc.poll() is None, (temp / "start.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the Ray cluster did not start in 120 s"
            time.sleep(0.2)
        yield f"127.0.0.1:{gcs}"
    finally:
        proc.send_signal(signal.SIGTERM)  # `ray start --block` stops the processes it started
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of its process group is left
        except ProcessLookupError:
            pass
        for pid in _ours(temp):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp, ignore_errors=True)


def test_six_jobs_one_worker_killed_and_retried_one_bad_job(ray_address: str, tmp_path: Path) -> None:
    wide = small_llama(tmp_path / "models" / "wide")
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(f"""
[[jobs]]
id = "wide-ladder"
source = "{wide}"
out = "out-wide/"
quants = ["q8_0", "q4_k_m"]

[[jobs]]
id = "killed"
source = "{wide}"
out = "out-killed/"
quants = ["q6_k", "q4_k_m", "q2_k"]

[[jobs]]
id = "tiny-ladder"
source = "{TINY}"
out = "out-tiny/"
quants = "q8_0,q4_0"

[[jobs]]
id = "tiny-bf16"
source = "{TINY}"
target = "single/tiny.safetensors"
dtype = "bf16"

[[jobs]]
id = "tiny-q8"
source = "{TINY}"
target = "single/tiny-q8_0.gguf"
quant = "q8_0"

[[jobs]]
id = "missing"
source = "models/nothing-here/"
out = "out-missing/"
quants = ["q8_0"]
""")
    for d in ("out-killed", "single"):
        (tmp_path / d).mkdir()
    killed = kill_when_staging_appears(tmp_path / "out-killed", timeout=240)
    proc = lmconv("batch", jobs, "--engine", "ray", "--verify", env={"RAY_ADDRESS": ray_address}, timeout=400)
    assert killed, f"the job ended before its worker could be killed: {proc.stderr}"
    assert proc.returncode == 3, proc.stderr  # the one failure: a missing source (exit 3)
    report = json.loads((tmp_path / "jobs.report.json").read_text())
    jsonschema.validate(report, json.loads((SCHEMAS / "batch-report.schema.json").read_text()))
    by_id = {j["id"]: j for j in report["jobs"]}
    assert report["engine"] == "ray" and report["summary"]["ok"] == 5 and report["summary"]["failed"] == 1
    retried = by_id["killed"]
    assert retried["status"] == "ok" and retried["attempts"] == 2 and retried["pid"] != killed[0], retried
    for job in report["jobs"]:
        if job["id"] == "missing":
            continue
        assert job["status"] == "ok", job
        for out in job["outputs"]:
            assert out["verify"] == "ok" and out["written"] and Path(out["path"]).stat().st_size == out["bytes"], out
    assert sorted(Path(o["path"]).name for o in retried["outputs"]) == ["wide-Q2_K.gguf", "wide-Q4_K_M.gguf",
                                                                        "wide-Q6_K.gguf"]
    for folder in ("out-wide", "out-killed", "out-tiny", "single"):
        assert not staging_leftovers(tmp_path / folder), folder
    missing = by_id["missing"]
    assert missing["exit_code"] == 3 and "nothing-here: no such file or directory" in missing["error"]
    assert not (tmp_path / "out-missing").exists()
    assert "1 failed" in proc.stdout and "killed" in proc.stdout and "ok ×2" in proc.stdout
    noise = [ln for ln in proc.stderr.splitlines() if not ln.startswith("lmconv: ")]
    assert not noise, f"Ray's own output reached the terminal: {noise[:5]}"


def test_no_cluster_is_one_line_and_quick(tmp_path: Path) -> None:
    """No cluster at the address (nothing listens; something listens that is not Ray, where Ray alone
    would retry for minutes printing warnings): one line, exit 2, in seconds, nothing written."""
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(f'[[jobs]]\nsource = "{TINY}"\ntarget = "x.gguf"\n')
    proc = lmconv("batch", jobs, "--engine", "ray", "--address", f"127.0.0.1:{_free_port()}", timeout=200)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "ray start --head" in lines[0], proc.stderr
    with socket.socket() as silent:  # takes connections (the kernel's backlog), never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        start = time.monotonic()
        proc = lmconv("batch", jobs, "--engine", "ray", env={"RAY_ADDRESS": address}, timeout=200)
        took = time.monotonic() - start
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"lmconv: error: no Ray cluster answers at {address} (") and "ray start --head" in lines[0]
    assert took < 40, f"{took:.0f} s to give up on an address that is not Ray"
    assert not (tmp_path / "x.gguf").exists() and not (tmp_path / "jobs.report.json").exists()
