"""Peak memory of decoding already-quantised checkpoints (issue 18): FP8 block scales, GPTQ, AWQ,
compressed-tensors pack-quantized and MXFP4.

For each encoding, builds a checkpoint from a fixed seed whose largest weight dequantises to
``--rows × --cols`` float32 (MXFP4: ``--experts`` stacked experts of ``rows × cols / experts``), plus a
few smaller ones, then runs ``lmconv SRC out.safetensors --dtype f32`` (and ``--dtype bf16``) as one
subprocess each, and prints its wall time and peak RSS (``os.wait4``) against the budget
``2 × the largest dequantised tensor + 250 MB``. Asserts nothing: numbers only.

    python benchmarks/bench_encodings.py [--rows 8192] [--cols 8192] [--experts 8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MB = 1 << 20


def _save(folder: Path, tensors: dict[str, np.ndarray], qc: dict[str, Any]) -> Path:
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architectures": ["BenchModel"], "model_type": "bench",
                                                    "quantization_config": qc}))
    return folder


def shapes(rows: int, cols: int) -> dict[str, tuple[int, int]]:
    """The largest weight and a few smaller ones, as a decoder layer has."""
    return {"big.weight": (rows, cols), "a.weight": (rows // 4, cols), "b.weight": (rows, cols // 4)}


def fp8(folder: Path, rows: int, cols: int, rng: np.random.Generator) -> Path:
    import ml_dtypes

    t: dict[str, np.ndarray] = {}
    for name, (r, c) in shapes(rows, cols).items():
        w = rng.standard_normal((r, c), np.float32)
        amax = np.abs(w.reshape(r // 128, 128, c // 128, 128)).max((1, 3))
        inv = (amax / 448).astype(np.float32)
        q = w.reshape(r // 128, 128, c // 128, 128) / inv[:, None, :, None]
        t[name] = q.reshape(r, c).astype(ml_dtypes.float8_e4m3fn)
        t[name + "_scale_inv"] = inv
    return _save(folder, t, {"quant_method": "fp8", "weight_block_size": [128, 128], "activation_scheme": "dynamic"})


def _int4(r: int, c: int, g: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random 4-bit codes ``[r, c]``, zero points and float16 scales per group of ``g`` columns."""
    return (rng.integers(0, 16, (r, c), dtype=np.uint8), rng.integers(1, 16, (r, c // g), dtype=np.uint8),
            (rng.random((r, c // g), np.float32) * 0.01 + 1e-3).astype(np.float16))


def gptq(folder: Path, rows: int, cols: int, rng: np.random.Generator) -> Path:
    from tests.encodings.makers import pack_stream

    t: dict[str, np.ndarray] = {}
    for name, (r, c) in shapes(rows, cols).items():
        mod = name[: -len(".weight")]
        q, z, s = _int4(r, c, 128, rng)
        t[f"{mod}.qweight"] = pack_stream(q, 4).T.copy()
        t[f"{mod}.qzeros"] = pack_stream(((z.astype(np.int64) - 1) & 15).T, 4)
        t[f"{mod}.scales"] = s.T.copy()
        t[f"{mod}.g_idx"] = rng.permutation(np.arange(c) // 128).astype(np.int32)
    return _save(folder, t, {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": True, "sym": False})


def awq(folder: Path, rows: int, cols: int, rng: np.random.Generator) -> Path:
    from tests.encodings.makers import awq_words

    t: dict[str, np.ndarray] = {}
    for name, (r, c) in shapes(rows, cols).items():
        mod = name[: -len(".weight")]
        q, z, s = _int4(c, r, 1, rng)  # [in, out]; zeros and scales per group of 128 input rows
        t[f"{mod}.qweight"] = awq_words(q)
        t[f"{mod}.qzeros"] = awq_words(z[: c // 128])
        t[f"{mod}.scales"] = s[: c // 128]
    return _save(folder, t, {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"})


def compressed(folder: Path, rows: int, cols: int, rng: np.random.Generator) -> Path:
    from tests.encodings.makers import pack_stream

    t: dict[str, np.ndarray] = {}
    for name, (r, c) in shapes(rows, cols).items():
        mod = name[: -len(".weight")]
        q, _, s = _int4(r, c, 128, rng)
        t[f"{mod}.weight_packed"] = pack_stream(q, 4)
        t[f"{mod}.weight_scale"] = s.astype(np.float32)
        t[f"{mod}.weight_shape"] = np.array([r, c], np.int64)
    group = {"targets": ["Linear"], "format": "pack-quantized",
             "weights": {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": 128}}
    return _save(folder, t, {"quant_method": "compressed-tensors", "format": "pack-quantized",
                             "quantization_status": "compressed", "config_groups": {"group_0": group}})


def mxfp4(folder: Path, rows: int, cols: int, rng: np.random.Generator, experts: int) -> Path:
    t: dict[str, np.ndarray] = {}
    for name, (r, c) in shapes(rows // experts, cols).items():
        base = name[: -len(".weight")]
        t[base + "_blocks"] = rng.integers(0, 256, (experts, r, c // 32, 16), dtype=np.uint8)
        t[base + "_scales"] = rng.integers(118, 128, (experts, r, c // 32), dtype=np.uint8)
    return _save(folder, t, {"quant_method": "mxfp4"})


def measure(args: list[str]) -> tuple[float, int, str]:
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "lmconv", *args, "--quiet"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err = proc.stderr.read().decode(errors="replace")
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"lmconv {' '.join(args)} failed:\n{err}")
    return time.perf_counter() - start, ru.ru_maxrss * 1024, err


def make_all(folder: Path, rows: int, cols: int, experts: int) -> dict[str, Path]:
    builders = {"fp8 128×128": fp8, "gptq int4 act-order": gptq, "awq int4 gemm": awq,
                "ct pack-quantized": compressed,
                "mxfp4": lambda f, r, c, g: mxfp4(f, r, c, g, experts)}
    return {label: make(folder / f"src{i}", rows, cols, np.random.default_rng(i))
            for i, (label, make) in enumerate(builders.items())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=8192)
    ap.add_argument("--cols", type=int, default=8192)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--make", type=Path, help=argparse.SUPPRESS)  # (internal) build the checkpoints into a folder
    args = ap.parse_args()
    rows, cols = args.rows, args.cols
    if args.make:
        print(json.dumps({k: str(v) for k, v in make_all(args.make, rows, cols, args.experts).items()}))
        return 0
    largest = rows * cols * 4
    budget = 2 * largest + 250 * MB
    print(f"largest dequantised tensor: {largest / MB:.0f} MB (f32); budget 2× + 250 MB = {budget / MB:.0f} MB")
    print(f"{'encoding':<20} {'dtype':<6} {'wall s':>7} {'peak RSS':>10} {'of budget':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        # Built in another process: a child's peak RSS counts what its parent held when it forked.
        made = subprocess.run([sys.executable, __file__, "--make", str(d), "--rows", str(rows), "--cols", str(cols),
                               "--experts", str(args.experts)], check=True, capture_output=True, text=True)
        for i, (label, src) in enumerate(json.loads(made.stdout).items()):
            for dtype in ("f32", "bf16"):
                out = d / f"out{i}-{dtype}.safetensors"
                wall, rss, _ = measure([src, str(out), "--dtype", dtype, "--no-companions"])
                print(f"{label:<20} {dtype:<6} {wall:7.2f} {rss / MB:8.0f} MB {rss / budget:9.0%}", flush=True)
                out.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
