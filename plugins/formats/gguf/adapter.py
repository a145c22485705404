"""GGUF LoRA adapters, as llama.cpp loads them on top of a base GGUF (``llama_adapter_lora_init``).

What llama.cpp expects (src/llama-adapter.cpp, src/llama-graph.cpp):

* ``general.type = adapter``, ``adapter.type = lora``, ``general.architecture`` equal to the base's;
* ``adapter.lora.alpha`` (f32), one for the whole adapter. Each pair is scaled by ``alpha / rank``, the
  rank read from the pair's own ``lora_b``; ``alpha = 0`` means a scale of 1. There is no per-tensor
  alpha and no rank-stabilised scaling. lmconv writes the alpha that leaves most pairs as they are
  (``alpha · sqrt(r)`` for an rsLoRA adapter of rank r); a pair whose scale still differs
  (``rank_pattern`` with rsLoRA, ``alpha_pattern``) gets its ``lora_b`` multiplied by the ratio (one
  float32 rounding, the same size as storing alpha in f32);
* tensors ``<base tensor name>.lora_a`` and ``.lora_b`` only (``*_norm.weight`` is skipped, anything
  else refused). In numpy order ``lora_a`` is ``[r, in]`` and ``lora_b`` ``[out, r]``, peft's
  orientation, stacked to ``[experts, r, in]`` / ``[experts, out, r]`` for stacked experts; except
  ``token_embd.weight``, whose rows are looked up: ``lora_a [vocab, r]``, ``lora_b [hidden, r]``;
* no whole tensors: an adapter that replaces one (``modules_to_save``) cannot be carried, unless it is
  the base's own tensor unchanged (peft saves the embedding beside an embedding LoRA), which is left out.

The family's layout rules act on the factors (:mod:`lmconv.adapter_rules`): the Q/K permutation on
``lora_b``'s rows, experts stacked, no generated tensors (``rope_freqs``). lmconv also stores the base's
config (``lmconv.hf_config``) and the adapter's own settings (``lmconv.adapter_config``), so that the
way back needs no ``--base``; a GGUF adapter from llama.cpp's converter needs it.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from lmconv import adapters as ad
from lmconv.adapter_rules import map_pairs
from lmconv.errors import InputError, UsageError
from lmconv.formats import Plan, PlannedTensor, ReadOptions, WriteOptions
from lmconv.ir import Model, Tensor
from lmconv.options import Option
from lmconv.registry import get_registry
from lmconv.rule_engine import apply_inverse
from lmconv.transforms import dequantize_tensor

HF_CONFIG_KEY = "lmconv.hf_config"
SETTINGS_KEY = "lmconv.adapter_config"
EMBEDDING = "token_embd.weight"
BASE = Option("--base", str, "LoRA adapters: the base model (HF folder or GGUF) the adapter was trained on: its family, "
              "config and shapes.", metavar="PATH")


def is_adapter_file(kv: dict[str, Any]) -> bool:
    return kv.get("general.type") == "adapter"


def _json_key(kv: dict[str, Any], key: str, path: Path) -> dict[str, Any] | None:
    raw = kv.get(key)
    if raw is None:
        return None
    try:
        value = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise InputError(f"metadata {key!r} is not a JSON object", path=path)
    return value


# =========================================================================== reading
def _pairs(raw: list[Tensor], alpha: float, path: Path) -> tuple[list[ad.LoraPair], list[Tensor]]:
    halves: dict[str, dict[str, Tensor]] = {}
    full: list[Tensor] = []
    for t in raw:
        for suffix in (".lora_a", ".lora_b"):
            if t.name.endswith(suffix):
                halves.setdefault(t.name[: -len(suffix)], {})[suffix] = t
                break
        else:
            if not t.name.endswith("_norm.weight"):
                raise InputError(f"tensor {t.name!r} is no LoRA factor (a LoRA adapter holds .lora_a and .lora_b "
                                 "pairs)", path=path)
            full.append(t)  # mergekit's norms: llama.cpp skips them; a merge applies them
    pairs = []
    for name, h in halves.items():
        if len(h) != 2:
            raise InputError(f"tensor {name}{'.lora_a' if '.lora_a' in h else '.lora_b'} has no "
                             f"{'.lora_b' if '.lora_a' in h else '.lora_a'} partner", path=path)
        a, b = h[".lora_a"], h[".lora_b"]
        if name == EMBEDDING:  # rows looked up: lora_a [vocab, r], lora_b [hidden, r]
            if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[1] != b.shape[1]:
                raise InputError(f"{name}: lora_a {list(a.shape)} and lora_b {list(b.shape)} do not share a rank",
                                 path=path)
            src = b
            b, a = a, Tensor(name, (b.shape[1], b.shape[0]), b.dtype, lambda s=src: s.load().T.copy(),
                             origin=b.origin, release=b.release)
        elif len(a.shape) != len(b.shape) or len(a.shape) < 2 or a.shape[-2] != b.shape[-1] \
                or a.shape[:-2] != b.shape[:-2]:
            raise InputError(f"{name}: lora_a {list(a.shape)} and lora_b {list(b.shape)} do not share a rank "
                             "(lora_a is [r, in], lora_b [out, r])", path=path)
        rank = b.shape[-1]
        pairs.append(ad.LoraPair(name, a, b, float(alpha) if alpha else float(rank)))
    return pairs, full


def read_adapter(path: Path, kv: dict[str, Any], types: dict[str, Any], raw: list[Tensor], options: ReadOptions) -> Model:
    kind = kv.get("adapter.type")
    if kind != "lora":
        raise InputError(f"adapter.type is {kind!r}; lmconv reads LoRA adapters", path=path)
    alpha = kv.get(gguf.Keys.Adapter.LORA_ALPHA, 0.0)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not np.isfinite(alpha):
        raise InputError(f"{gguf.Keys.Adapter.LORA_ALPHA} is {alpha!r}; it must be a number", path=path)
    arch_name = kv.get("general.architecture")
    reg = get_registry()
    arch = reg.architecture_in("gguf", arch_name) if isinstance(arch_name, str) else None
    pairs, full = _pairs(raw, float(alpha), path)
    settings = _json_key(kv, SETTINGS_KEY, path) or {}
    config = _json_key(kv, HF_CONFIG_KEY, path)
    base_model = None
    if options.extra.get("base"):
        base_model = ad.read_base(options.extra["base"], options.warn)
        base_arch = reg.architecture_for(base_model.config)
        layout = base_arch.layout("gguf") if base_arch is not None else None
        if layout is None or layout.arch != arch_name:
            raise InputError(f"is an adapter for a {arch_name} model but the base {options.extra['base']} is "
                             f"{layout.arch if layout else 'of another family'}", path=path)
        arch, config = base_arch, base_model.config
    elif config is not None:  # the base's config lmconv stored: its family, when it has this GGUF name
        stored = reg.architecture_for(config)
        layout = stored.layout("gguf") if stored is not None else None
        arch, config = (stored, config) if layout is not None and layout.arch == arch_name else (arch, None)
    summary: dict[str, Any] = {"base_model": settings.get("base_model_name_or_path") or kv.get("general.base_model.0.name"),
                               "alpha": alpha, "target_modules": None}
    if arch is not None and config is not None:
        arch.check_config(config, str(path))
        rules = arch.layout("gguf").rules(config)
        pairs = map_pairs(rules, pairs, config, forward=False, family=arch.name, origin=str(path))
        if full:
            full, unmatched, _ = apply_inverse(rules, full, config)
            if unmatched:
                raise InputError(f"tensor {unmatched[0].name!r} is no tensor of a {arch_name} model", path=path)
    else:
        config = {}
        summary["unresolved"] = True  # llama.cpp's names: the way to a PEFT folder or a merge needs --base
    detail = {"settings": settings, "whole": {t.name: "modules_to_save" for t in full}}
    model = ad.adapter_model(pairs, full, config=config, summary=summary, detail=detail, source=str(path),
                             format="gguf")
    summary_now = model.metadata[ad.META]
    summary_now.update({k: v for k, v in summary.items() if v is not None})
    if arch is not None:
        summary_now["family"] = arch.name
    summary_now["alpha"] = int(alpha) if float(alpha).is_integer() else alpha
    if base_model is not None:
        ad.attach_base(model, base_model, origin=str(path))
    model.metadata["gguf"] = {k: v for k, v in kv.items() if k not in (HF_CONFIG_KEY, SETTINGS_KEY)}
    return model


# =========================================================================== writing
def _alpha(pairs: list[ad.LoraPair], default: float) -> float:
    """The one alpha of the GGUF: the one that leaves the most pairs' ``lora_b`` as they are (a
    rank-stabilised pair of rank r needs ``alpha · sqrt(r)``), the adapter's own on a tie."""
    wanted = Counter(p.alpha * math.sqrt(p.rank) if p.rslora else p.alpha for p in pairs)
    if not wanted:
        return default
    most = max(wanted.values())
    return default if wanted.get(default) == most else max(wanted, key=lambda a: (wanted[a], -a))


