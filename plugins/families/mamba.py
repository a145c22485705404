"""Mamba (``MambaForCausalLM``, GGUF arch ``mamba``): the recurrent Mamba-1 language model.

Each block is an RMSNorm and a selective state-space mixer: ``in_proj`` makes x and a gate z, x goes
through a causal depthwise convolution and SiLU, ``x_proj`` makes the time step (``dt_proj``,
softplus) and the input-dependent B and C, and a selective scan with the fixed ``A = -exp(A_log)``
and skip ``D`` runs along the sequence; its output, gated by ``silu(z)``, goes through ``out_proj``.

llama.cpp stores ``A`` itself (``blk.N.ssm_a``) rather than ``A_log``, and the convolution as a 2-D
``[channels, taps]`` tensor (HF keeps Conv1d's ``[channels, 1, taps]``). ``A_log → -exp(A_log) →
log(-A)`` cannot be exact (exp maps several float32 values to one), so that rule declares its bound:
computed in float64 and rounded once each way, the value that comes back is within 2^-23 of the one
that went (|Δ| ≤ 2u: A's rounding moves log(-A) by at most u, and the nearest float32 to that is no
farther than the original). GGUF → HF → GGUF gives back the stored A untouched (a Derivation).

llama.cpp's mamba runs only an expansion of 2 (``intermediate_size = 2·hidden_size``), a convolution
with bias and projections without: other configs are refused. Its keys: ``ssm.conv_kernel``,
``ssm.inner_size``, ``ssm.state_size``, ``ssm.time_step_rank``. The output head is tied by default.
A GGUF of arch mamba with ``ssm.dt_b_c_rms`` set is FalconMamba (norms on dt, B and C), which
MambaForCausalLM does not compute: refused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from gguf import MODEL_ARCH, Keys

from lmconv import blocks as B
from lmconv.architectures import Architecture, Config, HParam, Layout
from lmconv.bounds import U32, Bound, declare
from lmconv.errors import InputError
from lmconv.hookspecs import hookimpl
from lmconv.ir import Model
from lmconv.rules import Arrays, Map, Rule, Shape

from ._gguf import arch_name, gguf_name, renames

ARCH = MODEL_ARCH.MAMBA
P = "backbone.layers.{bid}."
CONV = P + "mixer.conv1d.weight"
A_LOG = P + "mixer.A_log"
MAMBA_LAYOUT = (
    "backbone.embeddings.weight",
    P + "norm.weight",
    P + "mixer.in_proj.weight",
    CONV,
    P + "mixer.conv1d.bias",
    P + "mixer.x_proj.weight",
    P + "mixer.dt_proj.weight",
    P + "mixer.dt_proj.bias",
    A_LOG,
    P + "mixer.D",
    P + "mixer.out_proj.weight",
    "backbone.norm_f.weight",
    "lm_head.weight",
)
HPARAMS = (
    HParam(Keys.LLM.VOCAB_SIZE, "vocab_size"),
    HParam(Keys.LLM.EMBEDDING_LENGTH, "hidden_size", required=True),
    HParam(Keys.LLM.BLOCK_COUNT, "num_hidden_layers", required=True),
    HParam(Keys.SSM.CONV_KERNEL, "conv_kernel", default=4),
    HParam(Keys.SSM.STATE_SIZE, "state_size", default=16),
    HParam(Keys.Attention.LAYERNORM_RMS_EPS, "layer_norm_epsilon", float, default=1e-5),
)
#: llama.cpp's converter writes this context length: a recurrent model has no trained one
CONTEXT_LENGTH = 2**20

#: A = -exp(A_log) in float32 and back (see the module docstring); declared when the plugin loads, so that a
#: verification policy may name it even where no mamba rule was built (HF folder against HF folder)
A_BOUND = declare(Bound("negexp:A_log", abs=2 * U32 * 1.001,
                why="A = -exp(A_log) and A_log = log(-A), each computed in float64 and rounded once to float32: "
                    "|A_log' - A_log| <= 2u, u = 2^-24 (for A_log within float32's exp range, |A_log| < 87)"))


def _neg_exp(arrays: Arrays, config: Config) -> Arrays:
    return [(-np.exp(arrays[0].astype(np.float64))).astype(np.float32)]


def _log_neg(arrays: Arrays, config: Config) -> Arrays:
    a = arrays[0].astype(np.float64)
    if not np.all(np.isfinite(a) & (a < 0)):
        raise InputError("ssm_a holds a value that is not a finite negative number; A = -exp(A_log) always is")
    return [np.log(-a).astype(np.float32)]


def _squeeze(arrays: Arrays, config: Config) -> Arrays:
    return [arrays[0].reshape(arrays[0].shape[0], arrays[0].shape[-1])]


def _unsqueeze(arrays: Arrays, config: Config) -> Arrays:
    return [arrays[0].reshape(arrays[0].shape[0], 1, arrays[0].shape[-1])]


def _squeezed(shapes: list[Shape], config: Config) -> list[Shape]:
    return [(shapes[0][0], shapes[0][-1])]


def _unsqueezed(shapes: list[Shape], config: Config) -> list[Shape]:
    return [(shapes[0][0], 1, shapes[0][-1])]


class MambaArchitecture(Architecture):
    name = "mamba"
    hf_architectures = ("MambaForCausalLM",)
    model_types = ("mamba",)
    description = "Mamba-1 (recurrent: selective state-space mixers, no attention)"
    hf_embedding = "backbone.embeddings.weight"
    required_ints = ("num_hidden_layers", "hidden_size", "vocab_size")
    optional_ints = ("state_size", "conv_kernel", "intermediate_size", "expand")
    summary_keys = ("state_size", "conv_kernel", "expand", "time_step_rank")

    # ---- config ------------------------------------------------------------------------
    def inner(self, config: Config) -> int:
        return int(config.get("intermediate_size") or int(config.get("expand") or 2) * int(config["hidden_size"]))

    def dt_rank(self, config: Config) -> int:
        rank = config.get("time_step_rank")
        return math.ceil(int(config["hidden_size"]) / 16) if rank in (None, "auto") else int(rank)

    def check_consistency(self, config: Config, origin: str | None) -> None:
        rank = config.get("time_step_rank")
        if rank not in (None, "auto") and (type(rank) is not int or not 1 <= rank < 2**40):
            raise InputError(f"time_step_rank is {rank!r} in the config; it must be \"auto\" or a whole number of at "
                             "least 1", path=origin)
        hidden, inner = config["hidden_size"], self.inner(config)
        if inner != 2 * hidden:
            raise InputError(f"intermediate_size {inner} is not 2 × hidden_size {hidden}: llama.cpp's mamba runs "
                             "only an expansion factor of 2", path=origin)
        if config.get("use_bias"):
            raise InputError("use_bias is set: llama.cpp's mamba has no in_proj/out_proj biases", path=origin)
        if config.get("use_conv_bias") is False:
            raise InputError("use_conv_bias is false: llama.cpp's mamba needs the convolution's bias", path=origin)
        if (config.get("hidden_act") or "silu") != "silu":
            raise InputError(f"hidden_act is {config['hidden_act']!r}: Mamba's mixer uses silu", path=origin)

    def expected_shape(self, hf_name: str, config: Config) -> tuple[int | None, ...] | None:
        hidden, inner = config["hidden_size"], self.inner(config)
        state, k, rank = int(config.get("state_size") or 16), int(config.get("conv_kernel") or 4), self.dt_rank(config)
        for suffix, shape in (
            (".mixer.in_proj.weight", (2 * inner, hidden)), (".mixer.conv1d.weight", (inner, 1, k)),
            (".mixer.conv1d.bias", (inner,)), (".mixer.x_proj.weight", (rank + 2 * state, inner)),
            (".mixer.dt_proj.weight", (inner, rank)), (".mixer.dt_proj.bias", (inner,)),
            (".mixer.A_log", (inner, state)), (".mixer.D", (inner,)), (".mixer.out_proj.weight", (hidden, inner)),
            (".norm.weight", (hidden,)), ("backbone.norm_f.weight", (hidden,)),
            ("backbone.embeddings.weight", (None, hidden)), ("lm_head.weight", (None, hidden)),
        ):
            if hf_name.endswith(suffix):
                return shape
        return None

    # ---- GGUF --------------------------------------------------------------------------
    def gguf_rules(self, config: Config) -> Sequence[Rule]:
        rules: list[Rule] = []
        for hf in MAMBA_LAYOUT:
            if hf == CONV:  # [channels, 1, taps] ↔ [channels, taps]: a reshape, rows untouched
                rules.append(Map([hf], [gguf_name(ARCH, hf)], _squeeze, _unsqueeze, forward_shapes=_squeezed,
                                 inverse_shapes=_unsqueezed, name="squeeze", blocks_ok=True))
            elif hf == A_LOG:
                rules.append(Map([hf], [gguf_name(ARCH, hf)], _neg_exp, _log_neg, name="negexp", bound=A_BOUND,
                                 float_math=True))
            else:
                rules += renames(ARCH, [hf])
        return rules

    def gguf_meta(self, config: Config) -> dict[str, Any]:
        a = arch_name(ARCH)
        return {Keys.LLM.CONTEXT_LENGTH.format(arch=a): CONTEXT_LENGTH,
                Keys.SSM.INNER_SIZE.format(arch=a): self.inner(config),
                Keys.SSM.TIME_STEP_RANK.format(arch=a): self.dt_rank(config),
                Keys.SSM.DT_B_C_RMS.format(arch=a): False}

    def gguf_config(self, meta: Config, config: dict[str, Any]) -> None:
        a = arch_name(ARCH)
        hidden = int(config["hidden_size"])
        inner = int(meta.get(Keys.SSM.INNER_SIZE.format(arch=a)) or 2 * hidden)
        config["intermediate_size"] = inner
        config["expand"] = inner // hidden if inner % hidden == 0 else inner / hidden
        rank = meta.get(Keys.SSM.TIME_STEP_RANK.format(arch=a))
        config["time_step_rank"] = int(rank) if rank is not None else math.ceil(hidden / 16)
        if meta.get(Keys.SSM.DT_B_C_RMS.format(arch=a)):
            raise InputError("ssm.dt_b_c_rms is set: that is FalconMamba, which MambaForCausalLM does not compute")

    def layouts(self) -> dict[str, Layout]:
        return {"gguf": Layout(
            "gguf", arch_name(ARCH), self.gguf_rules, HPARAMS, extra_meta=self.gguf_meta, extra_config=self.gguf_config,
            config_base={"architectures": ["MambaForCausalLM"], "model_type": "mamba", "hidden_act": "silu",
                         "use_bias": False, "use_conv_bias": True, "residual_in_fp32": True,
                         # MambaConfig's defaults are GPT-NeoX's ids: the tokenizer's (when given) replace them
                         "bos_token_id": None, "eos_token_id": None, "pad_token_id": None},
        )}

    # ---- the reference forward pass ------------------------------------------------------
    def forward(self, model: Model, ids: Sequence[int], dtype: np.dtype) -> np.ndarray:
        cfg = model.config
        W = B.Weights(model, dtype, self.name)
        eps = float(cfg.get("layer_norm_epsilon", 1e-5))
        inner, rank, state = self.inner(cfg), self.dt_rank(cfg), int(cfg.get("state_size") or 16)
        emb_w = W("backbone.embeddings.weight")
        h = emb_w[np.asarray(ids)]
        for i in range(self.n_layer(cfg)):
            p = f"backbone.layers.{i}."
            m = p + "mixer."
            x = B.rms_norm(h, W(p + "norm.weight"), eps)
            xz = B.linear(x, W(m + "in_proj.weight"), W.opt(m + "in_proj.bias"))
            x, z = xz[:, :inner], xz[:, inner:]
            conv = W(m + "conv1d.weight")
            x = B.silu(B.causal_conv1d(x, conv.reshape(conv.shape[0], conv.shape[-1]), W.opt(m + "conv1d.bias")))
            dbc = B.linear(x, W(m + "x_proj.weight"))
            dt, b, c = dbc[:, :rank], dbc[:, rank:rank + state], dbc[:, rank + state:]
            dt = B.softplus(B.linear(dt, W(m + "dt_proj.weight"), W.opt(m + "dt_proj.bias")))
            a = -np.exp(W(m + "A_log"))
            y = B.selective_scan(x, dt, a, b, c, W(m + "D")) * B.silu(z)
            h = h + B.linear(y, W(m + "out_proj.weight"), W.opt(m + "out_proj.bias"))
        h = B.rms_norm(h, W("backbone.norm_f.weight"), eps)
        head = W("lm_head.weight") if W.has("lm_head.weight") else emb_w
        return h @ head.T


@hookimpl
def register_architectures(register: Any) -> None:
    register(MambaArchitecture())
