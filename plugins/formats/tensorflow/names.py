"""TensorFlow/Keras ⇄ Hugging Face tensor names and layouts, shared by the TF and h5 plugins.

Reading turns the variables of a TF checkpoint or a Keras h5 file into canonical
(HF state-dict) names, with the layout change each one needs; writing does the
inverse. The rules are transformers' (``modeling_tf_pytorch_utils.py``):

* ``:0`` (an output index) and ``/.ATTRIBUTES/VARIABLE_VALUE`` (an object-based key) are dropped;
  ``$1___$2`` becomes ``$2``; ``_._N`` (a Keras list) and ``/N`` (an object-graph list) become ``.N``;
* the first path component, the Keras model scope (``tfgp_t2lm_head_model``, ``model``), is dropped;
* ``kernel`` → ``weight``, transposed (Dense ``[in, out]`` ⇄ PyTorch ``[out, in]``; conv kernels
  move their spatial axes last); ``gamma``/``embeddings`` → ``weight``; ``beta`` → ``bias``;
* OpenAI's TF1 GPT-2 (``model/h0/attn/c_attn/w`` ``[1, in, out]``, ``model/wte``, ``…/ln_1/g|b``)
  has its own small table; its Conv1D weights keep ``[in, out]`` as HF GPT-2 does, only squeezed.

A file whose names follow neither HF-TF nor OpenAI conventions (an unknown Keras model) keeps
its variable names verbatim. Files lmconv writes carry a small JSON record (``_lmconv_metadata``)
of the exact HF names, aliases (ties) and original dtypes, so that PyTorch → TF → PyTorch is
bit-exact, while the TF names themselves stay the ones TF and Keras users expect.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmconv import dtypes as dt
from lmconv.companions import attach_companions, parse_config
from lmconv.errors import InputError, LmconvError
from lmconv.ir import Model, Tensor, Tokenizer

OBJECT_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
META_KEY = "_lmconv_metadata"
META_VERSION = 1
#: the root object a ``tf.train.Checkpoint(model=...)`` hangs its model under
CKPT_ROOT = "model"

# ---- layouts -----------------------------------------------------------------------------
NONE = ""
TRANSPOSE = "T"  # Dense kernel: TF [in, out] ⇄ PT [out, in]
CONV1D = "conv1d"  # TF [k, in, out] ⇄ PT [out, in, k]
CONV2D = "conv2d"  # TF [kh, kw, in, out] ⇄ PT [out, in, kh, kw]
SQUEEZE0 = "squeeze0"  # OpenAI GPT-2 conv ``w``: TF [1, in, out] → PT [in, out]
LAYOUTS = (NONE, TRANSPOSE, CONV1D, CONV2D, SQUEEZE0)
_RANK = {TRANSPOSE: 2, CONV1D: 3, CONV2D: 4, SQUEEZE0: 3}


def to_hf_array(a: np.ndarray, layout: str) -> np.ndarray:
    """A stored TF array in PyTorch layout."""
    if layout == TRANSPOSE:
        return np.ascontiguousarray(a.T)
    if layout == CONV1D:
        return np.ascontiguousarray(a.transpose(2, 1, 0))
    if layout == CONV2D:
        return np.ascontiguousarray(a.transpose(3, 2, 0, 1))
    if layout == SQUEEZE0:
        return a[0]
    return a


def to_tf_array(a: np.ndarray, layout: str) -> np.ndarray:
    """The exact inverse of :func:`to_hf_array`."""
    if layout == TRANSPOSE:
        return np.ascontiguousarray(a.T)
    if layout == CONV1D:
        return np.ascontiguousarray(a.transpose(2, 1, 0))
    if layout == CONV2D:
        return np.ascontiguousarray(a.transpose(2, 3, 1, 0))
    if layout == SQUEEZE0:
        return a[None]
    return a


def hf_shape(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    s = tuple(shape)
    if layout == TRANSPOSE:
        return s[::-1]
    if layout == CONV1D:
        return (s[2], s[1], s[0])
    if layout == CONV2D:
        return (s[3], s[2], s[0], s[1])
    if layout == SQUEEZE0:
        return s[1:]
    return s


def tf_shape(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    s = tuple(shape)
    if layout == TRANSPOSE:
        return s[::-1]
    if layout == CONV1D:
        return (s[2], s[1], s[0])
    if layout == CONV2D:
        return (s[2], s[3], s[1], s[0])
    if layout == SQUEEZE0:
        return (1, *s)
    return s


# ---- what is not a weight ------------------------------------------------------------------
_SLOT_LEAVES = {
    "adam_m", "adam_v", "Adam", "Adam_1", "Momentum", "RMSProp", "RMSProp_1", "Adagrad", "Adadelta",
    "Adadelta_1", "Ftrl", "Ftrl_1", "ExponentialMovingAverage", "AdamWeightDecayOptimizer",
    "AdamWeightDecayOptimizer_1", "LAMB", "LAMB_1",
}
_BOOKKEEPING = {"global_step", "save_counter", "beta1_power", "beta2_power", "iter", "iterations", "learning_rate"}


def is_bookkeeping(var: str) -> bool:
    """Optimiser slots, step counters and checkpoint bookkeeping: never part of a model."""
    if var in (OBJECT_GRAPH_KEY, META_KEY) or var.endswith("/.ATTRIBUTES/OBJECT_CONFIG_JSON"):
        return True
    parts = var.split("/")
    if ".OPTIMIZER_SLOT" in parts or parts[0] in ("optimizer", "save_counter", "global_step"):
        return True
    return parts[-1] in _SLOT_LEAVES or (len(parts) <= 2 and parts[-1] in _BOOKKEEPING) or parts[-1] == "global_step"


def strip_var(key: str) -> str:
    """A checkpoint key or Keras weight name → the bare variable name."""
    if key.endswith(OBJECT_SUFFIX):
        key = key[: -len(OBJECT_SUFFIX)]
    return re.sub(r":\d+$", "", key)


# ---- known architectures --------------------------------------------------------------------
@dataclass(frozen=True)
class TFArch:
    """How one HF family is spelled in HF's TF port: which modules are Dense, Embedding, LayerNorm."""

    tf_class: str
    embedding: tuple[str, ...] = ()
    layernorm: tuple[str, ...] = ()
    dense: tuple[str, ...] = ()
    signature: tuple[str, ...] = ()

    def kind(self, name: str) -> str:
        for kind, pats in (("embedding", self.embedding), ("layernorm", self.layernorm), ("dense", self.dense)):
            if any(re.search(p, name) for p in pats):
                return kind
        return "keep"


