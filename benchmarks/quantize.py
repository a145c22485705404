"""Quantisation speed: lmconv against llama.cpp's llama_model_quantize and gguf-py's numpy quantisers.

Builds a llama-shaped model from a fixed seed (rows of 256 so every type applies), writes it as an
f32 GGUF with lmconv, then for each type times, on the same file and the same thread count:
  * lmconv f32.gguf → out.gguf --quant TYPE --pure   (whole conversion, threads = cores)
  * llama_cpp.llama_model_quantize(pure=True, nthread = cores)
  * gguf-py's gguf.quants.quantize over the same 2-D tensors (single-threaded; only the types it has)
and prints the median of --runs runs with ratios.

Then the kernel table (--kernels, the default): every type lmconv quantises, with an importance matrix
(lognormal weights, as llama-imatrix's span a few decades) and without one where ggml allows it, our
numpy kernel against ggml's ``ggml_quantize_chunk`` on the same 4M-element matrix, on 1 thread and on
2 (the rows split in two halves, each on its own Python thread for us and through ctypes for ggml). Ours
at 1 thread runs in-process; at 2 each thread hands its half to a worker process, as the pipeline does
(plugins/quantizers/offload.py), so the column includes pickling the rows there and back.
ggml builds its lattice tables on a type's first call; a warm-up call keeps that out of the timings.

With --one-step: HF folder → iq4_xs GGUF with an importance matrix, lmconv in one command against
llama.cpp's two (convert_hf_to_gguf.py, then llama-quantize --imatrix), built as the tests build them.
Asserts nothing: numbers only.

    python benchmarks/quantize.py [--runs 3] [--hidden 1024] [--layers 4] [--no-model] [--one-step]
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
    ap.add_argument("--no-model", action="store_true", help="skip the whole-model table")
    ap.add_argument("--no-kernels", action="store_true", help="skip the kernel table")
    ap.add_argument("--one-step", action="store_true", help="also time HF → iq4_xs against convert + llama-quantize")
    ap.add_argument("--types", default="", help="kernel table: only these types (comma-separated)")
    args = ap.parse_args()
    if not args.no_kernels:
        kernel_table(args.runs, [t for t in args.types.split(",") if t])
    if args.one_step:
        one_step(args.runs)
    if args.no_model:
        return 0
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


KERNEL_TYPES = ["q4_0", "q4_1", "q5_0", "q5_1", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K",
                "iq4_nl", "iq4_xs", "iq3_s", "iq3_xxs", "iq2_s", "iq2_xs", "iq2_xxs", "iq1_s", "iq1_m"]
NEEDS_IMATRIX = {"iq2_xxs", "iq2_xs", "iq1_s"}


def kernel_table(runs: int, only: list[str]) -> None:
    """Our numpy kernels against ggml_quantize_chunk, 1 and 2 threads, with and without an imatrix."""
    import threading

    import numpy as np
    from gguf import GGMLQuantizationType
    from lmconv.plugins.quantizers import offload
    from lmconv.registry import get_registry

    from tests.test_kquants import _ggml_base

    lib = _ggml_base()
    reg = get_registry()
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((1024, 4096)) * 0.02).astype(np.float32)
    w = np.exp(rng.standard_normal(4096) * 1.5).astype(np.float32)
    halves = (x[:512], x[512:])

    def ggml(name: str, rows: np.ndarray, imatrix: np.ndarray | None) -> None:
        qt = int(GGMLQuantizationType[name.upper()])
        out = np.empty((rows.shape[0], lib.ggml_row_size(qt, rows.shape[1])), np.uint8)
        lib.ggml_quantize_chunk(qt, rows.ctypes.data, out.ctypes.data, 0, rows.shape[0], rows.shape[1],
                                None if imatrix is None else imatrix.ctypes.data)

    def ours(name: str, rows: np.ndarray, imatrix: np.ndarray | None) -> None:
        q = reg.quantizer(name).quantize
        q(rows) if imatrix is None else q(rows, imatrix=imatrix)

    def ours_in_process(name: str, rows: np.ndarray, imatrix: np.ndarray | None) -> None:
        os.environ[offload.ENV] = "0"  # one thread: the kernel runs right here
        try:
            ours(name, rows, imatrix)
        finally:
            os.environ.pop(offload.ENV)

    def two(fn, name: str, imatrix: np.ndarray | None) -> None:  # type: ignore[no-untyped-def]
        ts = [threading.Thread(target=fn, args=(name, h, imatrix)) for h in halves]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    print(f"kernels: {x.size / 1e6:.1f}M elements (1024 × 4096, N(0, 0.02)), imatrix lognormal(σ=1.5), median of {runs}")
    print(f"{'type':<8} {'imatrix':<7} {'ours 1T ms':>10} {'ggml 1T ms':>10} {'ratio':>6} {'ours 2T ms':>10} "
          f"{'ggml 2T ms':>10} {'ratio':>6}")
    for name in only or KERNEL_TYPES:
        for imatrix in ((w,) if name in NEEDS_IMATRIX else (w, None)):
            ggml(name, x[:1], imatrix if imatrix is not None else None)  # ggml builds its lattice tables
            ours_in_process(name, x[:1], imatrix)
            two(ours, name, imatrix)  # both workers started and their lattice tables built
            cols = []
            for threads in (1, 2):
                def run(f, name=name, imatrix=imatrix, threads=threads):  # type: ignore[no-untyped-def]
                    return f(name, x, imatrix) if threads == 1 else two(f, name, imatrix)

                mine = ours_in_process if threads == 1 else ours
                times: dict[str, list[float]] = {"ours": [], "ggml": []}
                for _ in range(runs):
                    times["ours"].append(timed(lambda run=run, mine=mine: run(mine)))
                    times["ggml"].append(timed(lambda run=run: run(ggml)))
                o, g = statistics.median(times["ours"]), statistics.median(times["ggml"])
                cols.append(f"{o * 1000:>10.0f} {g * 1000:>10.0f} {o / g:>6.2f}")
            print(f"{name:<8} {'yes' if imatrix is not None else 'no':<7} {cols[0]} {cols[1]}", flush=True)
    print("ratio: our time ÷ ggml's (lower is better for us)")


def one_step(runs: int) -> None:
    """HF → iq4_xs with an importance matrix: lmconv in one step against convert_hf_to_gguf.py + llama-quantize,
    on benchmarks/run.py's small model (hidden 1024, 4 layers, 0.44 GB f32; a SentencePiece tokenizer that
    llama.cpp's converter accepts), built into benchmarks/.models/ as run.py builds it."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from run import build_models, child_env, obtain_reference

    from tests.llamacpp_tools import llamacpp_tools

    tools = llamacpp_tools()
    cache = ROOT / "benchmarks" / ".models"
    cache.mkdir(parents=True, exist_ok=True)
    src = build_models(cache, True, False)["f32"]
    tree = obtain_reference(cache)
    env = child_env({"NO_LOCAL_GGUF": "1", "PYTHONPATH": str(tree / "gguf-py")})
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        f32 = d / "f32.gguf"
        subprocess.run([sys.executable, "-m", "lmconv", str(src), str(f32), "--quiet"], check=True)
        imatrix = d / "imatrix.gguf"
        subprocess.run([str(tools["llama-imatrix"]), "-m", str(f32), "-f", str(ROOT / "fixtures" / "texts" / "multilingual.txt"),
                        "-o", str(imatrix), "-c", "128", "--no-ppl"], check=True, capture_output=True)
        ours, theirs = [], []
        for _ in range(runs):
            ours.append(timed(lambda: subprocess.run(
                [sys.executable, "-m", "lmconv", str(src), str(d / "ours.gguf"), "--quant", "iq4_xs",
                 "--imatrix", str(imatrix), "--force", "--quiet"], check=True)))

            def reference() -> None:
                subprocess.run([sys.executable, str(tree / "convert_hf_to_gguf.py"), str(src), "--outfile",
                                str(d / "ref-f32.gguf"), "--outtype", "f32"], check=True, capture_output=True, env=env)
                subprocess.run([str(tools["llama-quantize"]), "--imatrix", str(imatrix), str(d / "ref-f32.gguf"),
                                str(d / "theirs.gguf"), "IQ4_XS", str(os.cpu_count() or 1)], check=True, capture_output=True)

            theirs.append(timed(reference))
        from gguf import GGUFReader

        def by_name(path: Path) -> dict[str, tuple[int, bytes]]:
            return {t.name: (int(t.tensor_type), bytes(t.data)) for t in GGUFReader(path).tensors}

        same = by_name(d / "ours.gguf") == by_name(d / "theirs.gguf")
        o, t = statistics.median(ours), statistics.median(theirs)
        print(f"HF → iq4_xs (+imatrix), {src.name}: lmconv {o:.2f}s, convert_hf_to_gguf.py + llama-quantize "
              f"{t:.2f}s, ratio {o / t:.2f}; tensors identical: {'yes' if same else 'NO'} (median of {runs})")


if __name__ == "__main__":
    sys.exit(main())
