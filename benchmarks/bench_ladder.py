"""A six-rung quant ladder against what publishing six GGUFs takes today (issue 19). One command:

    python benchmarks/bench_ladder.py [--quick] [--runs 1] [--source f32|bf16] [--no-warmup] [--markdown FILE]

Three ways to the same six files (q8_0, q6_k, q5_k_m, q4_k_m, q3_k_m, q2_k), each timed as subprocesses
(wall time, peak RSS from ``os.wait4``; a sequence counts its times together and its largest RSS):

  * ladder:    ``lmconv SRC out/ --quant q8_0,q6_k,q5_k_m,q4_k_m,q3_k_m,q2_k`` (one read of SRC);
  * separate:  six ``lmconv SRC out/NAME-TYPE.gguf --quant TYPE`` runs;
  * llama.cpp: ``convert_hf_to_gguf.py --outtype f32`` then six ``llama_model_quantize`` runs (all cores).

Then it checks what the ladder wrote: each file byte for byte against its separate run, and tensor for
tensor (types and bytes) against llama_model_quantize's file from the f32 GGUF. The models, the
reference converter and the measuring are ``benchmarks/run.py``'s (``--quick``: its small model).
It prints a table and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import (  # benchmarks/run.py, beside this file (after the sys.path line)
    CORES, MB, PY, QUANTIZE_SNIPPET, ROOT, Measure, build_models, child_env, lmconv, machine_line, measure,
    model_bytes, obtain_reference, run_once,
)

LADDER = ("q8_0", "q6_k", "q5_k_m", "q4_k_m", "q3_k_m", "q2_k")


def tensors(path: Path) -> dict[str, tuple[str, bytes]]:
    from gguf import GGUFReader

    return {t.name: (t.tensor_type.name, bytes(t.data)) for t in GGUFReader(path).tensors}


def cpu_seconds() -> float:
    """User + system time of every child waited for so far (the measured subprocesses)."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def measured(cmds: list[list[str]] | list[str], runs: int, warm: bool, **kw: object) -> tuple[Measure, float]:
    """run.py's ``measure``, and the CPU seconds of one run (the median wall time hides a busy machine;
    CPU time is what the work costs whatever else runs)."""
    before = cpu_seconds()
    m = measure(cmds, runs, warm, **kw)  # type: ignore[arg-type]
    return m, (cpu_seconds() - before) / (runs + (1 if warm else 0))