_GPT2 = TFArch(
    "TFGPT2LMHeadModel",
    embedding=(r"^transformer\.(wte|wpe)\.weight$",),
    layernorm=(r"(^|\.)ln_(1|2|f)\.(weight|bias)$",),
    dense=(r"^lm_head\.weight$",),
    signature=("transformer.wte.weight", "transformer.h.0.attn.c_attn.weight"),
)


def _llama(cls: str) -> TFArch:
    return TFArch(
        cls,
        embedding=(r"^model\.embed_tokens\.weight$",),
        dense=(r"_proj\.weight$", r"^lm_head\.weight$"),
        signature=("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight"),
    )


TF_ARCHS: dict[str, TFArch] = {
    "GPT2LMHeadModel": _GPT2,
    "LlamaForCausalLM": _llama("TFLlamaForCausalLM"),
    "MistralForCausalLM": _llama("TFMistralForCausalLM"),
    "Qwen2ForCausalLM": _llama("TFQwen2ForCausalLM"),
}


def keras_scope(class_name: str) -> str:
    """Keras' default name of a model of this class (``TFGPT2LMHeadModel`` → ``tfgp_t2lm_head_model``)."""
    s = re.sub("(.)([A-Z][a-z0-9]+)", r"\1_\2", class_name)
    s = re.sub("([a-z])([A-Z])", r"\1_\2", s).lower()
    return s if not s.startswith("_") else "private" + s


