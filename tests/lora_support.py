"""What the LoRA tests share: tiny base models (tests/families/support.py's, cached per recipe), peft
adapters trained on them for a few SGD steps from a fixed seed (so that every B is non-zero), and
logits from transformers + peft, from peft's own merge, and from llama.cpp with an adapter applied."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tests.families.support import CACHE, IDS, _recipe_key, build, llama_cpp_tree

SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "max_position_embeddings": 1024, "rms_norm_eps": 1e-5, "initializer_range": 0.1}
GEMMA3 = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 1024, "rms_norm_eps": 1e-6,
          "initializer_range": 0.1, "query_pre_attn_scalar": 16, "sliding_window": 4, "final_logit_softcapping": 30.0,
          "layer_types": ["sliding_attention", "full_attention"],
          "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
                              "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}}}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TRAIN = [5, 9, 31, 64, 2, 77, 18, 140, 23, 8, 250, 41, 12, 99, 301, 6]  # the few steps' batch (not IDS)
ADAPTER_VERSION = 1  # bump to retrain every cached adapter


def base(family: str) -> Path:
    """The tiny base model of a family (the families' tests build the same recipes)."""
    if family == "llama":
        return build("llama", config=SMALL)
    if family == "qwen2":
        return build("qwen2", config=SMALL, tokenizer="gpt2")
    if family == "gemma3":
        return build("gemma3_text", tokenizer="spm", config=GEMMA3, name="gemma3")
    raise ValueError(family)


@dataclass
class Trained:
    """A peft adapter folder and what transformers + peft compute with it (float32, on IDS)."""

    folder: Path
    base: Path
    logits: np.ndarray  # base + adapter, unmerged
    merged: np.ndarray  # peft's merge_and_unload
    plain: np.ndarray  # the base alone


def _peft_model(base_folder: Path, adapter: Path | None = None, lora: dict[str, Any] | None = None) -> Any:
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(str(base_folder), dtype=torch.float32)
    if adapter is not None:
        return PeftModel.from_pretrained(model, str(adapter)).eval()
    return get_peft_model(model, LoraConfig(**(lora or {})))


def peft_logits(base_folder: Path, adapter: Path, ids: Sequence[int] = IDS, *, merged: bool = False) -> np.ndarray:
    """transformers + peft (float32) with the adapter in ``adapter``, unmerged or merged by peft."""
    import torch

    model = _peft_model(base_folder, adapter)
    if merged:
        model = model.merge_and_unload()
    with torch.no_grad():
        return model(torch.tensor([list(ids)])).logits[0].double().numpy()


def trained(family: str, *, r: int, alpha: float, name: str, lr: float, steps: int = 3, seed: int = 0,
            **lora: Any) -> Trained:
    """A peft LoRA (``r``, ``alpha`` and more ``LoraConfig`` keys; targets q/k/v/o/gate/up/down unless
    given) on the family's tiny model, trained ``steps`` SGD steps on a fixed batch from ``seed``;
    cached per recipe like the base models."""
    import torch

    base_folder = base(family)
    cfg = {"r": r, "lora_alpha": alpha, "target_modules": TARGETS, "lora_dropout": 0.0, **lora}
    key = _recipe_key(family, base_folder.name, cfg, steps, lr, seed, ADAPTER_VERSION)
    out = CACHE / "adapters" / f"{name}-{key}"
    if not (out / "logits.npz").is_file():
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        torch.manual_seed(seed)
        model = _peft_model(base_folder, lora=cfg)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
        batch = torch.tensor([TRAIN])
        for _ in range(steps):
            model(batch, labels=batch).loss.backward()
            opt.step()
            opt.zero_grad()
        model.eval()
        (tmp / "adapter").mkdir(parents=True)
        model.save_pretrained(str(tmp / "adapter"))
        cfg_path = tmp / "adapter" / "adapter_config.json"
        settings = json.loads(cfg_path.read_text())
        settings["base_model_name_or_path"] = family  # no path: the tests give --base themselves
        cfg_path.write_text(json.dumps(settings, indent=2))
        ids = torch.tensor([IDS])
        with torch.no_grad():
            plain_model = _peft_model(base_folder, lora=None)
            plain = plain_model.get_base_model()(ids).logits[0].double().numpy()
        np.savez(tmp / "logits.npz", logits=peft_logits(base_folder, tmp / "adapter"),
                 merged=peft_logits(base_folder, tmp / "adapter", merged=True), plain=plain)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    saved = np.load(out / "logits.npz")
    return Trained(out / "adapter", base_folder, saved["logits"], saved["merged"], saved["plain"])


def llamacpp_lora_logits(base_gguf: Path, adapter_gguf: Path, ids: Sequence[int] = IDS) -> np.ndarray:
    """llama.cpp's logits of ``base_gguf`` with the LoRA adapter ``adapter_gguf`` applied (f32 KV cache)."""
    from llama_cpp import Llama

    n_ctx = max(64, len(ids) + 8)
    llm = Llama(model_path=str(base_gguf), lora_path=str(adapter_gguf), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True,
                type_k=0, type_v=0, verbose=False)
    try:
        llm.eval(list(ids))
        return np.array(llm.scores[: len(ids)], dtype=np.float64)
    finally:
        llm.close()


def gguf_contents(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A GGUF's tensors (numpy order) and keys, read with gguf-py."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    tensors = {t.name: np.array(t.data).reshape(tuple(int(n) for n in reversed(t.shape))) for t in reader.tensors}
    return tensors, {k: f.contents() for k, f in reader.fields.items()}


def reference_lora_ggufs(jobs: Sequence[tuple[Path, Path, Path]]) -> None:
    """llama.cpp's own ``convert_lora_to_gguf.py ADAPTER --base BASE --outtype f32`` for each
    ``(adapter, base, out)``, in one process, with its own gguf-py (from the llama-cpp-python sdist)."""
    tree = llama_cpp_tree()
    lines = [f"import runpy, sys\nsys.path[:0] = [{str(tree)!r}, {str(tree / 'gguf-py')!r}]"]
    for adapter, base_folder, out in jobs:
        lines += [f"sys.argv = ['convert_lora_to_gguf.py', {str(adapter)!r}, '--base', {str(base_folder)!r}, "
                  f"'--outfile', {str(out)!r}, '--outtype', 'f32']",
                  f"runpy.run_path({str(tree / 'convert_lora_to_gguf.py')!r}, run_name='__main__')"]
    proc = subprocess.run([sys.executable, "-c", "\n".join(lines)], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "NO_LOCAL_GGUF": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
