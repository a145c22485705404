"""The Gemma families: Gemma (GGUF arch ``gemma``), Gemma 2 (``gemma2``), Gemma 3 (``gemma3``), and the
language model inside Gemma 3's vision-language model (``Gemma3ForConditionalGeneration``).

What llama.cpp does with them (its converter and its ``src/models/gemma*.cpp``), and so what this
module does both ways:

* RMSNorm weights: transformers computes ``x · (1 + w)``, llama.cpp ``x · w``, so every norm (q/k norms
  included) is stored as ``1 + w`` (a lossy :class:`~lmconv.rules.Shift` in float32) and read back ``− 1``.
* The embedding is multiplied by ``sqrt(hidden_size)`` at run time by both; nothing is stored for it.
* The output projection is the embedding (Gemma, Gemma 2: llama.cpp has no ``output`` tensor for them;
  Gemma 3 may carry an untied ``output.weight``). No rotary permutation: llama.cpp runs Gemma's rotary
  NeoX-style, as transformers does.
* The feed-forward activation is GELU (tanh approximation): llama.cpp's ``ggml_gelu`` may use a
  half-precision table, which the tests measure (see tests/families/test_gemma.py).
* Gemma 2: tanh soft-capping of the attention scores and of the final logits
  (``{arch}.attn_logit_softcapping``, ``{arch}.final_logit_softcapping``; llama.cpp's defaults are 50
  and 30), and a sliding window (``{arch}.attention.sliding_window``) on alternate layers.
* Gemma 3: q/k norms, final soft-capping when the config sets it, no attention soft-capping, and
  local/global layers: a sliding window with a local rotary base (``{arch}.rope.freq_base_swa``) on
  the sliding layers and the global base (``{arch}.rope.freq_base``, and the rope scaling, which only
  the global layers use) on the others. transformers 5 says this with ``layer_types`` and a
  ``rope_parameters`` per layer type; older configs with ``rope_theta``, ``rope_local_base_freq``,
  ``rope_scaling`` and ``sliding_window_pattern``.
* Which layers slide: llama.cpp's default pattern (Gemma 2: every other layer from the first; Gemma 3:
  five of six) unless ``{arch}.attention.sliding_window_pattern`` says otherwise, as a per-layer
  boolean array. It is written only when ``layer_types`` differs from the default, so a model with
  the usual pattern converts to the keys llama.cpp's own converter writes.
* Attention scale: transformers scales by ``query_pre_attn_scalar ** -0.5``; llama.cpp (no key for it)
  by ``head_dim ** -0.5``, or by ``(hidden_size / n_head) ** -0.5`` for the 27B layer counts. GGUF → HF
  writes what llama.cpp computes; HF → GGUF warns when a config asks for something else.
* Gemma3ForConditionalGeneration: the text tensors live under ``language_model.model.`` (as
  transformers saves them) or ``model.language_model.``; the vision tower and the projector are not
  part of a text GGUF (llama.cpp keeps them in a separate mmproj file) and are left out. Such a GGUF
  reads back as a Gemma3ForCausalLM folder.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from gguf import MODEL_ARCH, Keys
from lmconv import blocks as B
from lmconv.architectures import Config, HParam, Layout, short_float
from lmconv.errors import InputError
from lmconv.hookspecs import hookimpl
from lmconv.ir import Model, Tensor
from lmconv.rules import Rename, Rule, Shift

from ._decoder import DecoderFamily, shape_of
from ._gguf import (
    arch_name,
    decoder_hparams,
    gguf_name,
    rope_scaling_config,
    rope_scaling_meta,
)

#: llama.cpp stores every Gemma RMSNorm weight as 1 + w (transformers' Gemma RMSNorm multiplies by 1 + w)
NORM_SHIFT = 1.0
SLIDING, FULL = "sliding_attention", "full_attention"
MATRICES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
#: transformers 5's defaults for the keys a Gemma config.json may leave out (GemmaConfig, Gemma2Config,
#: Gemma3TextConfig): the values the HF model is built with when the file does not say
_COMMON_DEFAULTS: dict[str, Any] = {"num_key_value_heads": None, "head_dim": 256, "rms_norm_eps": 1e-6,
                                    "max_position_embeddings": 8192, "tie_word_embeddings": True,
                                    "attention_bias": False}
#: Gemma 3's default rotary bases: global and local (Gemma3TextConfig.default_theta)
GEMMA3_THETA = {FULL: 1_000_000.0, SLIDING: 10_000.0}
#: the activations llama.cpp's GELU computes (tanh approximation); anything else it does not run
GELU_TANH = ("gelu_pytorch_tanh", "gelu_new", "gelu_fast", "gelu")


def _swa_pattern(n_layer: int, n_pattern: int) -> list[bool]:
    """llama.cpp's ``set_swa_pattern(n_pattern)``: layer i slides unless it is the last of each group
    of ``n_pattern`` (0: every layer slides)."""
    return [n_pattern == 0 or (i % n_pattern) < (n_pattern - 1) for i in range(n_layer)]


class GemmaArchitecture(DecoderFamily):
    name = "gemma"
    hf_architectures = ("GemmaForCausalLM",)
    model_types = ("gemma",)
    model_arch = MODEL_ARCH.GEMMA
    description = "Gemma (RMSNorm stored as 1 + w, embedding scaled by sqrt(hidden), GELU, tied output)"
    rope_types = None
    #: the config key of the activation and what transformers uses when it is absent
    act_key = "hidden_act"
    #: transformers' defaults for this family (see :data:`_COMMON_DEFAULTS`)
    defaults: ClassVar[dict[str, Any]] = {**_COMMON_DEFAULTS, "hidden_act": "gelu_pytorch_tanh"}
    #: the norms of a layer, besides the final ``model.norm``
    layer_norms: tuple[str, ...] = ("input_layernorm", "post_attention_layernorm")
    #: whether llama.cpp's graph has an ``output`` tensor (else the output is always the embedding)
    gguf_output = False
    #: llama.cpp's default sliding-window pattern (None: no sliding window in this family)
    default_swa_pattern: int | None = None
    #: whether llama.cpp's graph always has sliding-window layers (Gemma 2), or only with a window key (Gemma 3)
    swa_always = False
    #: layer counts for which llama.cpp scales attention by (hidden / n_head) ** -0.5 (the 27B models)
    big_layer_counts: tuple[int, ...] = ()
    #: where the text model's tensors are, and the HF names of the output projection
    prefixes: tuple[str, ...] = ("model.",)
    output_names: tuple[str, ...] = ("lm_head.weight",)

    # ---- config ------------------------------------------------------------------------
    def text_config(self, config: Config) -> dict[str, Any]:
        """The config of the language model, with transformers' defaults for what it leaves out."""
        cfg: dict[str, Any] = {k: v for k, v in self.defaults.items()}
        cfg.update(config)
        if cfg.get("num_key_value_heads") is None and isinstance(cfg.get("num_attention_heads"), int):
            cfg["num_key_value_heads"] = cfg["num_attention_heads"]
        return cfg

    def check_config(self, config: Config, origin: str | None) -> None:
        super().check_config(self.text_config(config), origin)

    def n_layer(self, config: Config) -> int:
        return super().n_layer(self.text_config(config))

    def check_consistency(self, config: Config, origin: str | None) -> None:
        super().check_consistency(config, origin)
        layer_types = config.get("layer_types")
        if layer_types is not None:
            n = int(config["num_hidden_layers"])
            if (not isinstance(layer_types, list) or len(layer_types) != n
                    or any(t not in (SLIDING, FULL) for t in layer_types)):
                raise InputError(f"layer_types must list {n} of {SLIDING!r} / {FULL!r}, one per layer", path=origin)
            if SLIDING in layer_types and not (isinstance(config.get("sliding_window"), int)
                                               and config["sliding_window"] >= 1):
                raise InputError(f"sliding_window is {config.get('sliding_window')!r} but layer_types has sliding "
                                 "layers; it must be a whole number of at least 1", path=origin)

    def strip(self, hf_name: str) -> str | None:
        """``hf_name`` as the text model's own name (``model.…``/``lm_head.weight``), or None."""
        if hf_name in self.output_names:
            return "lm_head.weight"
        for p in self.prefixes:
            if hf_name.startswith(p):
                return "model." + hf_name[len(p):]
        return None

    def expected_shape(self, hf_name: str, config: Config) -> tuple[int | None, ...] | None:
        name = self.strip(hf_name)
        if name is None:
            return None
        cfg = self.text_config(config)
        size = self.head_dim(cfg)
        return shape_of(name, [(".self_attn.q_norm", (size,), None), (".self_attn.k_norm", (size,), None),
                               *self.shape_table(cfg)])

    # ---- what llama.cpp computes for a config ---------------------------------------------
    def layer_types(self, config: Config) -> list[str]:
        """Per layer, sliding or full attention (transformers' ``layer_types``, or the family's default)."""
        n = int(config["num_hidden_layers"])
        types = config.get("layer_types")
        if isinstance(types, list) and len(types) == n:
            return [str(t) for t in types]
        if self.default_swa_pattern is None:
            return [FULL] * n
        pattern = config.get("sliding_window_pattern", config.get("_sliding_window_pattern", self.default_swa_pattern))
        return [SLIDING if bool((i + 1) % int(pattern)) else FULL for i in range(n)]

    def llamacpp_query_scalar(self, config: Config) -> int:
        """The ``query_pre_attn_scalar`` llama.cpp's graph uses (it reads no key for it)."""
        if int(config["num_hidden_layers"]) in self.big_layer_counts:
            return int(config["hidden_size"]) // int(config["num_attention_heads"])
        return self.head_dim(config)

    def query_scalar(self, config: Config) -> float:
        return float(self.head_dim(config))

    def caveats(self, config: Config) -> list[str]:
        """What llama.cpp will compute differently from transformers for this config."""
        out = []
        act = config.get(self.act_key) or "gelu_pytorch_tanh"
        if act not in GELU_TANH:
            out.append(f"{self.act_key} is {act!r}; llama.cpp's {arch_name(self.model_arch)} graph computes GELU")
        if config.get("attention_bias"):
            out.append("attention_bias is set; llama.cpp's gemma graphs use no attention biases")
        return out

    # ---- GGUF --------------------------------------------------------------------------
    def gguf_rules(self, config: Config) -> Sequence[Rule]:
        rules: list[Rule] = []
        ma = self.model_arch
        layer = "model.layers.{bid}."
        names = (["model.embed_tokens.weight", "model.norm.weight"]
                 + [f"{layer}{n}.weight" for n in self.layer_norms] + [f"{layer}{m}.weight" for m in MATRICES])
        for hf in names:
            target = gguf_name(ma, hf)
            for prefix in self.prefixes:
                src = prefix + hf[len("model."):]
                rules.append(Shift(src, target, NORM_SHIFT) if hf.endswith("norm.weight") else Rename(src, target))
        if self.gguf_output:
            rules += [Rename(out, gguf_name(ma, "lm_head.weight")) for out in self.output_names]
        return rules

    def hparams(self) -> tuple[HParam, ...]:
        return decoder_hparams()

    def gguf_meta(self, config: Config) -> dict[str, Any]:
        a = arch_name(self.model_arch)
        size = self.head_dim(config)
        kv: dict[str, Any] = {Keys.Attention.KEY_LENGTH.format(arch=a): size,
                              Keys.Attention.VALUE_LENGTH.format(arch=a): size}
        kv.update(self.rope_meta(config, a))
        kv.update(self.swa_meta(config, a))
        return kv

    def rope_meta(self, config: Config, a: str) -> dict[str, Any]:
        return rope_scaling_meta(config, a)

    def swa_meta(self, config: Config, a: str) -> dict[str, Any]:
        if self.default_swa_pattern is None:
            return {}
        types = self.layer_types(config)
        sliding = [t == SLIDING for t in types]
        kv: dict[str, Any] = {}
        if not any(sliding) and not self.swa_always:
            return kv  # no window key: llama.cpp's Gemma 3 graph then has no sliding layer
        if config.get("sliding_window") is not None:
            kv[Keys.Attention.SLIDING_WINDOW.format(arch=a)] = int(config["sliding_window"])
        if sliding != _swa_pattern(len(types), self.default_swa_pattern):
            kv[Keys.Attention.SLIDING_WINDOW_PATTERN.format(arch=a)] = sliding
        return kv

    def gguf_config(self, meta: Config, config: dict[str, Any]) -> None:
        a = arch_name(self.model_arch)
        config["head_dim"] = int(meta.get(Keys.Attention.KEY_LENGTH.format(arch=a),
                                          config["hidden_size"] // config["num_attention_heads"]))
        self.rope_config(meta, a, config)
        self.swa_config(meta, a, config)

    def rope_config(self, meta: Config, a: str, config: dict[str, Any]) -> None:
        rope_scaling_config(meta, a, config)
        config.pop("rope_theta", None)

    def swa_config(self, meta: Config, a: str, config: dict[str, Any]) -> None:
        """``layer_types`` and ``sliding_window`` as llama.cpp's runtime reads its keys."""
        if self.default_swa_pattern is None:
            return
        n = int(config["num_hidden_layers"])
        window = meta.get(Keys.Attention.SLIDING_WINDOW.format(arch=a))
        pattern = meta.get(Keys.Attention.SLIDING_WINDOW_PATTERN.format(arch=a))
        if not self.swa_always and not window:  # Gemma 3 without a window: no sliding layer
            config["layer_types"] = [FULL] * n
            return
        if isinstance(pattern, list):
            sliding = [bool(x) for x in pattern[:n]] + [False] * max(0, n - len(pattern))
        else:
            sliding = _swa_pattern(n, int(pattern) if pattern is not None else self.default_swa_pattern)
        config["layer_types"] = [SLIDING if s else FULL for s in sliding]
        config["sliding_window"] = int(window) if window else 4096  # llama.cpp's Gemma 2 default

    def layouts(self) -> dict[str, Layout]:
        act = self.defaults.get(self.act_key, "gelu_pytorch_tanh")
        return {"gguf": Layout(
            "gguf", arch_name(self.model_arch), self.gguf_rules, self.hparams(),
            extra_meta=self.gguf_meta,  # on the config to_target made (text_config)
            extra_config=self.gguf_config,
            config_base={"architectures": [self.hf_architectures[0]], "model_type": self.model_types[0],
                         self.act_key: act},
        )}

    # ---- both ways -----------------------------------------------------------------------
    def to_target(self, model: Model, target: str, warn: Callable[[str], None] = lambda m: None
                  ) -> tuple[list[Tensor], dict[str, Any]]:
        """As :meth:`Architecture.to_target`, on the language model's config with transformers'
        defaults filled in, after warning about what llama.cpp will compute differently."""
        view = copy.copy(model)
        view.config = self.text_config(model.config)
        if target == "gguf":
            for message in self.caveats(view.config):
                warn(message)
        return super().to_target(view, target, warn)

    # ---- the reference forward pass ------------------------------------------------------
    def forward(self, model: Model, ids: Sequence[int], dtype: np.dtype) -> np.ndarray:
        cfg = self.text_config(model.config)
        W = B.Weights(model, dtype, self.name)
        prefix = next((p for p in self.prefixes if W.has(p + "embed_tokens.weight")), self.prefixes[0])
        n_head, n_kv = self.heads(cfg)
        head_dim = self.head_dim(cfg)
        eps = float(cfg.get("rms_norm_eps") or 1e-6)
        act = B.activation(cfg.get(self.act_key), "gelu_pytorch_tanh")
        n = len(ids)
        dt = np.dtype(dtype).type
        types = self.layer_types(cfg)
        ropes = {t: self.rotary(cfg, t, head_dim, dtype, n) for t in set(types)}
        masks = {t: B.causal_mask(n, int(cfg["sliding_window"]) if t == SLIDING else None) for t in set(types)}
        scale = self.query_scalar(cfg) ** -0.5
        softcap = cfg.get("attn_logit_softcapping") if self.model_arch == MODEL_ARCH.GEMMA2 else None
        post = "pre_feedforward_layernorm" in self.layer_norms

        def norm(x: np.ndarray, name: str) -> np.ndarray:
            return B.rms_norm(x, W(name), eps, offset=NORM_SHIFT)

        emb_w = W(prefix + "embed_tokens.weight")
        # transformers multiplies by the scale as a float32 tensor cast to the weights' dtype
        h = emb_w[np.asarray(ids)] * dt(np.float32(math.sqrt(int(cfg["hidden_size"]))))
        for i, kind in enumerate(types):
            p = f"{prefix}layers.{i}."
            x = norm(h, p + "input_layernorm.weight")
            q = B.heads(B.linear(x, W(p + "self_attn.q_proj.weight")), n_head, head_dim)
            k = B.heads(B.linear(x, W(p + "self_attn.k_proj.weight")), n_kv, head_dim)
            v = B.heads(B.linear(x, W(p + "self_attn.v_proj.weight")), n_kv, head_dim)
            if W.has(p + "self_attn.q_norm.weight"):
                q, k = norm(q, p + "self_attn.q_norm.weight"), norm(k, p + "self_attn.k_norm.weight")
            q, k = ropes[kind](q), ropes[kind](k)
            a = B.attention(q, k, v, scale, masks[kind], softcap=softcap)
            a = B.linear(a, W(p + "self_attn.o_proj.weight"))
            if post:
                a = norm(a, p + "post_attention_layernorm.weight")
            h = h + a
            x = norm(h, p + ("pre_feedforward_layernorm.weight" if post else "post_attention_layernorm.weight"))
            m = B.linear(act(B.linear(x, W(p + "mlp.gate_proj.weight"))) * B.linear(x, W(p + "mlp.up_proj.weight")),
                         W(p + "mlp.down_proj.weight"))
            if post:
                m = norm(m, p + "post_feedforward_layernorm.weight")
            h = h + m
        h = norm(h, prefix + "norm.weight")
        head = next((W(o) for o in self.output_names if W.has(o)), emb_w)
        logits = h @ head.T
        cap = cfg.get("final_logit_softcapping")
        if cap:
            logits = np.tanh(logits / dt(cap)) * dt(cap)
        return logits

    def rotary(self, config: Config, layer_type: str, head_dim: int, dtype: Any, n: int) -> B.Rotary:
        inv, pos_scale, attn_factor = B.rope_inv_freq(config, head_dim, dtype, seq_len=n)
        return B.Rotary(inv, n, dtype, pos_scale, attn_factor)


class Gemma2Architecture(GemmaArchitecture):
    name = "gemma2"
    hf_architectures = ("Gemma2ForCausalLM",)
    model_types = ("gemma2",)
    model_arch = MODEL_ARCH.GEMMA2
    description = ("Gemma 2 (Gemma plus attention and final logit soft-capping, sliding window on alternate "
                   "layers, post-attention and pre/post feed-forward norms)")
    optional_ints = ("num_key_value_heads", "head_dim", "max_position_embeddings", "query_pre_attn_scalar")
    act_key = "hidden_activation"
    defaults: ClassVar[dict[str, Any]] = {
        **_COMMON_DEFAULTS, "hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": 256,
        "sliding_window": 4096, "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0}
    layer_norms = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                   "post_feedforward_layernorm")
    default_swa_pattern = 2
    swa_always = True
    big_layer_counts = (46,)  # Gemma 2 27B

    def query_scalar(self, config: Config) -> float:
        return float(config.get("query_pre_attn_scalar") or self.head_dim(config))

    def query_caveats(self, config: Config) -> list[str]:
        if self.query_scalar(config) == self.llamacpp_query_scalar(config):
            return []
        return [(f"query_pre_attn_scalar is {config.get('query_pre_attn_scalar')} but llama.cpp scales attention by "
                 f"1/sqrt({self.llamacpp_query_scalar(config)}) for this model; it will compute something else")]

    def caveats(self, config: Config) -> list[str]:
        out = GemmaArchitecture.caveats(self, config) + self.query_caveats(config)
        for key, default in (("attn_logit_softcapping", 50.0), ("final_logit_softcapping", 30.0)):
            if config.get(key) is None:
                out.append(f"{key} is not set but llama.cpp's gemma2 graph always soft-caps (at {default:g} "
                           "without the key); it will compute something else")
        if config.get("tie_word_embeddings") is False:
            out.append("the output projection is untied; llama.cpp's gemma2 graph uses the embedding")
        return out

    def hparams(self) -> tuple[HParam, ...]:
        return decoder_hparams() + (
            HParam(Keys.LLM.ATTN_LOGIT_SOFTCAPPING, "attn_logit_softcapping", float),
            HParam(Keys.LLM.FINAL_LOGIT_SOFTCAPPING, "final_logit_softcapping", float),
        )

    def gguf_config(self, meta: Config, config: dict[str, Any]) -> None:
        super().gguf_config(meta, config)
        a = arch_name(self.model_arch)
        for key, hf, default in ((Keys.LLM.ATTN_LOGIT_SOFTCAPPING, "attn_logit_softcapping", 50.0),
                                 (Keys.LLM.FINAL_LOGIT_SOFTCAPPING, "final_logit_softcapping", 30.0)):
            config[hf] = short_float(meta.get(key.format(arch=a), default))  # llama.cpp's defaults
        config["query_pre_attn_scalar"] = self.llamacpp_query_scalar(config)


class Gemma3Architecture(Gemma2Architecture):
    name = "gemma3"
    hf_architectures = ("Gemma3ForCausalLM",)
    model_types = ("gemma3_text",)
    model_arch = MODEL_ARCH.GEMMA3
    description = ("Gemma 3 text (Gemma 2's norms, q/k norms, local/global layers with their own rotary "
                   "bases, optional final soft-capping, no attention soft-capping)")
    defaults: ClassVar[dict[str, Any]] = {
        **_COMMON_DEFAULTS, "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 131072,
        "query_pre_attn_scalar": 256, "sliding_window": 4096, "final_logit_softcapping": None,
        "attn_logit_softcapping": None, "num_attention_heads": 8, "num_key_value_heads": 4,
        "vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26}
    layer_norms = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                   "post_feedforward_layernorm", "self_attn.q_norm", "self_attn.k_norm")
    gguf_output = True
    default_swa_pattern = 6
    swa_always = False
    big_layer_counts = (62,)  # Gemma 3 27B

    def text_config(self, config: Config) -> dict[str, Any]:
        cfg = super().text_config(config)
        cfg["rope_parameters"] = self.rope_by_type(cfg)
        return cfg

    @staticmethod
    def rope_by_type(cfg: Config) -> dict[str, dict[str, Any]]:
        """transformers 5's per-layer-type rotary settings, from either spelling of the config."""
        given = cfg.get("rope_parameters")
        if isinstance(given, Mapping) and (FULL in given or SLIDING in given):
            out = {t: dict(given.get(t) or {}) for t in (FULL, SLIDING)}
        else:  # the older spelling: rope_theta / rope_local_base_freq / rope_scaling (global layers only)
            full = dict(given) if isinstance(given, Mapping) else {}
            if isinstance(cfg.get("rope_scaling"), Mapping):
                full.update(cfg["rope_scaling"])
            if cfg.get("rope_theta") is not None:
                full["rope_theta"] = cfg["rope_theta"]
            local = {"rope_theta": cfg["rope_local_base_freq"]} if cfg.get("rope_local_base_freq") is not None else {}
            out = {FULL: full, SLIDING: local}
        for t in (FULL, SLIDING):
            p = out[t]
            if "rope_type" not in p:
                p["rope_type"] = p.pop("type", "default")
            p.setdefault("rope_theta", GEMMA3_THETA[t])
        return out

    def caveats(self, config: Config) -> list[str]:
        out = GemmaArchitecture.caveats(self, config) + self.query_caveats(config)
        if config.get("attn_logit_softcapping") is not None:
            out.append("attn_logit_softcapping is set; neither transformers' Gemma 3 nor llama.cpp use it")
        local = config["rope_parameters"][SLIDING]
        if local.get("rope_type", "default") != "default":
            out.append(f"the sliding layers' rope type is {local['rope_type']!r}; llama.cpp scales only the global "
                       "layers' rotary")
        return out

    def hparams(self) -> tuple[HParam, ...]:
        return tuple(h for h in decoder_hparams() if h.key != Keys.Rope.FREQ_BASE) + (
            HParam(Keys.LLM.FINAL_LOGIT_SOFTCAPPING, "final_logit_softcapping", float),
        )

    def rope_meta(self, config: Config, a: str) -> dict[str, Any]:
        params = config["rope_parameters"]
        kv: dict[str, Any] = rope_scaling_meta({"rope_parameters": params[FULL]}, a)
        kv[Keys.Rope.FREQ_BASE.format(arch=a)] = float(params[FULL]["rope_theta"])
        kv[Keys.Rope.FREQ_BASE_SWA.format(arch=a)] = float(params[SLIDING]["rope_theta"])
        return kv

    def rope_config(self, meta: Config, a: str, config: dict[str, Any]) -> None:
        full: dict[str, Any] = {"rope_theta": short_float(meta.get(Keys.Rope.FREQ_BASE.format(arch=a), 10000.0))}
        rope_scaling_config(meta, a, full)  # rope scaling: the global layers' only
        config["rope_parameters"] = {
            FULL: full["rope_parameters"],
            # llama.cpp's default local base is 10000, which is also transformers'
            SLIDING: {"rope_type": "default",
                      "rope_theta": short_float(meta.get(Keys.Rope.FREQ_BASE_SWA.format(arch=a), 10000.0))},
        }

    def gguf_config(self, meta: Config, config: dict[str, Any]) -> None:
        GemmaArchitecture.gguf_config(self, meta, config)
        cap = meta.get(Keys.LLM.FINAL_LOGIT_SOFTCAPPING.format(arch=arch_name(self.model_arch)))
        config["final_logit_softcapping"] = short_float(cap) if cap else None
        config["query_pre_attn_scalar"] = self.llamacpp_query_scalar(config)

    def rotary(self, config: Config, layer_type: str, head_dim: int, dtype: Any, n: int) -> B.Rotary:
        params = config["rope_parameters"][layer_type]
        inv, pos_scale, attn_factor = B.rope_inv_freq(config, head_dim, dtype, params=params, seq_len=n)
        return B.Rotary(inv, n, dtype, pos_scale, attn_factor)


class Gemma3VisionArchitecture(Gemma3Architecture):
    """The language model of Gemma3ForConditionalGeneration: GGUF holds the text model only."""

    name = "gemma3-vlm"
    hf_architectures = ("Gemma3ForConditionalGeneration",)
    model_types = ("gemma3",)
    description = "Gemma 3 vision-language model: its language model (vision tower and projector left out)"
    hf_embedding = "language_model.model.embed_tokens.weight"
    #: transformers saves the text model under language_model.model.; newer checkpoints use model.language_model.
    prefixes = ("language_model.model.", "model.language_model.")
    output_names = ("lm_head.weight", "language_model.lm_head.weight")
    vision_prefixes = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.")

    def text_config(self, config: Config) -> dict[str, Any]:
        text = config.get("text_config")
        if not isinstance(text, Mapping):  # already the language model's config
            return super().text_config(config)
        cfg = dict(text)
        if "tie_word_embeddings" in config:
            cfg["tie_word_embeddings"] = config["tie_word_embeddings"]
        # transformers' Gemma3ForConditionalGeneration computes its logits without the text config's
        # final soft-capping: what it runs is what is converted
        cfg["final_logit_softcapping"] = None
        return super().text_config(cfg)

    def is_vision(self, name: str) -> bool:
        return name.startswith(self.vision_prefixes)

    def untied_tensors(self, model: Model) -> list[Tensor]:
        return [t for t in super().untied_tensors(model) if not self.is_vision(t.name)]

    def to_target(self, model: Model, target: str, warn: Callable[[str], None] = lambda m: None
                  ) -> tuple[list[Tensor], dict[str, Any]]:
        vision = sum(1 for t in model if self.is_vision(t.name))
        text = model.config.get("text_config")
        if isinstance(text, Mapping) and text.get("final_logit_softcapping"):
            warn("text_config.final_logit_softcapping is left out: transformers' Gemma3ForConditionalGeneration "
                 "does not apply it")
        if vision:
            warn(f"{vision} vision tower and projector tensors are left out: a {target} model holds the language "
                 "model (llama.cpp keeps the vision part in a separate mmproj file)")
        return super().to_target(model, target, warn)

    def from_target(self, tensors: Sequence[Tensor], config: dict[str, Any], target: str,
                    origin: str | None = None) -> tuple[list[Tensor], dict[str, Any]]:
        """A GGUF holds the language model only, even one whose stored config is the whole vision-language
        model's: it reads back as the text model (a Gemma3ForCausalLM folder), config included."""
        text = TEXT_MODEL.text_config(self.text_config(config))
        text.update(architectures=list(TEXT_MODEL.hf_architectures), model_type=TEXT_MODEL.model_types[0])
        return TEXT_MODEL.from_target(tensors, text, target, origin)


TEXT_MODEL = Gemma3Architecture()


@hookimpl
def register_architectures(register: Any) -> None:
    register(GemmaArchitecture())
    register(Gemma2Architecture())
    # Both Gemma 3 families are GGUF's "gemma3"; the text model registers last, so that a gemma3 GGUF
    # reads back as a Gemma3ForCausalLM folder (the vision part was never in it).
    register(Gemma3VisionArchitecture())
    register(TEXT_MODEL)