def architecture_of(config: dict[str, Any]) -> str | None:
    archs = config.get("architectures") if isinstance(config, dict) else None
    if isinstance(archs, list) and archs and isinstance(archs[0], str):
        return archs[0]
    return None


def expected_shape(name: str, config: dict[str, Any]) -> tuple[int, ...] | None:
    """The shape ``config`` implies for an HF tensor of a known family, or None when it does not say."""
    arch = architecture_of(config)
    try:
        if arch == "GPT2LMHeadModel":
            n = int(config["n_embd"])
            inner = int(config.get("n_inner") or 4 * n)
            table = {
                r"^transformer\.wte\.weight$": (int(config["vocab_size"]), n),
                r"^transformer\.wpe\.weight$": (int(config.get("n_positions") or config.get("n_ctx")), n),
                r"^lm_head\.weight$": (int(config["vocab_size"]), n),
                r"\.ln_(1|2|f)\.(weight|bias)$": (n,),
                r"\.attn\.c_attn\.weight$": (n, 3 * n),
                r"\.attn\.c_attn\.bias$": (3 * n,),
                r"\.attn\.c_proj\.weight$": (n, n),
                r"\.(attn|mlp)\.c_proj\.bias$": (n,),
                r"\.mlp\.c_fc\.weight$": (n, inner),
                r"\.mlp\.c_fc\.bias$": (inner,),
                r"\.mlp\.c_proj\.weight$": (inner, n),
            }
        elif arch in TF_ARCHS:
            h = int(config["hidden_size"])
            nh = int(config["num_attention_heads"])
            nkv = int(config.get("num_key_value_heads") or nh)
            hd = int(config.get("head_dim") or h // nh)
            inter = int(config["intermediate_size"])
            vocab = int(config["vocab_size"])
            table = {
                r"^model\.embed_tokens\.weight$": (vocab, h),
                r"^lm_head\.weight$": (vocab, h),
                r"(layernorm|^model\.norm)\.weight$": (h,),
                r"\.q_proj\.weight$": (nh * hd, h),
                r"\.q_proj\.bias$": (nh * hd,),
                r"\.(k|v)_proj\.weight$": (nkv * hd, h),
                r"\.(k|v)_proj\.bias$": (nkv * hd,),
                r"\.o_proj\.weight$": (h, nh * hd),
                r"\.(gate|up)_proj\.weight$": (inter, h),
                r"\.down_proj\.weight$": (h, inter),
            }
        else:
            return None
    except (KeyError, TypeError, ValueError):
        return None
    for pat, shape in table.items():
        if re.search(pat, name):
            return shape
    return None


# ---- reading ---------------------------------------------------------------------------------
@dataclass
class Var:
    """One variable as a TF file stores it."""

    key: str  # checkpoint key, or the h5 weight name / dataset path
    shape: tuple[int, ...]
    dtype: dt.DType

    @property
    def var(self) -> str:
        return strip_var(self.key)


@dataclass
class Entry:
    """One IR tensor and where it comes from."""

    var: Var
    name: str
    layout: str = NONE
    aliases: tuple[str, ...] = ()
    dtype: dt.DType | None = None  # declared dtype when the file holds a wider one

    @property
    def shape(self) -> tuple[int, ...]:
        return hf_shape(self.var.shape, self.layout)


def hf_tf_name(var: str, shape: tuple[int, ...]) -> tuple[str, str]:
    """transformers' TF → PT rule: (name, layout) for an HF-TF variable name."""
    s = re.sub(r"/[^/]*___([^/]*)/", r"/\1/", var)
    s = s.replace("_._", "/")
    s = re.sub(r"//+", "/", s).strip("/")
    comps = s.split("/")
    if len(comps) > 1:
        comps = comps[1:]  # the model scope
    leaf = comps[-1]
    layout = NONE
    if leaf == "kernel":
        layout = {2: TRANSPOSE, 3: CONV1D, 4: CONV2D}.get(len(shape), "bad")
    elif "emb_projs" in comps or "out_projs" in comps:
        layout = TRANSPOSE if len(shape) == 2 else NONE
    if leaf in ("kernel", "embeddings", "gamma"):
        comps[-1] = "weight"
    elif leaf == "beta":
        comps[-1] = "bias"
    return ".".join(comps), layout


_OPENAI_LEAF = {"g": "weight", "b": "bias", "w": "weight"}


def openai_gpt2_name(var: str) -> tuple[str, str] | None:
    """OpenAI's TF1 GPT-2 names → HF GPT-2 names (None when ``var`` is not one of them)."""
    if var in ("model/wte", "model/wpe"):
        return f"transformer.{var[6:]}.weight", NONE
    m = re.fullmatch(r"model/ln_f/([gb])", var)
    if m:
        return f"transformer.ln_f.{_OPENAI_LEAF[m.group(1)]}", NONE
    m = re.fullmatch(r"model/h(\d+)/(ln_1|ln_2|attn/c_attn|attn/c_proj|mlp/c_fc|mlp/c_proj)/([gbw])", var)
    if m:
        block, module, leaf = m.groups()
        if leaf == "w" and module.startswith("ln"):
            return None
        layout = SQUEEZE0 if leaf == "w" else NONE
        return f"transformer.h.{block}.{module.replace('/', '.')}.{_OPENAI_LEAF[leaf]}", layout
    return None


def is_openai_gpt2(variables: Iterable[str]) -> bool:
    names = set(variables)
    return "model/wte" in names and any(re.match(r"model/h\d+/attn/c_attn/w$", v) for v in names)


def _natural(name: str) -> list[Any]:
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name)]