def _plan(model: Model, options: WriteOptions) -> tuple[str, float, list[Tensor], dict[str, Any]]:
    """GGUF arch name, alpha, the tensors as written (lazy) and the keys, for an adapter model."""
    view = ad.adapter_view(model)
    origin = model.source or None
    if options.quant:
        raise UsageError(f"--quant {options.quant} applies to models; a LoRA adapter is written in f32, f16 or bf16 "
                         "(--dtype), or merged and quantised with lmconv merge BASE ADAPTER DST --quant …", path=origin)
    if not view.config:
        raise UsageError("converting a LoRA adapter to GGUF needs its base model, for the family, the config and the "
                         "shapes: give --base PATH (the HF folder or GGUF it was trained on)", path=origin)
    reg = get_registry()
    arch = reg.architecture_for(view.config)
    layout = arch.layout("gguf") if arch is not None else None
    if layout is None:
        what = view.config.get("architectures") or view.config.get("model_type") or "unknown"
        raise UsageError(f"the base model's family ({what}) has no GGUF layout lmconv knows: llama.cpp could not apply "
                         f"the adapter", path=origin)
    config = view.config
    arch.check_config(config, model.config_source or origin)
    base = view.base
    table = ad.base_names(base) if base is not None else {}
    tied = (arch.is_tied(base) if base is not None else False) or config.get("tie_word_embeddings") is True
    for name, t in view.full.items():
        same = name in table and table[name].shape == t.shape and np.array_equal(
            np.asarray(t.load()), np.asarray(table[name].load()))
        if not same:
            raise InputError(f"the adapter replaces the whole tensor {name!r} (modules_to_save); llama.cpp's LoRA "
                             f"adapters hold only low-rank pairs: {ad.MERGE_INSTEAD}", path=origin)
        options.warn(f"{name} in the adapter is the base model's own tensor, unchanged: left out")
    if tied:
        for name, why in ((arch.hf_output, "llama.cpp's tied output has no tensor of its own"),
                          (arch.hf_embedding, "llama.cpp would apply it to the tied output as well")):
            if name and name in view.pairs:
                raise InputError(f"the adapter has a LoRA on {name!r} and the base ties its output to its "
                                 f"embeddings: {why}; {ad.MERGE_INSTEAD}", path=origin)
    alpha = _alpha(list(view.pairs.values()), float(view.summary.get("alpha") or 0.0) or 1.0)
    shape_of = (lambda n: tuple(table[n].shape) if n in table else arch.expected_shape(n, config))
    pairs = map_pairs(layout.rules(config), list(view.pairs.values()), config, forward=True,
                      target=lambda r: (alpha, False), shape_of=shape_of, family=arch.name, origin=origin,
                      leave_out=(lambda n: options.warn(f"the LoRA of {n!r} is left out: a {layout.arch} GGUF has no "
                                                        "such tensor")) if base is not None else None)
    tensors: list[Tensor] = []
    for p in pairs:
        if p.name == EMBEDDING:
            a_src = p.a
            lora_a = p.b
            lora_b = Tensor(p.name, (p.a.shape[1], p.a.shape[0]), a_src.dtype, lambda s=a_src: s.load().T.copy(),
                            origin=a_src.origin, release=a_src.release)
        else:
            lora_a, lora_b = p.a, p.b
        for t, suffix in ((lora_a, ".lora_a"), (lora_b, ".lora_b")):
            t = t.replace(name=p.name + suffix, aliases=())
            if options.dtype is not None:
                t = dequantize_tensor(t).cast(options.dtype)
            tensors.append(t)
    settings = dict(view.detail.get("settings") or {})
    keys: dict[str, Any] = {HF_CONFIG_KEY: json.dumps(config, sort_keys=True, ensure_ascii=False)}
    if settings:
        keys[SETTINGS_KEY] = json.dumps(settings, sort_keys=True, ensure_ascii=False)
    tokens = settings.get("alora_invocation_tokens")
    if isinstance(tokens, list) and tokens and all(type(x) is int and 0 <= x < 2**32 for x in tokens):
        keys[gguf.Keys.Adapter.ALORA_INVOCATION_TOKENS] = tokens
    base_name = view.summary.get("base_model")
    if isinstance(base_name, str) and base_name:
        keys["general.base_model.count"] = 1
        keys["general.base_model.0.name"] = Path(base_name.rstrip("/")).name or base_name
    return layout.arch, alpha, tensors, keys


