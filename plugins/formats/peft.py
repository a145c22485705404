"""A PEFT LoRA adapter folder: ``adapter_config.json`` and ``adapter_model.safetensors`` (or ``.bin``).

Reading turns peft's tensors into lmconv's adapter IR (:mod:`lmconv.adapters`): one pair per weight,
``delta(W) = scale · B @ A`` in the base's layout of ``W``. peft stores most pairs that way already
(``<module>.lora_A.weight [r, in]``, ``<module>.lora_B.weight [out, r]``); an embedding's pair is
stored the other way round (``lora_embedding_A [r, vocab]``, ``lora_embedding_B [hidden, r]``:
``delta = (B @ A).T``), and so are the pairs of an adapter saved with ``fan_in_fan_out`` (GPT-2's
Conv1D). Each pair's scale is peft's: ``alpha / r`` (``alpha / sqrt(r)`` with ``use_rslora``), with
``r`` and ``alpha`` per module from ``rank_pattern`` and ``alpha_pattern``. Whole tensors
(``modules_to_save``, an embedding saved beside its LoRA, trained biases) are kept by name.

Writing makes a folder ``PeftModel.from_pretrained`` loads: the settings the adapter came with (when it
came from peft, or from a GGUF lmconv wrote), with rank, alpha and their patterns stated for the pairs
as they are. The weights go through the registry's safetensors format.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from lmconv import adapters as ad
from lmconv.adapter_rules import rescale
from lmconv.dtypes import F32
from lmconv.errors import InputError, UsageError
from lmconv.formats import Format, ReadOptions, WriteOptions
from lmconv.hookspecs import hookimpl
from lmconv.ir import Model, Tensor
from lmconv.options import Option
from lmconv.registry import get_registry
from lmconv.transforms import dequantize_tensor

CONFIG = "adapter_config.json"
WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
PREFIX = "base_model.model."
BASE = Option("--base", str, "LoRA adapters: the base model (HF folder or GGUF) the adapter was trained on: its family, "
              "config and shapes.", metavar="PATH")
#: peft settings lmconv cannot carry: each refused in one line
UNSUPPORTED = {
    "use_dora": "DoRA adapters (use_dora)",
    "target_parameters": "LoRA on parameters (target_parameters)",
    "lora_bias": "LoRA biases (lora_bias)",
    "layer_replication": "replicated layers (layer_replication)",
    "trainable_token_indices": "trainable tokens (trainable_token_indices)",
    "use_qalora": "QA-LoRA (use_qalora)",
    "use_bdlora": "block-diagonal LoRA (use_bdlora)",
}
DEFAULTS = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "bias": "none", "fan_in_fan_out": False,
            "lora_dropout": 0.0, "inference_mode": True, "init_lora_weights": True, "modules_to_save": None,
            "layers_to_transform": None, "layers_pattern": None, "base_model_name_or_path": None}


def _folder(path: Path) -> Path:
    return path if path.is_dir() else path.parent


def _pattern(patterns: Any, module: str, default: Any) -> Any:
    """peft's lookup: the first key that matches the end of the module's name (as a regular expression)."""
    for key, value in (patterns or {}).items():
        try:
            if re.match(rf"(.*\.)?({key})$", module):
                return value
        except re.error:
            if module == key or module.endswith("." + key):
                return value
    return default


def _settings(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG
    if not path.is_file():
        found = next((w for w in WEIGHTS if (folder / w).is_file()), None)
        what = f"holds {found} but no {CONFIG}" if found else f"has no {CONFIG}"
        raise InputError(f"{what}: a LoRA adapter folder needs one (peft's save_pretrained writes it)", path=folder)
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"is not a readable JSON file ({' '.join(str(exc).split())[:120]})", path=path) from None
    if not isinstance(cfg, dict):
        raise InputError("must be a JSON object", path=path)
    kind = cfg.get("peft_type", "LORA")
    if kind != "LORA":
        raise InputError(f"peft_type is {kind!r}; lmconv converts LoRA adapters only", path=path)
    for key, what in UNSUPPORTED.items():
        if cfg.get(key):
            raise InputError(f"{what} are not supported: llama.cpp has no counterpart", path=path)
    r, alpha = cfg.get("r", 8), cfg.get("lora_alpha", 8)
    if type(r) is not int or r < 1:
        raise InputError(f"r is {r!r}; it must be a whole number of at least 1", path=path)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise InputError(f"lora_alpha is {alpha!r}; it must be a number", path=path)
    for key in ("rank_pattern", "alpha_pattern"):
        if cfg.get(key) is not None and not isinstance(cfg[key], dict):
            raise InputError(f"{key} must be an object of module name → value", path=path)
    return cfg


def _weights(folder: Path, options: ReadOptions) -> tuple[Model, Path]:
    for name in WEIGHTS:
        path = folder / name
        if path.is_file():
            fmt = get_registry().formats.get("safetensors" if name.endswith(".safetensors") else "pytorch")
            if fmt is None:
                raise UsageError(f"reading {name} needs the {'safetensors' if name.endswith('.safetensors') else 'pytorch'} "
                                 "plugin, which is disabled", path=path)
            return fmt.read(path, ReadOptions(warn=options.warn)), path
    raise InputError(f"has {CONFIG} but no {' or '.join(WEIGHTS)}", path=folder)


def _t(t: Tensor) -> Tensor:
    """The transpose of a 2-D factor (lazily)."""
    src = dequantize_tensor(t)
    return Tensor(t.name, (t.shape[1], t.shape[0]), src.dtype, lambda: src.load().T.copy(), origin=t.origin,
                  release=src.release)


def read_peft(path: Path, options: ReadOptions) -> Model:
    folder = _folder(path)
    cfg = _settings(folder)
    stored, wpath = _weights(folder, options)
    halves: dict[str, dict[str, Tensor]] = {}
    embeddings: list[str] = []
    full: dict[str, Tensor] = {}
    kinds: dict[str, str] = {}
    for t in stored:
        key = t.name.removeprefix(PREFIX)
        m = re.fullmatch(r"(.+)\.lora_(A|B|embedding_A|embedding_B)(?:\.weight)?", key)
        if m:
            module, which = m.group(1), m.group(2)
            if which.startswith("embedding"):
                embeddings.append(module + ".weight")
            halves.setdefault(module, {})[which[-1]] = t
        elif ".lora_" in key:
            raise InputError(f"tensor {t.name!r} is no LoRA factor lmconv knows (lora_A, lora_B, lora_embedding_A/B)",
                             path=wpath)
        else:
            for marker, kind in ((".base_layer.", "base_layer"), (".modules_to_save.", "modules_to_save")):
                if marker in key:
                    key = key.replace(marker, ".")
                    kinds[key] = kind
                    break
            else:
                kinds[key] = "bias" if key.endswith(".bias") else "modules_to_save"
            full[key] = t.replace(name=key, aliases=())
    r0, alpha0 = cfg.get("r", 8), cfg.get("lora_alpha", 8)
    rslora = bool(cfg.get("use_rslora"))
    fan = bool(cfg.get("fan_in_fan_out"))
    pairs: list[ad.LoraPair] = []
    for module, h in halves.items():
        if set(h) != {"A", "B"}:
            missing = "lora_B" if "A" in h else "lora_A"
            raise InputError(f"{module} has no {missing}: each LoRA factor needs its partner", path=wpath)
        a, b = h["A"], h["B"]
        if len(a.shape) != 2 or len(b.shape) != 2:
            raise InputError(f"{module}: LoRA factors must be 2-D, not {list(a.shape)} and {list(b.shape)}", path=wpath)
        if a.shape[0] != b.shape[1]:
            raise InputError(f"{module}: lora_A has rank {a.shape[0]} but lora_B has rank {b.shape[1]} "
                             f"({list(a.shape)} and {list(b.shape)})", path=wpath)
        rank = a.shape[0]
        want = _pattern(cfg.get("rank_pattern"), module, r0)
        if want != rank:
            raise InputError(f"{module}: {CONFIG} says r={want} but its LoRA factors have rank {rank}", path=wpath)
        weight = module + ".weight"
        if weight in embeddings or fan:  # stored as (B @ A).T: the pair of W is (A.T, B.T) swapped
            a, b = _t(b), _t(a)
        pairs.append(ad.LoraPair(weight, a, b, float(_pattern(cfg.get("alpha_pattern"), module, alpha0)), rslora))
    if not pairs and not full:
        raise InputError("holds no LoRA factors", path=wpath)
    base_hint = cfg.get("base_model_name_or_path")
    summary = {"base_model": base_hint, "rank": r0, "alpha": alpha0, "use_rslora": rslora,
               "target_modules": cfg.get("target_modules"), "modules_to_save": cfg.get("modules_to_save"),
               "rank_pattern": cfg.get("rank_pattern") or {}, "alpha_pattern": cfg.get("alpha_pattern") or {},
               "whole_tensors": sorted(full)}
    base_class = (cfg.get("auto_mapping") or {}).get("base_model_class")
    if base_class:
        summary["base_class"] = base_class
    detail = {"settings": cfg, "embeddings": sorted(set(embeddings)), "whole": kinds}
    model = ad.adapter_model(pairs, list(full.values()), config={}, summary=summary, detail=detail,
                             source=str(folder), format="peft")
    base = options.extra.get("base")
    if not base and isinstance(base_hint, str) and base_hint and Path(base_hint).is_dir():
        base = base_hint
        options.warn(f"using the base model {base_hint} that {CONFIG} names (give --base to choose another)")
    if base:
        base_model = ad.read_base(base, options.warn)
        ad.check_target_modules(cfg.get("target_modules"), base_model, str(folder / CONFIG))
        ad.attach_base(model, base_model, origin=str(wpath))
    return model


# =========================================================================== writing
def _targeted(targets: Any, module: str) -> bool:
    """Whether peft's ``target_modules`` (names, name endings, or one regular expression) takes ``module``."""
    if isinstance(targets, str):
        try:
            return re.fullmatch(targets, module) is not None or targets == "all-linear"
        except re.error:
            return False
    return any(module == t or module.endswith("." + t) for t in targets)