def plan_read(
    variables: list[Var],
    *,
    config: dict[str, Any],
    meta: dict[str, Any] | None,
    path: Path | str,
    warn: Callable[[str], None] = lambda m: None,
    keep_order: bool = False,
) -> tuple[list[Entry], str]:
    """Canonical names and layouts for ``variables``; returns the entries and the naming scheme used."""
    by_key = {v.key: v for v in variables}
    entries: list[Entry] = []
    scheme = "verbatim"
    rest = list(variables)
    if meta:
        entries, rest = _from_meta(meta, by_key, path)
        scheme = "lmconv"
    rest = [v for v in rest if not is_bookkeeping(v.var)]
    if not entries:
        rest_entries, scheme = _by_rules(rest, config)
    else:
        rest_entries, _ = _by_rules(rest, config)  # variables someone added after lmconv wrote the file
    if not keep_order and scheme != "lmconv":
        rest_entries.sort(key=lambda e: _natural(e.name))
    entries += rest_entries
    _validate(entries, config, path, scheme)
    return entries, scheme


def _by_rules(variables: list[Var], config: dict[str, Any]) -> tuple[list[Entry], str]:
    if not variables:
        return [], "verbatim"
    names = [v.var for v in variables]
    if is_openai_gpt2(names):
        out = []
        for v in variables:
            got = openai_gpt2_name(v.var)
            out.append(Entry(v, got[0], got[1]) if got else Entry(v, v.var))
        return out, "openai-gpt2"
    cand = [(v, *hf_tf_name(v.var, v.shape)) for v in variables]
    arch = architecture_of(config)
    scopes = {n.split("/")[0] for n in names if "/" in n}
    hf_scope = bool(scopes) and all(s.startswith("tf") for s in scopes)
    cand_names = {c[1] for c in cand}
    signature = any(all(s in cand_names for s in a.signature) for a in TF_ARCHS.values())
    if hf_scope or arch in TF_ARCHS or signature:
        return [Entry(v, name, layout) for v, name, layout in cand], "hf-tf"
    return [Entry(v, v.var) for v in variables], "verbatim"


