"""The command line: one-line errors with documented exit codes, nothing partial left behind, no code run
from a pickle, wrappers and companion files understood, quiet when asked."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pty
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    assert_one_line_error,
    companion_bytes,
    copy_companions,
    folder_state,
    lmconv,
    raw_tensors,
    run,
    staging_leftovers,
)
from tests.corpus.pytorch_cases import _OpensFile, _RunsShell


@pytest.fixture(scope="module")
def work(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small inputs shared by the tests (read-only): a .safetensors, a zip .pt, a legacy .pt."""
    import torch

    folder = tmp_path_factory.mktemp("cli-inputs")
    run(tiny_llama, folder / "m.safetensors")
    run(tiny_llama, folder / "m.pt")
    state = {"a.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4), "a.bias": torch.ones(3, dtype=torch.float16),
             "pos": torch.arange(5)}
    torch.save(state, folder / "small.pt")
    torch.save(state, folder / "legacy.pt", _use_new_zipfile_serialization=False)
    return {"st": folder / "m.safetensors", "pt": folder / "m.pt", "small": folder / "small.pt",
            "legacy": folder / "legacy.pt"}


def _error_leaves_folder_untouched(folder: Path, *args: object, code: int, mentions: tuple[str, ...] = ()) -> str:
    before = folder_state(folder)
    proc = lmconv(*args, cwd=folder)
    line = assert_one_line_error(proc, code, *mentions)
    assert folder_state(folder) == before, "a failed run must not create, change or leave anything"
    assert staging_leftovers(folder) == []
    return line


# ----------------------------------------------------------------------------- user errors
def test_missing_source(tmp_path: Path) -> None:
    _error_leaves_folder_untouched(tmp_path, "missing.safetensors", "out.pt", code=3, mentions=("missing.safetensors",))


def test_unknown_source_extension(tmp_path: Path) -> None:
    (tmp_path / "weights.xyz").write_bytes(b"not a model at all")
    _error_leaves_folder_untouched(tmp_path, "weights.xyz", "out.pt", code=3, mentions=("weights.xyz", "unknown file type"))


def test_unknown_target_extension(tmp_path: Path, work: dict[str, Path]) -> None:
    _error_leaves_folder_untouched(tmp_path, work["st"], "out.xyz", code=2, mentions=("out.xyz",))


@pytest.mark.parametrize("flags", [("--bogus",), ("--dtype", "q9"), ("--quant", "q8_0"), ("--max-shard-size", "lots"),
                                   ("--to", "nosuchformat")], ids=lambda f: f[0])
def test_wrong_flag(tmp_path: Path, work: dict[str, Path], flags: tuple[str, ...]) -> None:
    _error_leaves_folder_untouched(tmp_path, work["st"], "out.pt" if flags[0] != "--max-shard-size" else "out.bin",
                                   *flags, code=2)


def test_missing_argument_is_a_usage_error(tmp_path: Path) -> None:
    _error_leaves_folder_untouched(tmp_path, "inspect", code=2)