def _as_settings(pairs: list[ad.LoraPair], cfg: dict[str, Any]) -> list[ad.LoraPair] | None:
    """The pairs stated with the alpha and kind of scale the adapter's own settings give each module
    (a GGUF folded them into B: this unfolds them), or None when a pair's rank is not the settings'."""
    if not cfg.get("r"):
        return None
    out = []
    for p in pairs:
        module = ad.module_of(p.name)
        if _pattern(cfg.get("rank_pattern"), module, cfg["r"]) != p.rank:
            return None
        alpha = float(_pattern(cfg.get("alpha_pattern"), module, cfg.get("lora_alpha", 8)))
        rslora = bool(cfg.get("use_rslora"))
        same = p.alpha == alpha and p.rslora == rslora
        out.append(p if same else rescale(p, alpha, rslora))
    return out


def _settings_out(view: ad.Adapter, modules: dict[str, str]) -> dict[str, Any]:
    """peft's settings for the pairs as they are: the adapter's own settings, with r, lora_alpha,
    use_rslora and their patterns stated from the pairs (each pair keeps its exact scale)."""
    cfg = {**DEFAULTS, **dict(view.detail.get("settings") or {})}
    pairs = list(view.pairs.values())
    if pairs and _as_settings(pairs, cfg) is not None:
        return cfg  # the adapter's own settings describe every pair (write_peft stated them so)
    if pairs:
        rank = Counter(p.rank for p in pairs).most_common(1)[0][0]
        alpha = Counter(p.alpha for p in pairs).most_common(1)[0][0]
        rslora = Counter(p.rslora for p in pairs).most_common(1)[0][0]
        if any(p.rslora != rslora for p in pairs):  # peft has one use_rslora: state the others' alpha for it
            pairs = [p if p.rslora == rslora else
                     ad.LoraPair(p.name, p.a, p.b, p.scale * (p.rank ** 0.5 if rslora else p.rank), rslora) for p in pairs]
            alpha = Counter(p.alpha for p in pairs).most_common(1)[0][0]
        cfg["r"] = rank
        cfg["lora_alpha"] = int(alpha) if float(alpha).is_integer() else alpha
        cfg["use_rslora"] = rslora
        cfg["rank_pattern"] = {modules[p.name]: p.rank for p in pairs if p.rank != rank}
        cfg["alpha_pattern"] = {modules[p.name]: (int(p.alpha) if float(p.alpha).is_integer() else p.alpha)
                                for p in pairs if p.alpha != alpha}
        targets = cfg.get("target_modules")
        short = sorted({m.rsplit(".", 1)[-1] for m in modules.values()})
        if not (isinstance(targets, (list, str)) and targets):
            cfg["target_modules"] = short
        elif not all(_targeted(targets, m) for m in modules.values()):
            cfg["target_modules"] = sorted(set(targets) | set(short)) if isinstance(targets, list) else short
    cfg["fan_in_fan_out"] = bool(cfg.get("fan_in_fan_out"))
    base = view.summary.get("base_model")
    if base and not cfg.get("base_model_name_or_path"):
        cfg["base_model_name_or_path"] = base
    return cfg