def _from_meta(meta: dict[str, Any], by_key: dict[str, Var], path: Path | str) -> tuple[list[Entry], list[Var]]:
    recs = meta.get("tensors")
    if meta.get("version") != META_VERSION or not isinstance(recs, list):
        raise InputError(f"{META_KEY} is not a version-{META_VERSION} lmconv record", path=path)
    entries = []
    used = set()
    for rec in recs:
        try:
            key, name = rec["key"], rec["name"]
            layout = rec.get("layout", NONE)
            aliases = tuple(rec.get("aliases") or ())
            declared = dt.get(rec["dtype"]) if rec.get("dtype") else None
            shape = tuple(int(d) for d in rec["shape"]) if "shape" in rec else None
            assert isinstance(key, str) and isinstance(name, str) and layout in LAYOUTS
        except (KeyError, TypeError, ValueError, AssertionError):
            raise InputError(f"{META_KEY} has a malformed entry: {str(rec)[:120]}", path=path) from None
        var = by_key.get(key)
        if var is None:
            raise InputError(f"{META_KEY} lists {key!r} but the file has no such variable", path=path)
        e = Entry(var, name, layout, aliases, declared)
        if shape is not None and _rank_ok(var, layout) and e.shape != shape:
            raise InputError(f"variable {key!r} has shape {list(var.shape)} but tensor {name!r} was written with shape {list(shape)}", path=path)
        entries.append(e)
        used.add(key)
    return entries, [v for k, v in by_key.items() if k not in used]


def _rank_ok(var: Var, layout: str) -> bool:
    want = _RANK.get(layout)
    return want is None or len(var.shape) == want


def _validate(entries: list[Entry], config: dict[str, Any], path: Path | str, scheme: str) -> None:
    seen: dict[str, str] = {}
    for e in entries:
        v = e.var
        leaf = v.var.rsplit("/", 1)[-1]
        if e.layout == "bad":
            raise InputError(f"variable {v.key!r} is a kernel of shape {list(v.shape)}; a kernel has 2 to 4 dimensions", path=path)
        if not _rank_ok(v, e.layout) or (e.layout == SQUEEZE0 and v.shape[0] != 1):
            want = "[1, in, out]" if e.layout == SQUEEZE0 else f"{_RANK[e.layout]} dimensions"
            raise InputError(f"variable {v.key!r} has shape {list(v.shape)}, expected {want}", path=path)
        if scheme in ("hf-tf", "openai-gpt2"):
            if leaf in ("gamma", "beta") and len(v.shape) != 1:
                raise InputError(f"variable {v.key!r} is a layer-norm {leaf} of shape {list(v.shape)}; expected one dimension", path=path)
            if leaf == "embeddings" and len(v.shape) != 2:
                raise InputError(f"variable {v.key!r} is an embedding of shape {list(v.shape)}; expected [vocab, dim]", path=path)
        want_shape = expected_shape(e.name, config)
        if want_shape is not None and e.shape != want_shape:
            raise InputError(
                f"variable {v.key!r} ({e.name}) has shape {list(v.shape)}, which gives {list(e.shape)} "
                f"but config.json implies {list(want_shape)}", path=path)
        for n in (e.name, *e.aliases):
            if n in seen:
                raise InputError(f"variables {seen[n]!r} and {v.key!r} both map to tensor {n!r}", path=path)
            seen[n] = v.key


def build_tensors(entries: list[Entry], load: Callable[[str], np.ndarray], origin: str) -> list[Tensor]:
    """Lazy IR tensors over ``load(key)`` (which reads one variable as stored)."""
    out = []
    for e in entries:
        declared = e.dtype or e.var.dtype

        def loader(e: Entry = e, declared: dt.DType = declared) -> np.ndarray:
            a = np.asarray(load(e.var.key))
            a = to_hf_array(a, e.layout)
            if declared.numpy is not None and a.dtype != declared.numpy:
                a = a.astype(declared.numpy)
            return a

        out.append(Tensor(e.name, e.shape, declared, loader, aliases=e.aliases, origin=origin))
    return out


