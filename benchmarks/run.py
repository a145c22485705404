"""Speed and memory of lmconv against the reference tools (issue 7). One command:

    python benchmarks/run.py [--runs 3] [--quick] [--big-runs 1] [--no-big] [--only OP,...] [--markdown FILE]

What it does:
  1. Builds, into a cache folder (``benchmarks/.models/``, gitignored; ``--cache`` moves it), from fixed
     seeds: a llama-shaped HF model (hidden 2048, 8 layers, 32 heads, 4 KV heads, vocab 32000,
     intermediate 5632: ~1.9 GB f32, two safetensors shards + index), a bf16 copy of it and a twice-as-deep
     one (16 layers, ~3.4 GB f32). The tokenizer is a SentencePiece model trained offline on the fixture
     texts (``tokenizer.model`` + ``tokenizer_config.json``), which llama.cpp's converter accepts.
     ``--quick`` builds a small model instead (hidden 1024, 4 layers) for a trial run.
  2. Obtains llama.cpp's ``convert_hf_to_gguf.py`` the way a user would: ``pip download --no-deps
     --no-binary :all: llama-cpp-python==0.3.36`` into the cache, unpacked there (never committed).
  3. Times every operation as one subprocess per measurement (wall time; peak RSS from ``os.wait4``),
     one untimed warm-up run of each tool first (the page cache cannot be dropped without root
     privileges we should not rely on; the warm-up makes every timed run read from a warm cache), then
     the median of ``--runs`` runs. Both tools get the same threads (all cores).
  4. Prints a table (and writes it as Markdown with ``--markdown``). It asserts nothing.

Reference tools: ``convert_hf_to_gguf.py`` run with this same Python and the PyPI ``gguf`` package
(``NO_LOCAL_GGUF=1``; if that fails the script's bundled gguf-py is used and the table says so),
``llama_cpp.llama_model_quantize`` (nthread = cores), gguf-py's single-threaded numpy quantiser
(``gguf.quants.quantize`` over the same tensors, in memory), and ``cp`` + ``sync``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
LLAMA_CPP_PYTHON = "0.3.36"
CORES = os.cpu_count() or 1
MB = 1e6


# ------------------------------------------------------------------------------------------ models
@dataclass(frozen=True)
class Shape:
    hidden: int = 2048
    layers: int = 8
    heads: int = 32
    kv_heads: int = 4
    vocab: int = 32000
    inter: int = 5632

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        h, kv = self.hidden, self.hidden // self.heads * self.kv_heads
        out = [("model.embed_tokens.weight", (self.vocab, h))]
        for i in range(self.layers):
            p = f"model.layers.{i}."
            out += [
                (p + "input_layernorm.weight", (h,)),
                (p + "self_attn.q_proj.weight", (h, h)),
                (p + "self_attn.k_proj.weight", (kv, h)),
                (p + "self_attn.v_proj.weight", (kv, h)),
                (p + "self_attn.o_proj.weight", (h, h)),
                (p + "post_attention_layernorm.weight", (h,)),
                (p + "mlp.gate_proj.weight", (self.inter, h)),
                (p + "mlp.up_proj.weight", (self.inter, h)),
                (p + "mlp.down_proj.weight", (h, self.inter)),
            ]
        return out + [("model.norm.weight", (h,)), ("lm_head.weight", (self.vocab, h))]

    def config(self, dtype: str) -> dict:
        return {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": self.hidden,
            "intermediate_size": self.inter, "num_hidden_layers": self.layers, "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads, "vocab_size": self.vocab, "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False,
            "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": dtype, "initializer_range": 0.02,
        }


def _tensor_data(name_index: int, shape: tuple[int, ...], seed: int):  # type: ignore[no-untyped-def]
    import numpy as np

    rng = np.random.default_rng([seed, name_index])
    if len(shape) == 1:
        return (1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    a = rng.standard_normal(shape, dtype=np.float32)
    a *= np.float32(0.02)
    return a


def write_hf(out: Path, shape: Shape, dtype: str, seed: int, tokenizer_dir: Path, max_shard: int = 1 << 30) -> None:
    """An HF folder: sharded safetensors written tensor by tensor (memory stays one tensor)."""
    import ml_dtypes
    import numpy as np

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    st_dtype, np_dtype, size = {"float32": ("F32", np.float32, 4), "bfloat16": ("BF16", ml_dtypes.bfloat16, 2)}[dtype]
    shards: list[list[tuple[int, str, tuple[int, ...]]]] = [[]]
    used = 0
    for i, (name, shp) in enumerate(shape.tensors()):
        n = size * int(np.prod(shp))
        if shards[-1] and used + n > max_shard:
            shards.append([])
            used = 0
        shards[-1].append((i, name, shp))
        used += n
    weight_map = {}
    total = 0
    for k, group in enumerate(shards, 1):
        fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        header: dict = {"__metadata__": {"format": "pt"}}
        off = 0
        for _, name, shp in group:
            n = size * int(np.prod(shp))
            header[name] = {"dtype": st_dtype, "shape": list(shp), "data_offsets": [off, off + n]}
            off += n
            weight_map[name] = fname
        total += off
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        with open(tmp / fname, "wb") as fh:
            fh.write(struct.pack("<Q", len(raw)) + raw)
            for i, name, shp in group:
                a = _tensor_data(i, shp, seed)
                if np_dtype is not np.float32:
                    a = a.astype(np_dtype)
                fh.write(memoryview(a.reshape(-1).view(np.uint8)))
                del a
    (tmp / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    (tmp / "config.json").write_text(json.dumps(shape.config(dtype), indent=2) + "\n")
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, tmp / f.name)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def build_tokenizer(out: Path) -> Path:
    """A SentencePiece BPE (byte fallback) trained offline on the fixture texts, as LlamaTokenizer files."""
    import io

    import sentencepiece as spm

    if (out / "tokenizer.model").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    texts = (ROOT / "fixtures" / "texts").glob("*.txt")
    lines = [ln for p in sorted(texts) for ln in p.read_text("utf-8").splitlines() if ln.strip()]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines * 8), model_writer=buf, model_type="bpe", vocab_size=1000,
        hard_vocab_limit=False, byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2,
        pad_id=-1, num_threads=1, minloglevel=2, seed_sentencepiece_size=100000, shuffle_input_sentence=False,
    )
    (out / "tokenizer.model").write_bytes(buf.getvalue())
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "model_max_length": 2048,
        "legacy": True,
    }, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, indent=2) + "\n")
    return out


def build_models(cache: Path, quick: bool, big: bool) -> dict[str, Path]:
    tok = build_tokenizer(cache / "tokenizer")
    base = Shape(hidden=1024, layers=4, heads=16, kv_heads=4, inter=2816) if quick else Shape()
    wanted = {"f32": (base, "float32"), "bf16": (base, "bfloat16")}
    if big:
        wanted["big-f32"] = (Shape(**{**base.__dict__, "layers": base.layers * 2}), "float32")
    paths = {}
    for key, (shape, dtype) in wanted.items():
        tag = f"{'quick' if quick else 'llama'}-h{shape.hidden}-l{shape.layers}-{dtype}"
        path = cache / tag
        if not (path / "config.json").exists():
            t = time.perf_counter()
            write_hf(path, shape, dtype, seed=7, tokenizer_dir=tok)
            print(f"built {path.name} in {time.perf_counter() - t:.0f} s", flush=True)
        paths[key] = path
    return paths


# ------------------------------------------------------------------------------------------ reference
def obtain_reference(cache: Path) -> Path:
    """llama.cpp's source tree from the llama-cpp-python sdist, downloaded and unpacked into the cache."""
    ref = cache / "ref"
    tree = ref / f"llama_cpp_python-{LLAMA_CPP_PYTHON}" / "vendor" / "llama.cpp"
    if (tree / "convert_hf_to_gguf.py").exists():
        return tree
    ref.mkdir(parents=True, exist_ok=True)
    sdist = ref / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
    if not sdist.exists():
        subprocess.run([PY, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q", "-d", str(ref),
                        f"llama-cpp-python=={LLAMA_CPP_PYTHON}"], check=True)
    with tarfile.open(sdist) as tf:
        tf.extractall(ref, filter="data")
    return tree


