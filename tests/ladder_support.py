"""Models for the ladder and batch tests: llama-shaped HF folders written with numpy alone (the
benchmarks' own builder, ``benchmarks/run.py``), with tiny-llama's tokenizer; about a second each."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

from benchmarks.run import Shape, write_hf
from tests.conftest import FIXTURES

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def small_llama(folder: Path, *, dtype: str = "float32", hidden: int = 256, layers: int = 2, inter: int = 512,
                seed: int = 7) -> Path:
    """An HF folder of a llama whose rows are multiples of 256 (K-quants apply to every weight)."""
    tok = folder.parent / f".{folder.name}-tokenizer"
    tok.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy(FIXTURES / "tiny-llama" / name, tok / name)
    shape = Shape(hidden=hidden, layers=layers, heads=4, kv_heads=2, vocab=512, inter=inter)
    write_hf(folder, shape, dtype, seed, tok)
    shutil.rmtree(tok)
    return folder


def with_nan(src: Path, dst: Path, suffix: str) -> str:
    """A copy of the HF folder ``src`` at ``dst`` with one NaN in the first tensor whose name ends in ``suffix``."""
    import json

    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dst)
    weight_map = json.loads((dst / "model.safetensors.index.json").read_text())["weight_map"]
    name = next(k for k in weight_map if k.endswith(suffix))
    shard = dst / weight_map[name]
    weights = load_file(str(shard))
    weights[name][1, 2] = float("nan")
    save_file(weights, str(shard), metadata={"format": "pt"})
    return name


def kill_when_staging_appears(folder: Path, timeout: float = 120) -> list[int]:
    """In the background: SIGKILL the process whose staging folder first appears in ``folder``."""
    killed: list[int] = []

    def watch() -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end and not killed:
            for entry in folder.iterdir() if folder.is_dir() else ():
                if entry.name.startswith(".lmconv-tmp-"):
                    pid = int(entry.name.split("-")[2])
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            time.sleep(0.005)

    threading.Thread(target=watch, daemon=True).start()
    return killed