def safe_loader(load: Callable[[str], np.ndarray], origin: str,
                corrupt: tuple[type[BaseException], ...]) -> Callable[[str], np.ndarray]:
    """Turn what the reading library raises for damaged bytes (``corrupt``: h5py's and TensorFlow's
    error kinds) into a one-line InputError naming the file. Anything else (a MemoryError, a bug)
    is not bad input and passes through."""

    def run(key: str) -> np.ndarray:
        try:
            return load(key)
        except LmconvError:
            raise
        except corrupt as exc:
            msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise InputError(f"cannot read variable {key!r} (truncated or corrupt?): {msg}", path=origin) from None

    return run


def parse_meta(raw: bytes | str | None, path: Path | str) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        meta = json.loads(raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw)
        assert isinstance(meta, dict)
    except (ValueError, AssertionError, UnicodeDecodeError):
        raise InputError(f"{META_KEY} is not a JSON object", path=path) from None
    return meta


# ---- companions: config.json beside, or OpenAI's hparams.json -----------------------------------
def attach_tf_companions(model: Model, folder: Path, config_path: Path | None, scheme_hint: Iterable[str] = ()) -> None:
    """config.json (or ``--config``) and tokenizer files from ``folder``; for OpenAI's GPT-2 release,
    hparams.json, encoder.json and vocab.bpe stand in for config.json, vocab.json and merges.txt."""

    attach_companions(model, folder, config_path=config_path)
    if not model.config and (folder / "hparams.json").is_file() and is_openai_gpt2(scheme_hint):
        hp = parse_config((folder / "hparams.json").read_bytes(), folder / "hparams.json")
        try:
            n_ctx = int(hp["n_ctx"])
            model.config = {
                "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
                "vocab_size": int(hp["n_vocab"]), "n_positions": n_ctx, "n_ctx": n_ctx,
                "n_embd": int(hp["n_embd"]), "n_head": int(hp["n_head"]), "n_layer": int(hp["n_layer"]),
                "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
                "tie_word_embeddings": True, "bos_token_id": 50256, "eos_token_id": 50256,
            }
        except (KeyError, TypeError, ValueError):
            raise InputError("lacks n_vocab, n_ctx, n_embd, n_head or n_layer", path=folder / "hparams.json") from None
        if not model.tokenizer and (folder / "encoder.json").is_file() and (folder / "vocab.bpe").is_file():
            model.tokenizer = Tokenizer(files={
                "vocab.json": (folder / "encoder.json").read_bytes(),
                "merges.txt": (folder / "vocab.bpe").read_bytes(),
            })


# ---- writing ---------------------------------------------------------------------------------
@dataclass
class Out:
    """One variable to write: the IR tensor, its TF path and layout."""

    tensor: Tensor
    comps: list[str]  # path below the model scope, list indices as their own components
    layout: str
    h5_name: str = ""  # Keras weight name, with the model scope and ":0"
    ckpt_key: str = ""  # object-based checkpoint key
    stored_dtype: dt.DType | None = None  # when the container cannot hold the tensor's own dtype

    @property
    def var_name(self) -> str:
        return strip_var(self.h5_name)


@dataclass
class WritePlan:
    scope: str  # Keras model scope ("" for an unknown model)
    outs: list[Out] = field(default_factory=list)
    architecture: str | None = None


def _keras_path(comps: list[str]) -> str:
    """Path components as a Keras weight name: list indices join their list as ``name_._N``."""
    out: list[str] = []
    for c in comps:
        if c.isdigit() and out:
            out[-1] = f"{out[-1]}_._{c}"
        else:
            out.append(c)
    return "/".join(out)