# ------------------------------------------------------------------------------------------ measuring
def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    env.update(extra or {})
    return env


def run_once(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[float, int, str]:
    """(wall seconds, peak RSS bytes, stderr tail) of one subprocess."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, env=env or child_env(), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = p.stdout.read() if p.stdout else b""  # type: ignore[union-attr]
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}:\n{out.decode(errors='replace')[-3000:]}")
    return wall, ru.ru_maxrss * 1024, out.decode(errors="replace")[-2000:]


@dataclass
class Measure:
    times: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)

    def add(self, t: float, r: int) -> None:
        self.times.append(t)
        self.rss.append(r)

    @property
    def time(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")

    @property
    def peak(self) -> int:
        return max(self.rss) if self.rss else 0


@dataclass
class Row:
    op: str
    ref_name: str
    mbytes: float  # source bytes processed, for MB/s
    ours: Measure = field(default_factory=Measure)
    ref: Measure = field(default_factory=Measure)
    target: str = ""
    note: str = ""


def lmconv(*args: str) -> list[str]:
    return [PY, "-m", "lmconv", *args]


def measure(cmds: list[list[str]] | list[str], runs: int, warm: bool, env: dict[str, str] | None = None,
            cleanup: list[Path] = ()) -> Measure:  # type: ignore[assignment]
    """A sequence of commands counts as one measurement: times add up, RSS is the largest."""
    seq = cmds if cmds and isinstance(cmds[0], list) else [cmds]
    m = Measure()
    for i in range(runs + (1 if warm else 0)):
        total, peak = 0.0, 0
        for c in seq:
            t, r, _ = run_once(c, env)  # type: ignore[arg-type]
            total += t
            peak = max(peak, r)
        for p in cleanup:
            if p.exists():
                p.unlink()
        if warm and i == 0:
            continue
        m.add(total, peak)
    return m


def model_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


QUANTIZE_SNIPPET = """
import ctypes, sys, llama_cpp
quiet = llama_cpp.llama_log_callback(lambda level, text, data: None)
llama_cpp.llama_log_set(quiet, ctypes.c_void_p())
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + sys.argv[3])
p.nthread = int(sys.argv[4])
rc = llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p))
sys.exit(rc)
"""

GGUFPY_SNIPPET = """
import sys, time, numpy as np
from gguf import GGUFReader, GGMLQuantizationType, quants
r = GGUFReader(sys.argv[1])
qt = GGMLQuantizationType[sys.argv[2]]
t = time.perf_counter()
for x in r.tensors:
    if len(x.shape) == 2:
        quants.quantize(np.asarray(x.data), qt)
