"""Quantisation speed: lmconv against llama.cpp's llama_model_quantize and gguf-py's numpy quantisers.

Builds a llama-shaped model from a fixed seed (rows of 256 so every type applies), writes it as an
f32 GGUF with lmconv, then for each type times, on the same file and the same thread count:
  * lmconv f32.gguf → out.gguf --quant TYPE --pure   (whole conversion, threads = cores)
  * llama_cpp.llama_model_quantize(pure=True, nthread = cores)
  * gguf-py's gguf.quants.quantize over the same 2-D tensors (single-threaded; only the types it has)
and prints the median of --runs runs with ratios. Asserts nothing: numbers only.

    python benchmarks/quantize.py [--runs 3] [--hidden 1024] [--layers 4]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TYPES = {  # lmconv preset → (llama.cpp ftype suffix, gguf-py type or None)
    "q8_0": ("Q8_0", "Q8_0"), "q4_0": ("Q4_0", "Q4_0"), "q5_1": ("Q5_1", "Q5_1"),
    "q2_k": ("Q2_K", None), "q3_k_s": ("Q3_K_S", None), "q4_k_s": ("Q4_K_S", None),
    "q5_k_s": ("Q5_K_S", None), "q6_k": ("Q6_K", None),
}


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=4)
    args = ap.parse_args()
    import llama_cpp
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFReader, quants

    from fixtures.make_fixtures import build_llama

    cores = os.cpu_count() or 1
    quiet = llama_cpp.llama_log_callback(lambda level, text, data: None)
    llama_cpp.llama_log_set(quiet, ctypes.c_void_p())  # llama.cpp's per-tensor log would drown the table
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        build_llama(d / "m", hidden_size=args.hidden, intermediate_size=args.hidden * 3, num_layers=args.layers,
                    num_heads=16, num_kv_heads=4, vocab_size=32000, tokenizer=False)
        src = d / "f32.gguf"
        subprocess.run([sys.executable, "-m", "lmconv", str(d / "m"), str(src), "--quiet"], check=True,
                       stderr=subprocess.DEVNULL)
        size_mb = src.stat().st_size / 1e6
        weights = [np.array(t.data) for t in GGUFReader(src).tensors if len(t.shape) == 2]
        print(f"model: {size_mb:.0f} MB f32 GGUF, {len(weights)} 2-D tensors, {cores} threads, median of {args.runs}")
        print(f"{'type':<8} {'lmconv s':>9} {'llama.cpp s':>12} {'ratio':>6} {'gguf-py s':>10} {'ratio':>6} {'lmconv MB/s':>12}")
        for name, (ftype, pytype) in TYPES.items():
            ours, theirs, py = [], [], []
            for _ in range(args.runs):
                out = d / "ours.gguf"
                ours.append(timed(lambda: subprocess.run(
                    [sys.executable, "-m", "lmconv", str(src), str(out), "--quant", name, "--pure", "--force", "--quiet"],
                    check=True)))
                params = llama_cpp.llama_model_quantize_default_params()
                params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
                params.nthread, params.pure = cores, True
                theirs.append(timed(lambda: llama_cpp.llama_model_quantize(
                    str(src).encode(), str(d / "theirs.gguf").encode(), ctypes.byref(params))))
                if pytype:
                    qt = GGMLQuantizationType[pytype]
                    py.append(timed(lambda: [quants.quantize(w, qt) for w in weights]))
            o, t = statistics.median(ours), statistics.median(theirs)
            p = f"{statistics.median(py):>10.2f} {statistics.median(py) / o:>6.2f}" if py else f"{'-':>10} {'-':>6}"
            print(f"{name:<8} {o:>9.2f} {t:>12.2f} {o / t:>6.2f} {p} {size_mb / o:>12.0f}")
    print("ratio columns: lmconv time ÷ llama.cpp time (lower is better for us); gguf-py time ÷ lmconv time (higher is better for us)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