@pytest.mark.parametrize("target", ["out.pt", "out.safetensors", "hf/"])
def test_existing_target_needs_force(tmp_path: Path, work: dict[str, Path], target: str) -> None:
    if target.endswith("/"):
        (tmp_path / "hf").mkdir()
        (tmp_path / "hf" / "config.json").write_text("{\"mine\": true}")
    else:
        (tmp_path / target).write_bytes(b"precious bytes, not a model")
    line = _error_leaves_folder_untouched(tmp_path, work["st"], target, code=5, mentions=("--force",))
    assert target.rstrip("/") in line
    # with --force it is replaced, atomically, and nothing else is left
    proc = lmconv(work["st"], target, "--force", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert raw_tensors(tmp_path / target.rstrip("/")) == raw_tensors(work["st"])
    assert staging_leftovers(tmp_path) == []


def test_different_companion_beside_target_needs_force(tmp_path: Path, work: dict[str, Path]) -> None:
    """A lone output file writes config.json beside it; somebody else's config.json there is not overwritten."""
    (tmp_path / "config.json").write_text('{"architectures": ["SomethingElse"]}')
    _error_leaves_folder_untouched(tmp_path, work["st"], "out.safetensors", code=5, mentions=("config.json", "--force"))
    proc = lmconv(work["st"], "out.safetensors", "--no-companions", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stderr == ""
    assert (tmp_path / "config.json").read_text() == '{"architectures": ["SomethingElse"]}'


def test_target_is_the_source(tmp_path: Path, work: dict[str, Path]) -> None:
    src = tmp_path / "m.safetensors"
    src.write_bytes(work["st"].read_bytes())
    _error_leaves_folder_untouched(tmp_path, "m.safetensors", "m.safetensors", "--force", code=5)


def test_target_folder_missing(tmp_path: Path, work: dict[str, Path]) -> None:
    _error_leaves_folder_untouched(tmp_path, work["st"], "no/such/dir/out.pt", code=5)


def test_write_failure_leaves_nothing(tmp_path: Path, work: dict[str, Path]) -> None:
    """A write that fails half-way (file-size limit, like a full disk) leaves no partial file and no staging."""
    import resource

    limit = work["pt"].stat().st_size // 2

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    before = folder_state(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "lmconv", str(work["st"]), "out.pt", "--no-companions"], cwd=tmp_path,
                          capture_output=True, text=True, preexec_fn=small_files, timeout=300)
    assert_one_line_error(proc, 5, "out.pt")
    assert folder_state(tmp_path) == before
    assert staging_leftovers(tmp_path) == []


def test_stale_staging_of_a_dead_run_is_removed(tmp_path: Path, work: dict[str, Path]) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".lmconv-tmp-{int(dead.stdout)}-deadbeef"
    stale.mkdir()
    (stale / "half.pt").write_bytes(b"partial")
    run(work["st"], tmp_path / "out.safetensors")
    assert staging_leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- truncated inputs
def _truncations(src: Path, folder: Path, offsets: list[int]) -> list[tuple[int, int, str]]:
    """Cut ``src`` at each offset and convert it in-process; return (offset, exit code, stderr) of each."""
    from lmconv.cli import main

    results = []
    cut = folder / f"cut{src.suffix}"
    data = src.read_bytes()
    for n in offsets:
        cut.write_bytes(data[:n])
        before = folder_state(folder)
        err, out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = main([str(cut), str(folder / "out.safetensors" if src.suffix == ".pt" else folder / "out.pt")])
        assert out.getvalue() == ""
        assert folder_state(folder) == before, f"cut at {n}: output or staging left behind"
        results.append((n, code, err.getvalue()))
    return results


def _assert_all_truncation_errors(results: list[tuple[int, int, str]]) -> None:
    for n, code, err in results:
        assert code == 3, f"cut at {n}: exit {code}: {err!r}"
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("lmconv: error:") and "cut." in lines[0], f"cut at {n}: {err!r}"


def test_truncated_safetensors(tmp_path: Path, work: dict[str, Path]) -> None:
    """Every cut inside the length and header, and a spread of cuts through the data."""
    size = work["st"].stat().st_size
    header_end = 8 + int.from_bytes(work["st"].read_bytes()[:8], "little")
    offsets = [*range(0, 24), *range(24, header_end + 8, 7), *range(header_end + 8, size, max(1, size // 97)), size - 1]
    _assert_all_truncation_errors(_truncations(work["st"], tmp_path, offsets))


@pytest.mark.parametrize("which", ["small", "legacy", "pt"])
def test_truncated_pytorch(tmp_path: Path, work: dict[str, Path], which: str) -> None:
    """Zip and legacy checkpoints cut anywhere: a bad-input error (3), never 'unsafe' (4) or a crash (70).

    A legacy file is a row of pickles, so every cut in its first 512 bytes is tried (a cut inside a
    GLOBAL opcode names a global that does not exist, which must not read as a hostile pickle)."""
    src = work[which]
    size = src.stat().st_size
    if which == "legacy":
        offsets = [*range(1, min(size, 512)), *range(512, size, 13)]
    else:
        offsets = [*range(1, size, max(1, size // 150)), size - 22, size - 1]
    _assert_all_truncation_errors(_truncations(src, tmp_path, offsets))


@pytest.mark.parametrize("which,cut", [("st", 100), ("st", -1), ("pt", 500), ("legacy", -7)])
def test_truncated_input_via_subprocess(tmp_path: Path, work: dict[str, Path], which: str, cut: int) -> None:
    data = work[which].read_bytes()
    name = "cut" + work[which].suffix
    (tmp_path / name).write_bytes(data[:cut])
    _error_leaves_folder_untouched(tmp_path, name, "out.gguf" if which == "st" else "out.safetensors", code=3, mentions=(name,))


# ----------------------------------------------------------------------------- hostile pickles
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("payload", [_RunsShell, _OpensFile], ids=["os.system", "builtins.open"])
def test_pickle_that_runs_code_is_refused(tmp_path: Path, payload: type, legacy: bool) -> None:
    import torch

    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(3), "x": payload(marker)}, evil, _use_new_zipfile_serialization=not legacy)
    if not legacy:
        import zipfile

        with zipfile.ZipFile(evil) as zf:
            assert any(n.endswith("data.pkl") for n in zf.namelist())
    # The payload is live: an unrestricted load runs it (in a scratch folder, then cleaned up).
    probe = tmp_path / "probe"
    probe.mkdir()
    torch.save({"x": payload(probe / "RAN")}, probe / "p.pt", _use_new_zipfile_serialization=not legacy)
    ran = torch.load(probe / "p.pt", weights_only=False)["x"]
    if hasattr(ran, "close"):
        ran.close()
    assert (probe / "RAN").exists()

    line = _error_leaves_folder_untouched(tmp_path, "evil.pt", "out/" if legacy else "out.safetensors", code=4,
                                          mentions=("evil.pt",))
    assert "refused" in line
    assert not marker.exists(), "the pickle ran code"
    from lmconv.cli import main

    assert main(["inspect", str(evil), "--json"]) == 4
    assert not marker.exists()


# ----------------------------------------------------------------------------- commands and help
def test_help_and_version() -> None:
    proc = subprocess.run([sys.executable, "-m", "lmconv", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Usage" in proc.stdout and "Exit codes" in proc.stdout
    for cmd in ("convert", "inspect", "formats", "plugins"):
        assert cmd in proc.stdout
    proc = lmconv("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("lmconv ")


def test_default_command_is_convert(tmp_path: Path, work: dict[str, Path]) -> None:
    a = lmconv(work["st"], "a.safetensors", "--quiet", "--no-companions", cwd=tmp_path)
    b = lmconv("convert", work["st"], "b.safetensors", "--quiet", "--no-companions", cwd=tmp_path)
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    assert raw_tensors(tmp_path / "a.safetensors") == raw_tensors(work["st"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "b.safetensors"]


def test_summary_line_and_quiet(tmp_path: Path, work: dict[str, Path]) -> None:
    """stderr is a pipe here: no progress bar, just the one summary line; --quiet prints nothing at all."""
    loud = lmconv(work["st"], "loud.safetensors", "--dtype", "f16", cwd=tmp_path)
    assert loud.returncode == 0 and loud.stdout == ""
    lines = loud.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lmconv: wrote loud.safetensors"), loud.stderr
    assert "\r" not in loud.stderr and "\x1b" not in loud.stderr and "━" not in loud.stderr
    quiet = lmconv(work["st"], "quiet.safetensors", "--dtype", "f16", "--quiet", cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout == ""
    # values beyond f16's range become inf (IEEE rounding), without numpy warnings leaking to stderr
    import numpy as np
    from safetensors.numpy import save_file

    save_file({"w": np.array([1e5, 1.0, -7e4, np.nan], dtype=np.float32)}, str(tmp_path / "big.safetensors"))
    quiet = lmconv("big.safetensors", "big16.safetensors", "--dtype", "f16", "--quiet", cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout == ""
    assert raw_tensors(tmp_path / "big16.safetensors")["w"][2] == np.array([np.inf, 1, -np.inf, np.nan], np.float16).tobytes()


def _run_on_terminal(args: list[str], cwd: Path) -> tuple[int, bytes]:
    """Run lmconv with stderr on a pseudo-terminal and return (exit code, what reached the terminal)."""
    master, slave = pty.openpty()
    env = dict(os.environ, TERM="xterm", COLUMNS="120")
    proc = subprocess.Popen([sys.executable, "-m", "lmconv", *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=slave, env=env)
    os.close(slave)
    seen = b""
    while True:
        ready, _, _ = select.select([master], [], [], 120)
        if not ready:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    return proc.wait(timeout=120), seen


def test_progress_bar_only_on_a_terminal_and_never_with_quiet(tmp_path: Path, work: dict[str, Path]) -> None:
    code, seen = _run_on_terminal([str(work["st"]), "tty.safetensors"], tmp_path)
    # the bar is drawn on a terminal (so the checks below can tell silence from a bar)
    assert code == 0 and "━".encode() in seen and b"lmconv: wrote tty.safetensors" in seen
    code, seen = _run_on_terminal([str(work["st"]), "tty-quiet.safetensors", "--quiet"], tmp_path)
    assert code == 0 and seen == b""


# ----------------------------------------------------------------------------- what a checkpoint may look like
@pytest.fixture(scope="module")
def gpt2_state(tiny_gpt2: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_gpt2), dtype=torch.float32).state_dict()


@pytest.mark.parametrize("wrapper", ["state_dict", "model", "state_dict+config"])
def test_wrapped_checkpoints(tmp_path: Path, tiny_gpt2: Path, gpt2_state: dict[str, Any], wrapper: str) -> None:
    import torch

    config = json.loads((tiny_gpt2 / "config.json").read_text())
    obj: dict[str, Any] = {"epoch": 3, "step": torch.tensor(1000)}
    if wrapper == "model":
        obj.update(model=gpt2_state, optimizer={"lr": 0.1, "betas": [0.9, 0.99]})
    else:
        obj["state_dict"] = gpt2_state
    if wrapper.endswith("+config"):
        obj["config"] = config
    torch.save(obj, tmp_path / "ckpt.pt")
    out = tmp_path / "out"
    out.mkdir()
    run(tmp_path / "ckpt.pt", out / "m.safetensors")
    got = raw_tensors(out / "m.safetensors")
    assert set(got) == set(gpt2_state), "exactly the wrapped state dict, nothing from the wrapper"
    for k, v in gpt2_state.items():
        assert got[k] == ("float32", tuple(v.shape), v.contiguous().numpy().tobytes()), k
    if wrapper.endswith("+config"):
        assert json.loads((out / "config.json").read_text()) == config
        proc = lmconv("inspect", tmp_path / "ckpt.pt", "--json")
        assert proc.returncode == 0 and json.loads(proc.stdout)["architecture"] == config["architectures"][0]
    else:
        assert not (out / "config.json").exists()


def test_lone_checkpoint_picks_up_companions_and_config_flag(tmp_path: Path, tiny_llama: Path) -> None:
    lone = tmp_path / "lone"
    copy_companions(tiny_llama, lone)
    run(tiny_llama, lone / "model.pt")
    # beside it: config.json and tokenizer files travel into the output folder, byte for byte
    run(lone / "model.pt", f"{tmp_path / 'hf'}/")
    assert companion_bytes(tmp_path / "hf") == companion_bytes(tiny_llama)
    # --config points elsewhere and wins over the one beside the checkpoint
    other = tmp_path / "other"
    other.mkdir()
    cfg = json.loads((tiny_llama / "config.json").read_text())
    cfg["lmconv_test_marker"] = 42
    (other / "config.json").write_text(json.dumps(cfg, indent=1))
    run(lone / "model.pt", f"{tmp_path / 'hf2'}/", "--config", other / "config.json")
    assert (tmp_path / "hf2" / "config.json").read_bytes() == (other / "config.json").read_bytes()
    assert (tmp_path / "hf2" / "tokenizer.json").read_bytes() == (tiny_llama / "tokenizer.json").read_bytes()
    # a checkpoint alone in its folder has no config unless --config says where
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "model.pt").write_bytes((lone / "model.pt").read_bytes())
    bare = lmconv("inspect", alone / "model.pt", "--json")
    assert bare.returncode == 0 and json.loads(bare.stdout)["architecture"] is None
    told = lmconv("inspect", alone / "model.pt", "--json", "--config", other / "config.json")
    assert told.returncode == 0 and json.loads(told.stdout)["architecture"] == cfg["architectures"][0]