def write_peft(model: Model, path: Path, options: WriteOptions) -> list[Path]:
    if not ad.is_adapter(model):
        raise UsageError("is not a LoRA adapter: a PEFT folder holds adapters only (a model folder is written "
                         "with a trailing /)", path=model.source or None)
    view = ad.adapter_view(model)
    if view.summary.get("unresolved"):
        raise UsageError("the GGUF adapter's tensors keep llama.cpp's names: give --base (the base model) so that "
                         "they can be laid out as the model's own", path=model.source or None)
    arch = get_registry().architecture_for(view.config)
    embedding = {arch.hf_embedding} if arch is not None and arch.hf_embedding else set()
    embedding |= set(view.detail.get("embeddings") or [])
    settings = dict(view.detail.get("settings") or {})
    fan = bool(settings.get("fan_in_fan_out"))
    modules = {p.name: ad.module_of(p.name) for p in view.pairs.values()}
    restated = _as_settings(list(view.pairs.values()), settings)
    if restated is not None:
        view.pairs = {p.name: p for p in restated}
    tensors: list[Tensor] = []
    for p in view.pairs.values():
        m = PREFIX + modules[p.name]
        if p.name in embedding:
            tensors += [_t(p.b).replace(name=m + ".lora_embedding_A"), _t(p.a).replace(name=m + ".lora_embedding_B")]
        elif fan:
            tensors += [_t(p.b).replace(name=m + ".lora_A.weight"), _t(p.a).replace(name=m + ".lora_B.weight")]
        else:
            tensors += [p.a.replace(name=m + ".lora_A.weight"), p.b.replace(name=m + ".lora_B.weight")]
    kinds = view.detail.get("whole") or {}
    for name, t in view.full.items():
        key = name
        if kinds.get(name) == "base_layer":
            key = name.rsplit(".", 1)[0] + ".base_layer." + name.rsplit(".", 1)[1]
        tensors.append(t.replace(name=PREFIX + key, aliases=()))
    tensors = [dequantize_tensor(t) if t.dtype.is_quantized else t for t in tensors]
    cfg = _settings_out(view, modules)
    saved = [ad.module_of(n).rsplit(".", 1)[-1] for n, k in kinds.items() if k == "modules_to_save"]
    if saved:
        cfg["modules_to_save"] = sorted(set(cfg.get("modules_to_save") or []) | set(saved))
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    fmt = get_registry().formats.get("safetensors")
    if fmt is None:
        raise UsageError("writing a PEFT folder needs the safetensors plugin, which is disabled", path=path)
    weights = Model(config={}, source=model.source, format="peft")
    for t in tensors:
        weights.add(t if t.dtype.is_float else t.cast(F32))
    fmt.write(weights, path / WEIGHTS[0], WriteOptions(progress=options.progress, warn=options.warn))
    return [path]