def plan_write(model: Model) -> WritePlan:
    """TF names for every tensor of ``model``: HF-TF spelling for known families, the names
    themselves (split at ``/`` or ``.``) otherwise."""
    arch_name = model.architecture
    arch = TF_ARCHS.get(arch_name or "")
    plan = WritePlan(scope=keras_scope(arch.tf_class) if arch else "", architecture=arch_name)
    used_h5: set[str] = set()
    used_ckpt: set[str] = set()
    for t in model:
        if arch is not None and t.aliases:
            # Write a tie under its embedding name (what HF's TF models hold), the rest as aliases.
            names = (t.name, *t.aliases)
            primary = next((n for n in names if arch.kind(n) == "embedding"), t.name)
            if primary != t.name:
                t = t.replace(name=primary, aliases=tuple(n for n in names if n != primary))
        if arch is not None:
            comps = t.name.split(".")
            kind = arch.kind(t.name)
            layout = NONE
            if kind == "embedding" and comps[-1] == "weight":
                comps[-1] = "embeddings"
            elif kind == "layernorm":
                comps[-1] = {"weight": "gamma", "bias": "beta"}.get(comps[-1], comps[-1])
            elif kind == "dense" and comps[-1] == "weight" and len(t.shape) == 2:
                comps[-1], layout = "kernel", TRANSPOSE
            h5 = f"{plan.scope}/{_keras_path(comps)}:0"
            key = "/".join([CKPT_ROOT, *comps]) + OBJECT_SUFFIX
        else:
            comps = t.name.split("/") if "/" in t.name else t.name.split(".")
            comps = [c or "_" for c in comps]
            layout = NONE
            h5 = "/".join(comps) + ":0"
            key = "/".join(comps) + OBJECT_SUFFIX
        n = 1
        base_h5, base_key, base_comps = h5, key, comps
        while h5 in used_h5 or key in used_ckpt or strip_var(h5) in (META_KEY, OBJECT_GRAPH_KEY):
            n += 1
            comps = base_comps[:-1] + [f"{base_comps[-1]}_{n}"]
            h5 = f"{base_h5[:-2]}_{n}:0"
            key = f"{base_key[: -len(OBJECT_SUFFIX)]}_{n}{OBJECT_SUFFIX}"
        used_h5.add(h5)
        used_ckpt.add(key)
        plan.outs.append(Out(t, comps, layout, h5_name=h5, ckpt_key=key))
    return plan


def meta_record(plan: WritePlan, key_of: Callable[[Out], str], extra: dict[str, Any] | None = None) -> bytes:
    """The ``_lmconv_metadata`` JSON: exact names, ties and original dtypes (and ``extra`` keys: a
    family's name, layout and config, see :mod:`families`)."""
    recs = []
    for o in plan.outs:
        rec: dict[str, Any] = {"key": key_of(o), "name": o.tensor.name, "shape": list(o.tensor.shape)}
        if o.layout:
            rec["layout"] = o.layout
        if o.tensor.aliases:
            rec["aliases"] = list(o.tensor.aliases)
        if o.stored_dtype is not None and o.stored_dtype != o.tensor.dtype:
            rec["dtype"] = o.tensor.dtype.name
        recs.append(rec)
    meta = {"version": META_VERSION, "writer": "lmconv", "architecture": plan.architecture, **(extra or {}), "tensors": recs}
    return json.dumps(meta, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def tf_array(o: Out, arr: np.ndarray) -> np.ndarray:
    """The array as the TF container stores it (layout, and widened when the dtype needs it)."""
    a = to_tf_array(arr, o.layout)
    if o.stored_dtype is not None and o.stored_dtype != o.tensor.dtype:
        a = a.astype(o.stored_dtype.numpy)
    return a if a.flags.c_contiguous else np.array(a, order="C")  # (ascontiguousarray would make a scalar 1-D)