print("KERNEL", time.perf_counter() - t)
"""


KERNEL_SNIPPET = """
import ctypes, glob, json, os, sys, time
from concurrent.futures import ThreadPoolExecutor
import numpy as np
import llama_cpp
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from lmconv.plugins.quantizers.kquants import KQUANTIZERS
lib = ctypes.CDLL(glob.glob(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so*"))[0])
lib.ggml_quantize_chunk.restype = ctypes.c_size_t
lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                    ctypes.c_int64, ctypes.c_void_p]
threads = int(sys.argv[1])
x = (np.random.default_rng(7).standard_normal((4096, 4096), dtype=np.float32) * np.float32(0.02))
parts = np.array_split(np.arange(x.shape[0]), threads)
pool = ThreadPoolExecutor(threads)
res = {}
for name, fn in KQUANTIZERS.items():
    qt = GGMLQuantizationType[name.upper()]
    bs, ts = GGML_QUANT_SIZES[qt]
    out = np.empty((x.shape[0], x.shape[1] // bs * ts), np.uint8)
    lib.ggml_quantize_init(int(qt))
    def c_part(rows):
        lib.ggml_quantize_chunk(int(qt), x[rows[0]:].ctypes.data, out[rows[0]:].ctypes.data, 0, len(rows), x.shape[1], None)
    def py_part(rows):
        return fn(x[rows[0]:rows[-1] + 1])
    best = {}
    for label, f in (("c", c_part), ("py", py_part)):
        ts_ = []
        for _ in range(3):
            t = time.perf_counter(); list(pool.map(f, parts)); ts_.append(time.perf_counter() - t)
        best[label] = min(ts_)
    same = bool(np.array_equal(np.concatenate([fn(x[p[0]:p[-1] + 1]) for p in parts]), out))
    res[name] = {"py": best["py"], "c": best["c"], "identical": same}
print("KERNELS" + json.dumps(res))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="timed runs per measurement (median); default 3")
    ap.add_argument("--big-runs", type=int, default=1, help="runs on the twice-as-large model (RSS growth check)")
    ap.add_argument("--no-big", action="store_true", help="skip the twice-as-large model")
    ap.add_argument("--quick", action="store_true", help="a small model (hidden 1024, 4 layers) for a trial run")
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated operation keys (see the table's first column)")
    ap.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / ".models")
    ap.add_argument("--markdown", type=Path, help="also write the table as Markdown to this file")
    ap.add_argument("--json", type=Path, help="also write the raw measurements as JSON")
    args = ap.parse_args()
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    cache = args.cache
    cache.mkdir(parents=True, exist_ok=True)
    work = cache / "out"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    warm = not args.no_warmup
    R = args.runs

    load_before = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"
    models = build_models(cache, args.quick, not args.no_big)
    tree = obtain_reference(cache)
    convert_py = tree / "convert_hf_to_gguf.py"
    ref_env = child_env({"NO_LOCAL_GGUF": "1"})
    # A whole conversion of a tiny model tells whether the PyPI gguf is new enough for the script.
    tiny = cache / "probe-tiny"
    if not (tiny / "config.json").exists():
        write_hf(tiny, Shape(hidden=256, layers=1, heads=4, kv_heads=2, vocab=1024, inter=512), "float32", 7,
                 cache / "tokenizer")
    probe = subprocess.run([PY, str(convert_py), str(tiny), "--outtype", "q8_0", "--outfile", str(work / "probe.gguf")],
                           env=ref_env, capture_output=True, text=True, check=False)
    gguf_note = "PyPI gguf (NO_LOCAL_GGUF=1)"
    if probe.returncode != 0:
        ref_env = child_env({"PYTHONPATH": str(tree / "gguf-py")})
        gguf_note = "bundled gguf-py (PyPI gguf failed: " + probe.stderr.strip().splitlines()[-1][:120] + ")"
    print(f"reference: {convert_py.relative_to(cache)} with {gguf_note}", flush=True)

    def ref_convert(src: Path, outtype: str, out: Path) -> list[str]:
        return [PY, str(convert_py), str(src), "--outtype", outtype, "--outfile", str(out)]

    rows: list[Row] = []

    def want(key: str) -> bool:
        return not only or key in only

    def log(row: Row) -> None:
        print(f"  {row.op}: lmconv {row.ours.time:.2f} s / {row.ours.peak / MB:.0f} MB; "
              f"{row.ref_name} {row.ref.time:.2f} s / {row.ref.peak / MB:.0f} MB", flush=True)

    # --- HF → GGUF f16 / bf16 / q8_0, from f32 and bf16 sources
    for src_key in ("f32", "bf16"):
        src = models[src_key]
        size = model_bytes(src) / MB
        for outtype in ("f16", "bf16", "q8_0"):
            key = f"hf-{src_key}→gguf-{outtype}"
            if not want(key):
                continue
            print(f"{key} …", flush=True)
            row = Row(key, "convert_hf_to_gguf.py", size, target="≤ 0.5× time, ≤ RSS")
            o, r = work / "ours.gguf", work / "ref.gguf"
            flag = ["--quant", "q8_0"] if outtype == "q8_0" else ["--dtype", outtype]
            row.ours = measure(lmconv(str(src), str(o), *flag, "--force", "--quiet"), R, warm, cleanup=[o])
            row.ref = measure(ref_convert(src, outtype, r), R, warm, env=ref_env, cleanup=[r])
            rows.append(row)
            log(row)

    # --- HF → q4_k_m in one step vs convert f32 + llama_model_quantize; and the quantiser alone
    src = models["f32"]
    f32_gguf = work / "f32.gguf"
    need_f32 = any(want(k) for k in ("hf-f32→gguf-q4_k_m", "gguf-f32→q4_k_m", "gguf-f32→q8_0"))
    if need_f32:
        run_once(ref_convert(src, "f32", f32_gguf), ref_env)
    quant_cmd = lambda i, o, t: [PY, "-c", QUANTIZE_SNIPPET, str(i), str(o), t, str(CORES)]
    if want("hf-f32→gguf-q4_k_m"):
        key = "hf-f32→gguf-q4_k_m"
        print(f"{key} …", flush=True)
        row = Row(key, "convert f32 + llama_model_quantize", model_bytes(src) / MB, target="≤ 1.0× time")
        o, tmp, r = work / "ours.gguf", work / "tmp-f32.gguf", work / "ref.gguf"
        row.ours = measure(lmconv(str(src), str(o), "--quant", "q4_k_m", "--force", "--quiet"), R, warm, cleanup=[o])
        row.ref = measure([ref_convert(src, "f32", tmp), quant_cmd(tmp, r, "Q4_K_M")], R, warm, env=ref_env,
                          cleanup=[tmp, r])
        rows.append(row)
        log(row)
    for qtype, ltype, target in (("q4_k_m", "Q4_K_M", "≤ 1.5× time"), ("q8_0", "Q8_0", "")):
        key = f"gguf-f32→{qtype}"
        if not want(key):
            continue
        print(f"{key} …", flush=True)
        row = Row(key, f"llama_model_quantize ({CORES} thr)", f32_gguf.stat().st_size / MB, target=target)
        o, r = work / "ours.gguf", work / "ref.gguf"
        row.ours = measure(lmconv(str(f32_gguf), str(o), "--quant", qtype, "--force", "--quiet"), R, warm, cleanup=[o])
        row.ref = measure(quant_cmd(f32_gguf, r, ltype), R, warm, cleanup=[r])
        if qtype == "q8_0":
            kern = [float(run_once([PY, "-c", GGUFPY_SNIPPET, str(f32_gguf), "Q8_0"])[2].split("KERNEL")[-1])
                    for _ in range(max(1, R))]
            row.note = f"gguf-py numpy q8_0 kernel alone (1 thread, in memory): {statistics.median(kern):.2f} s"
        rows.append(row)
        log(row)

    # --- the K-quant kernels alone, in memory, at 1 thread and at all cores, against ggml's C
    kernels: dict[int, dict] = {}
    if want("kernels"):
        print("kernels …", flush=True)
        for threads in sorted({1, CORES}):
            out = run_once([PY, "-c", KERNEL_SNIPPET, str(threads)])[2]
            kernels[threads] = json.loads(out.split("KERNELS", 1)[1].strip().splitlines()[0])

    # --- safetensors f32 → bf16 against cp + sync of the same bytes
    if want("st-f32→st-bf16"):
        key = "st-f32→st-bf16"
        print(f"{key} …", flush=True)
        index = src / "model.safetensors.index.json"
        row = Row(key, "cp + sync (same bytes)", model_bytes(src) / MB, target="≥ 60% of cp MB/s")
        o = work / "ours.safetensors"
        row.ours = measure(lmconv(str(index), str(o), "--dtype", "bf16", "--no-companions", "--force", "--quiet"),
                           R, warm, cleanup=[o])
        cpdir = work / "cp"
        cpdir.mkdir(exist_ok=True)
        shards = sorted(src.glob("*.safetensors"))
        row.ref = measure(["sh", "-c", f"cp {' '.join(map(str, shards))} {cpdir}/ && sync"], R, warm,
                          cleanup=[cpdir / p.name for p in shards])
        rows.append(row)
        log(row)

    # --- start-up: --help and inspect on a GGUF
    if want("startup") and (f32_gguf.exists() or need_f32):
        for key, cmd in (("lmconv --help", lmconv("--help")), ("lmconv inspect x.gguf", lmconv("inspect", str(f32_gguf)))):
            row = Row(key, "-", 0.0, target="< 0.3 s")
            row.ours = measure(cmd, max(R, 5), warm)
            rows.append(row)
            log(row)

    # --- RSS growth: the same conversions on the twice-as-large model
    growth: list[tuple[str, Measure, Measure]] = []
    if "big-f32" in models and (not only or "big" in only):
        big = models["big-f32"]
        for key, tail in (("hf→gguf-f16", ["--dtype", "f16"]), ("hf→gguf-q8_0", ["--quant", "q8_0"]),
                          ("hf→gguf-q4_k_m", ["--quant", "q4_k_m"]),
                          ("st-f32→st-bf16", ["--dtype", "bf16", "--no-companions"])):
            print(f"big: {key} …", flush=True)
            small_src = models["f32"]
            if key.startswith("st"):
                a, b = small_src / "model.safetensors.index.json", big / "model.safetensors.index.json"
                o = work / "ours.safetensors"
            else:
                a, b, o = small_src, big, work / "ours.gguf"
            ms = measure(lmconv(str(a), str(o), *tail, "--force", "--quiet"), args.big_runs, False, cleanup=[o])
            mb = measure(lmconv(str(b), str(o), *tail, "--force", "--quiet"), args.big_runs, False, cleanup=[o])
            growth.append((key, ms, mb))
            print(f"  {key}: {ms.peak / MB:.0f} MB → {mb.peak / MB:.0f} MB", flush=True)

    table = render(rows, growth, models, gguf_note, R, warm, kernels, load_before)
    print()
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    if args.json:
        args.json.write_text(json.dumps([{**r.__dict__, "ours": r.ours.__dict__, "ref": r.ref.__dict__} for r in rows],
                                        indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return 0


def render(rows: list[Row], growth: list, models: dict[str, Path], gguf_note: str, runs: int, warm: bool,
           kernels: dict[int, dict], load_before: str) -> str:
    def largest(folder: Path) -> int:
        cfg = json.loads((folder / "config.json").read_text())
        per = 4 if cfg["torch_dtype"] == "float32" else 2
        return cfg["vocab_size"] * cfg["hidden_size"] * per

    lines = [
        (f"Models: {', '.join(f'{k} = {p.name} ({model_bytes(p) / 1e9:.2f} GB)' for k, p in models.items())}; "
         f"median of {runs} run(s){' after one warm-up run' if warm else ''}; {CORES} threads; "
         f"convert_hf_to_gguf.py on {gguf_note}."),
        "",
        "| operation | lmconv s | reference | ref s | ratio | lmconv peak RSS | ref peak RSS | lmconv MB/s | ref MB/s | target |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = r.ours.time / r.ref.time if r.ref.times else float("nan")
        mbs = lambda m, r=r: f"{r.mbytes / m.time:.0f}" if r.mbytes and m.times else "-"
        ref_t = f"{r.ref.time:.2f}" if r.ref.times else "-"
        ref_rss = f"{r.ref.peak / MB:.0f} MB" if r.ref.times else "-"
        rat = f"{ratio:.2f}" if r.ref.times else "-"
        lines.append(f"| {r.op} | {r.ours.time:.2f} | {r.ref_name} | {ref_t} | {rat} | {r.ours.peak / MB:.0f} MB | "
                     f"{ref_rss} | {mbs(r.ours)} | {mbs(r.ref)} | {r.target} |")
    notes = [f"- {r.op}: {r.note}" for r in rows if r.note]
    if notes:
        lines += [""] + notes
    if growth:
        small = models["f32"]
        lim = 2 * largest(small) + 250 * MB
        lines += ["", (f"RSS growth (lmconv, {models['f32'].name} → {models['big-f32'].name}; "
                       f"limit 2 × largest tensor + 250 MB = {lim / MB:.0f} MB):"), "",
                  "| operation | peak RSS, model | peak RSS, 2× model | time, model | time, 2× model |", "|---|---|---|---|---|"]
        for key, a, b in growth:
            lines.append(f"| {key} | {a.peak / MB:.0f} MB | {b.peak / MB:.0f} MB | {a.time:.1f} s | {b.time:.1f} s |")
    if kernels:
        lines += ["", ("K-quant kernels alone (4096×4096 f32 in memory, best of 3; rows split over the threads): "
                       "lmconv's numpy vs ggml's C `ggml_quantize_chunk` (llama-cpp-python's libggml-base):"), "",
                  "| type | threads | lmconv s | ggml C s | ratio | bytes identical |", "|---|---|---|---|---|---|"]
        for threads, res in kernels.items():
            for name, r in res.items():
                lines.append(f"| {name} | {threads} | {r['py']:.3f} | {r['c']:.3f} | {r['py'] / r['c']:.2f} | "
                             f"{'yes' if r['identical'] else 'NO'} |")
    lines += ["", machine_line(load_before)]
    return "\n".join(lines)


def machine_line(load_before: str) -> str:
    import importlib.metadata as md

    cpu = "?"
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                cpu = ln.split(":", 1)[1].strip()
                break
        mem = next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal"))
        ram = f"{int(mem.split()[1]) / 1024**2:.1f} GiB"
    except (OSError, StopIteration):
        ram = "?"
    vers = []
    for dist in ("numpy", "ml_dtypes", "gguf", "llama_cpp_python", "torch", "safetensors"):
        try:
            vers.append(f"{dist} {md.version(dist)}")
        except md.PackageNotFoundError:
            pass
    load_after = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["?"]
    return (f"Machine: {cpu}, {CORES} cores (nproc), {ram} RAM; Linux {platform.release()}; "
            f"Python {platform.python_version()}; {', '.join(vers)}. Load average before/after: "
            f"{load_before} / {' '.join(load_after)}.")


if __name__ == "__main__":
    sys.exit(main())