class PeftFormat(Format):
    name = "peft"
    extensions = ()
    description = "PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors/.bin)"
    is_directory = True
    self_describing = True
    stores_adapters = True
    adapters_only = True  # no model goes here (the conformance kit's sample model included)
    sniff_order = -10  # before the safetensors and pytorch formats: adapter_model.* beside adapter_config.json

    def sniff(self, path: Path) -> bool:
        """A folder with adapter_config.json or adapter_model.* (and no model weights of its own), or
        an adapter_model.* file with adapter_config.json beside it."""
        try:
            if path.is_dir():
                adapter = (path / CONFIG).is_file() or any((path / w).is_file() for w in WEIGHTS)
                model = (path / "config.json").is_file() and any(
                    (path / w).is_file() for w in ("model.safetensors", "model.safetensors.index.json",
                                                   "pytorch_model.bin", "pytorch_model.bin.index.json"))
                return adapter and not model
            return path.is_file() and path.name in WEIGHTS and (path.parent / CONFIG).is_file()
        except OSError:
            return False

    def read(self, path: Path, options: ReadOptions) -> Model:
        return read_peft(path, options)

    def write(self, model: Model, path: Path, options: WriteOptions) -> list[Path]:
        return write_peft(model, path, options)


@hookimpl
def register_formats(register: Any) -> None:
    register(PeftFormat())


@hookimpl
def register_options(register: Any) -> None:
    register(BASE)