def write_adapter(model: Model, path: Path, options: WriteOptions) -> list[Path]:
    from .format import _write_tensor_data  # the streaming writer the models use (format imports this module)
    from .ggml_types import ggml_type

    arch_name, alpha, tensors, keys = _plan(model, options)
    writer = gguf.GGUFWriter(path, arch_name)
    for t in tensors:
        if ggml_type(t.dtype) is None:
            raise UsageError(f"tensor {t.name!r} is {t.dtype.name}, which GGUF cannot store")
        writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=ggml_type(t.dtype))
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    writer.add_name(Path(model.source.rstrip("/")).name.split(".")[0] or "adapter")
    for key, value in keys.items():
        if key == gguf.Keys.Adapter.ALORA_INVOCATION_TOKENS:
            writer.add_key_value(key, value, gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.UINT32)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        else:
            writer.add_string(key, value)
    try:
        writer.write_header_to_file(path)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        _write_tensor_data(writer, tensors, options)
    finally:
        writer.close()
    return [path]


def plan_adapter(model: Model, path: Path, options: WriteOptions) -> Plan:
    arch_name, alpha, tensors, _ = _plan(model, options)
    planned = [PlannedTensor(t.name, t.shape, t.dtype.name, t.nbytes) for t in tensors]
    return Plan("gguf", [str(path)], planned, [f"general.architecture = {arch_name}", "general.type = adapter",
                                               f"adapter.lora.alpha = {alpha:g}"])