def largest_tensor(folder: Path) -> int:
    cfg = json.loads((folder / "config.json").read_text())
    return cfg["vocab_size"] * cfg["hidden_size"] * 4  # as f32, the type the ladder holds it in


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="run.py's small model (hidden 1024, 4 layers)")
    ap.add_argument("--runs", type=int, default=1, help="timed runs per measurement (median); default 1")
    ap.add_argument("--source", choices=("f32", "bf16"), default="f32", help="the HF model to start from")
    ap.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up run of each")
    ap.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / ".models")
    ap.add_argument("--markdown", type=Path, help="also write the table as Markdown to this file")
    args = ap.parse_args()
    load_before = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"
    args.cache.mkdir(parents=True, exist_ok=True)
    work = args.cache / "ladder-out"
    shutil.rmtree(work, ignore_errors=True)
    for sub in ("ladder", "separate", "ref"):
        (work / sub).mkdir(parents=True)
    src = build_models(args.cache, args.quick, False)[args.source]
    convert_py = obtain_reference(args.cache) / "convert_hf_to_gguf.py"
    warm, runs = not args.no_warmup, args.runs
    names = {q: f"{src.name}-{q.upper()}.gguf" for q in LADDER}

    print(f"ladder of {len(LADDER)} from {src.name} …", flush=True)
    outs = [work / "ladder" / names[q] for q in LADDER]
    ladder, ladder_cpu = measured(lmconv(str(src), str(work / "ladder"), "--quant", ",".join(LADDER), "--force",
                                         "--quiet"), runs, warm)
    print(f"  {ladder.time:.1f} s ({ladder_cpu:.1f} s CPU), {ladder.peak / MB:.0f} MB", flush=True)

    print("six separate lmconv runs …", flush=True)
    separate, separate_cpu = measured([lmconv(str(src), str(work / "separate" / names[q]), "--quant", q, "--force",
                                              "--quiet") for q in LADDER], runs, warm)
    print(f"  {separate.time:.1f} s ({separate_cpu:.1f} s CPU), {separate.peak / MB:.0f} MB", flush=True)

    print("convert_hf_to_gguf.py f32 + six llama_model_quantize …", flush=True)
    f32 = work / "ref" / "f32.gguf"
    env = child_env({"NO_LOCAL_GGUF": "1"})
    gguf_note = "PyPI gguf"
    try:  # as run.py: the PyPI gguf first, the script's bundled gguf-py when it is too old for the script
        run_once([PY, str(convert_py), str(src), "--outtype", "f32", "--outfile", str(f32)], env)
    except RuntimeError:
        env, gguf_note = child_env({"PYTHONPATH": str(convert_py.parent / "gguf-py")}), "bundled gguf-py"
    ref_cmds = [[PY, str(convert_py), str(src), "--outtype", "f32", "--outfile", str(f32)]]
    ref_cmds += [[PY, "-c", QUANTIZE_SNIPPET, str(f32), str(work / "ref" / names[q]), q.upper(), str(CORES)]
                 for q in LADDER]
    reference, reference_cpu = measured(ref_cmds, runs, warm, env=env)
    print(f"  {reference.time:.1f} s ({reference_cpu:.1f} s CPU), {reference.peak / MB:.0f} MB", flush=True)

    same_as_separate = [q for q, o in zip(LADDER, outs) if o.read_bytes() == (work / "separate" / names[q]).read_bytes()]
    same_as_llama = []
    for q, o in zip(LADDER, outs):
        ours, theirs = tensors(o), tensors(work / "ref" / names[q])
        if ours == theirs:
            same_as_llama.append(q)

    limit = 2 * largest_tensor(src) + 250 * MB
    rows = [("ladder (one lmconv run)", ladder, ladder_cpu, None, ""),
            ("six separate lmconv runs", separate, separate_cpu, (ladder.time / separate.time, ladder_cpu / separate_cpu),
             "≤ 0.6×"),
            (f"convert_hf_to_gguf f32 + six llama_model_quantize ({CORES} thr)", reference, reference_cpu,
             (ladder.time / reference.time, ladder_cpu / reference_cpu), "≤ 0.4×")]
    lines = [(f"Six-rung ladder {', '.join(LADDER)} from {src.name} ({model_bytes(src) / 1e9:.2f} GB, {args.source}); "
              f"median of {runs} run(s){' after one warm-up run' if warm else ''}; convert_hf_to_gguf.py on {gguf_note}."),
             "", "| way | wall s | CPU s | peak RSS | ladder ÷ this, wall | ladder ÷ this, CPU | target (wall) |",
             "|---|---|---|---|---|---|---|"]
    for label, m, cpu, ratio, target in rows:
        r = (f"{ratio[0]:.2f}", f"{ratio[1]:.2f}") if ratio else ("-", "-")
        lines.append(f"| {label} | {m.time:.1f} | {cpu:.1f} | {m.peak / MB:.0f} MB | {r[0]} | {r[1]} | {target} |")
    lines += ["", (f"- ladder peak RSS {ladder.peak / MB:.0f} MB; bound 2 × largest tensor (f32) + 250 MB = "
                   f"{limit / MB:.0f} MB, plus the blocks in flight (at most 64 MB per output)."),
              (f"- ladder outputs byte-identical to their separate lmconv run: {len(same_as_separate)}/{len(LADDER)} "
               f"({', '.join(same_as_separate) or 'none'})."),
              (f"- ladder outputs whose tensors (types and bytes) equal llama_model_quantize's from the f32 GGUF: "
               f"{len(same_as_llama)}/{len(LADDER)} ({', '.join(same_as_llama) or 'none'})."),
              "", machine_line(load_before)]
    table = "\n".join(lines)
    print()
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
