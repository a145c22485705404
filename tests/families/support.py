"""What every family's tests share: tiny HF models built offline, logits from transformers and
llama.cpp, llama.cpp's own converter, and the standard battery of checks a family must pass.

A tiny model is ``AutoModelForCausalLM.from_config`` of a small config (or a given class), seeded,
with every 1-D parameter perturbed (so a swapped or un-shifted norm shows), its output made peaked
(so top-1 agreement means something), put in eval mode (``from_config`` leaves dropout on), saved
with ``save_pretrained`` beside a tokenizer trained offline. Models are built once per test
session, in a cache keyed by their recipe.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("LMCONV_TEST_CACHE", Path.home() / ".cache" / "lmconv-tests"))
LLAMA_CPP_PYTHON = "0.3.36"
IDS = [3, 17, 42, 99, 120, 7, 250, 11, 33, 2, 77, 150, 9, 301, 64, 128]
LOGIT_STD = 12.0
#: llama.cpp on an f16/q8_0 GGUF against transformers on that GGUF's dequantised weights (tests/test_gguf.py)
QUANT_LOGIT_BOUNDS = {"f16": 1e-2, "bf16": 1e-2, "q8_0": 6e-2}


# ============================================================================ tokenizers
def tokenizer_folder(kind: str) -> Path:
    """A folder of HF tokenizer files, made once: ``llama3`` and ``gpt2`` are the fixtures' byte-level
    BPEs (512 tokens), ``spm`` a SentencePiece BPE with byte fallback (tokenizer.model + tokenizer.json,
    as transformers' LlamaTokenizer conversion writes them; 512 pieces)."""
    out = CACHE / "tokenizers" / kind
    if (out / "tokenizer_config.json").is_file():
        return out
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if kind in ("llama3", "gpt2"):
        from fixtures.make_fixtures import save_tokenizer, train_tokenizer

        save_tokenizer(train_tokenizer(kind), tmp, kind)  # type: ignore[arg-type]
    elif kind == "spm":
        _spm_tokenizer(tmp)
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _spm_tokenizer(out: Path, vocab_size: int = 1024) -> None:
    """A SentencePiece BPE with byte fallback (the training text needs about 900 characters, so 1024
    pieces), and the tokenizer.json / tokenizer_config.json transformers 5 makes of it."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    from fixtures.make_fixtures import TRAIN_TEXT

    lines = TRAIN_TEXT.read_text(encoding="utf-8").splitlines() * 4
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf, model_type="bpe",
                                   vocab_size=vocab_size, byte_fallback=True, character_coverage=1.0, minloglevel=2,
                                   num_threads=1, pad_id=0, eos_id=1, bos_id=2, unk_id=3, split_digits=True)
    (out / "tokenizer.model").write_bytes(buf.getvalue())
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "pad_token": "<pad>", "add_bos_token": True, "add_eos_token": False, "legacy": False}))
    AutoTokenizer.from_pretrained(str(out)).save_pretrained(str(out))
    (out / "tokenizer.model").write_bytes(buf.getvalue())


def tokenizer_ids(folder: Path) -> dict[str, Any]:
    """vocab size and special ids of a tokenizer folder (for the model config)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    return {"vocab_size": len(tok), "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id}


# ============================================================================ tiny models
def _recipe_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build(model_type: str, *, tokenizer: str = "llama3", arch: str | None = None, seed: int = 0,
          vocab_size: int | None = None, config: dict[str, Any] | None = None,
          customize: Callable[[Any], None] | None = None, name: str | None = None) -> Path:
    """A tiny random HF folder of ``model_type`` (``AutoConfig.for_model``) with the given config
    keys, built once per recipe into the test cache. ``arch`` picks the model class by name (default:
    ``AutoModelForCausalLM``); ``customize(model)`` runs on the initialised model before it is peaked
    and saved. The vocabulary is the tokenizer's unless ``vocab_size`` pads it."""
    key = _recipe_key(model_type, tokenizer, arch, seed, vocab_size, config, name, BUILD_VERSION)
    out = CACHE / "models" / f"{name or model_type}-{key}"
    if (out / "config.json").is_file():
        return out
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()
    tok = tokenizer_folder(tokenizer)
    ids = tokenizer_ids(tok)
    kw = {**{k: v for k, v in ids.items() if v is not None}, **(config or {})}
    if vocab_size is not None:
        kw["vocab_size"] = vocab_size
    cfg = AutoConfig.for_model(model_type, **kw)
    torch.manual_seed(seed)
    model = getattr(transformers, arch)(cfg) if arch else AutoModelForCausalLM.from_config(cfg)
    model.eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            if param.dim() == 1:
                param.add_(torch.randn(param.shape, generator=gen) * 0.1)
        if customize is not None:
            customize(model)
        _peak(model)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    for f in tok.iterdir():
        if f.is_file():
            shutil.copy(f, tmp / f.name)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


BUILD_VERSION = 2  # bump to rebuild every cached model


def _peak(model: Any) -> None:
    """Scale the output projection (or, when tied, the embedding it shares) until the logits over the
    vocabulary have a standard deviation of about LOGIT_STD: a flat softmax makes top-1 agreement noise."""
    import torch

    out = model.get_output_embeddings()
    weight = out.weight
    ids = torch.tensor([IDS[:8]]) % weight.shape[0]
    for _ in range(3):
        std = float(model(ids).logits.float().std())
        if not np.isfinite(std) or std == 0:
            return
        weight.mul_(LOGIT_STD / std)


# ============================================================================ logits
def hf_logits(folder: Path, ids: Sequence[int] = IDS, *, dtype: str = "float32", arch: str | None = None) -> np.ndarray:
    """transformers' logits of the model in ``folder`` (eval mode), as float64."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    cls = getattr(transformers, arch) if arch else AutoModelForCausalLM
    model = cls.from_pretrained(str(folder), dtype=getattr(torch, dtype)).eval()
    with torch.no_grad():
        return model(torch.tensor([list(ids)])).logits[0].double().numpy()


def llamacpp_logits(gguf: Path, ids: Sequence[int] = IDS) -> np.ndarray:
    from lmconv.plugins.formats.gguf.runtime import llamacpp_logits as run

    return run(str(gguf), list(ids))


def rel(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b|."""
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def convert(*args: object) -> Path:
    """``lmconv ARGS --quiet`` in-process; it must succeed. Returns the target path."""
    from lmconv.cli import main

    code = main([str(a) for a in args] + ["--quiet"])
    assert code == 0, f"lmconv {' '.join(map(str, args))} exited {code}"
    return Path(str(args[1]).rstrip("/"))


# ============================================================================ llama.cpp's converter
def llama_cpp_tree() -> Path:
    """llama.cpp's source tree from the llama-cpp-python sdist (pip download, unpacked once)."""
    tree = CACHE / f"llama_cpp_python-{LLAMA_CPP_PYTHON}" / "vendor" / "llama.cpp"
    if (tree / "convert_hf_to_gguf.py").is_file():
        return tree
    dl = CACHE / "sdist"
    dl.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                    f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", str(dl)], check=True)
    with tarfile.open(dl / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz") as tf:
        tf.extractall(CACHE, filter="data")
    return tree


def reference_ggufs(jobs: Sequence[tuple[Path, Path, str | None]], outtype: str = "f32") -> None:
    """llama.cpp's ``convert_hf_to_gguf.py FOLDER --outtype f32`` for each ``(folder, out, pre)``, in one
    process (importing its torch and transformers once), with its own gguf-py. Its BPE pre-tokenizer
    check knows only the hashes of published tokenizers, so for our trained ones ``pre`` names the
    llama.cpp pre-tokenizer (None: its own detection, e.g. for SentencePiece): what is tested is its
    tensors and keys, not its tokenizer detection."""
    tree = llama_cpp_tree()
    lines = [f"import sys\nsys.path[:0] = [{str(tree)!r}, {str(tree / 'gguf-py')!r}]",
             "import conversion.base as b", "import convert_hf_to_gguf as c", "real = b.TextModel.get_vocab_base_pre"]
    for folder, out, pre in jobs:
        lines += [f"b.TextModel.get_vocab_base_pre = lambda self, tokenizer: {pre!r}" if pre else
                  "b.TextModel.get_vocab_base_pre = real",
                  f"sys.argv = ['convert_hf_to_gguf.py', {str(folder)!r}, '--outfile', {str(out)!r}, '--outtype', {outtype!r}]",
                  "c.main()"]
    proc = subprocess.run([sys.executable, "-c", "\n".join(lines)], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "NO_LOCAL_GGUF": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]


def reference_gguf(folder: Path, out: Path, *, pre: str | None = None, outtype: str = "f32") -> Path:
    """One :func:`reference_ggufs` job."""
    reference_ggufs([(folder, out, pre)], outtype)
    return out


def gguf_layout(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, object]]:
    """A GGUF's tensor names and shapes (numpy order), and its architecture's keys."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    arch = reader.fields["general.architecture"].contents()
    keys = {k: f.contents() for k, f in reader.fields.items() if k.startswith(f"{arch}.")}
    return {t.name: tuple(int(n) for n in reversed(t.shape)) for t in reader.tensors}, {"arch": arch, **keys}


def assert_same_layout(ours: Path, reference: Path) -> dict[str, object]:
    """Our GGUF has llama.cpp's tensor names and shapes, and every key of the architecture that its
    converter writes, with the same value (we may write more). Returns llama.cpp's keys."""
    import pytest

    ref_tensors, ref_keys = gguf_layout(reference)
    our_tensors, our_keys = gguf_layout(ours)
    assert our_tensors == ref_tensors
    for key, value in ref_keys.items():
        assert key in our_keys, f"{key} is missing from our GGUF"
        assert our_keys[key] == pytest.approx(value), key
    return ref_keys


# ============================================================================ the battery
@dataclass
class Figures:
    """What the battery measured, for a family's own assertions and for the closing note."""

    llamacpp_vs_hf: float = 0.0
    numpy_vs_hf: float = 0.0
    back_vs_hf: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


def battery(folder: Path, tmp: Path, *, ids: Sequence[int] = IDS, llama_tol: float = 1e-4, arch: str | None = None,
            back_arch: str | None = None, quants: Sequence[str] = ("f16", "q8_0")) -> Figures:
    """The checks every family passes (the families issue's "done means"):

    1. HF → GGUF f32: llama.cpp's logits (f32 KV cache) within ``llama_tol`` of transformers', same top-1;
    2. ``verify --logits``: lmconv's numpy forward within 1e-4 of transformers, and the GGUF read back
       agrees with the source tensor by tensor (exact, or within the bound of a lossy rule);
    3. GGUF → HF: transformers loads the folder, logits within 1e-5 of the original's, and
       HF → GGUF → HF is bit-exact for every tensor an exact rule carries;
    4. f16 and q8_0 GGUFs: every tensor within its bound, llama.cpp runs them, and its logits are
       within the existing bounds (:data:`QUANT_LOGIT_BOUNDS`, as tests/test_gguf.py) of transformers on
       the weights dequantised from that very GGUF (the fair comparison: llama.cpp also rounds the
       activations it multiplies with q8_0 weights), with top-1 agreement of at least 90 %.
    """
    from lmconv import read_model
    from lmconv.verify import verify_models
    from lmconv.verify.logits import forward

    ids = list(ids)
    fig = Figures()
    want = hf_logits(folder, ids, arch=arch)
    gguf = convert(folder, tmp / "f32.gguf")
    got = llamacpp_logits(gguf, ids)
    fig.llamacpp_vs_hf = rel(got, want)
    assert fig.llamacpp_vs_hf <= llama_tol, f"llama.cpp vs transformers: {fig.llamacpp_vs_hf:.2e}"
    assert np.array_equal(got.argmax(-1), want.argmax(-1)), "top-1 differs between llama.cpp and transformers"

    src = read_model(folder)
    fig.numpy_vs_hf = rel(forward(src, ids, dtype=np.float64), want)
    assert fig.numpy_vs_hf <= 1e-4, f"lmconv's forward vs transformers: {fig.numpy_vs_hf:.2e}"
    report = verify_models(src, read_model(gguf), logits=True, ids=ids, logits_dtype=np.float64)
    assert report.ok, report.summary()
    assert report.logits is not None and report.logits["rel_max_diff"] <= 1e-5, report.summary()

    back = convert(gguf, f"{tmp / 'back'}/")
    fig.back_vs_hf = rel(hf_logits(back, ids, arch=back_arch or arch), want)
    assert fig.back_vs_hf <= 1e-5, f"GGUF → HF vs the original: {fig.back_vs_hf:.2e}"
    # A safetensors file keeps no history: the lossy layout steps the GGUF's tensors went through (a
    # norm stored as 1 + w) are what the folder read back may show, within their bounds.
    lossy = {t.name: [h for h in t.history if not h.startswith(("cast:", "quant:", "dequant:"))] for t in read_model(gguf)}
    report = verify_models(src, read_model(back), assume={n: s for n, s in lossy.items() if s})
    assert report.ok, report.summary()
    exact = [t for t in report.tensors if not t.steps]
    assert all(t.status == "exact" and t.bitwise for t in exact), [t.name for t in exact if not t.bitwise]

    for q in quants:
        qpath = convert(folder, tmp / f"{q}.gguf", *(("--dtype", q) if q in ("f16", "bf16") else ("--quant", q)))
        report = verify_models(src, read_model(qpath))
        assert report.ok, f"{q}: {report.summary()}"
        deq = convert(qpath, f"{tmp / f'{q}-deq'}/")
        got_q, want_q = llamacpp_logits(qpath, ids), hf_logits(deq, ids, arch=back_arch or arch)
        fig.extra[q] = rel(got_q, want_q)
        assert fig.extra[q] <= QUANT_LOGIT_BOUNDS[q], f"{q}: llama.cpp vs transformers on the same weights: {fig.extra[q]:.2e}"
        assert float(np.mean(got_q.argmax(-1) == want_q.argmax(-1))) >= 0.9, f"{q}: top-1 agreement"
    return fig
