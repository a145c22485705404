"""A third-party plugin that uses only lmconv's documented plugin API (tests/test_core_contract.py).

It adds what the core must let a plugin add without any change to the core:

* a model family gguf-py does not know, ``toymlp``, with a rule of every kind (rename, transpose,
  experts stacked N→1, a lossy shift with its bound, a tensor generated from the config), its
  hyperparameters under GGUF keys, and its own reference forward pass;
* a quantiser with a block type nobody else declares, ``toy8``, and the error bound of that type;
* a format, ``toyblk``, that stores any dtype including block types, and an option,
  ``--toy-note INT``, that reaches its writer typed.

``TOY_BOUND_SCALE`` (an environment variable) scales the declared bound, so that a test can give
the quantiser a bound that is too tight and watch verification fail.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lmconv import blocks as B
from lmconv import dtypes as dt
from lmconv.architectures import Architecture, HParam, Layout
from lmconv.bounds import U16, block_bound
from lmconv.errors import InputError
from lmconv.formats import Format, ReadOptions, WriteOptions
from lmconv.hookspecs import hookimpl
from lmconv.ir import Model, Tensor
from lmconv.options import Option
from lmconv.quantizers import Quantizer
from lmconv.registry import get_registry
from lmconv.rules import Generated, Rename, Shift, Stack, Transpose


# ----------------------------------------------------------------------------- the family
def _scale(config: Any) -> np.ndarray:
    return np.full(int(config["hidden_size"]), float(config["toy_scale"]), np.float32)


def _fold_scale(values: np.ndarray, config: Any) -> dict[str, Any]:
    if values.size == 0 or not np.all(values == values[0]):
        raise InputError("toy_scale.weight must hold one value")
    return {"toy_scale": float(values[0])}


class ToyMlp(Architecture):
    name = "toymlp"
    hf_architectures = ("ToyMlpForCausalLM",)
    model_types = ("toymlp",)
    description = "a toy MLP language model (test plugin)"
    hf_embedding = "embed.weight"
    hf_output = "head.weight"
    required_ints = ("vocab_size", "hidden_size", "num_hidden_layers", "num_experts")

    def layouts(self) -> dict[str, Layout]:
        rules = [
            Rename("embed.weight", "token_embd.weight"),
            Shift("layers.{bid}.norm.weight", "blk.{bid}.attn_norm.weight", 1.0),
            Stack("layers.{bid}.experts.{xid}.weight", "blk.{bid}.ffn_up_exps.weight", lambda c: int(c["num_experts"])),
            Transpose("layers.{bid}.proj.weight", "blk.{bid}.ffn_down.weight"),
            Rename("head.weight", "output.weight"),
            Generated("toy_scale.weight", _scale, _fold_scale),
        ]
        hparams = (
            HParam("{arch}.vocab_size", "vocab_size", required=True),
            HParam("{arch}.embedding_length", "hidden_size", required=True),
            HParam("{arch}.block_count", "num_hidden_layers", required=True),
            HParam("{arch}.expert_count", "num_experts", required=True),
            HParam("{arch}.attention.layer_norm_rms_epsilon", "rms_norm_eps", float, default=1e-6),
        )
        base = {"architectures": ["ToyMlpForCausalLM"], "model_type": "toymlp"}
        return {"gguf": Layout("gguf", "toymlp", lambda config: rules, hparams, config_base=base)}

    def forward(self, model: Model, ids: Sequence[int], dtype: np.dtype) -> np.ndarray:
        cfg = model.config
        W = B.Weights(model, dtype, self.name)
        h = W("embed.weight")[np.asarray(ids)]
        for i in range(int(cfg["num_hidden_layers"])):
            x = B.rms_norm(h, W(f"layers.{i}.norm.weight"), float(cfg.get("rms_norm_eps", 1e-6)))
            experts = [W(f"layers.{i}.experts.{e}.weight") for e in range(int(cfg["num_experts"]))]
            y = np.mean([B.silu(B.linear(x, w)) for w in experts], axis=0)
            h = h + y @ W(f"layers.{i}.proj.weight")  # stored [in, out]
        return dtype.type(cfg["toy_scale"]) * (h @ W("head.weight").T)


# ----------------------------------------------------------------------------- the quantiser
TOY8 = dt.block_type("toy8", 16, 18)  # 16 weights: an f16 scale and 16 int8 levels


def toy8_quantize(rows: np.ndarray) -> np.ndarray:
    blocks = np.ascontiguousarray(rows, dtype=np.float32).reshape(-1, 16)
    d = (np.abs(blocks).max(axis=1, keepdims=True) / 127).astype(np.float16)
    inv = np.divide(1.0, d.astype(np.float32), out=np.zeros_like(d, dtype=np.float32), where=d != 0)
    q = np.clip(np.rint(blocks * inv), -127, 127).astype(np.int8)
    out = np.concatenate([d.view(np.uint8), q.view(np.uint8)], axis=1)
    return out.reshape(*rows.shape[:-1], rows.shape[-1] // 16 * 18)


def toy8_dequantize(data: np.ndarray) -> np.ndarray:
    raw = np.ascontiguousarray(data).reshape(-1, 18)
    d = raw[:, :2].copy().view(np.float16).astype(np.float32)
    q = raw[:, 2:].copy().view(np.int8).astype(np.float32)
    return (d * q).reshape(*data.shape[:-1], data.shape[-1] // 18 * 16)


def toy8_bound() -> Any:
    scale = float(os.environ.get("TOY_BOUND_SCALE", "1"))
    return block_bound("toy8", 16, (1 / 254 + U16) * scale, scale_levels=127,
                       why="d = max|x|/127 in f16, q = round(x/d): |err| <= d/2 + 127·|d - f16(d)|")


# ----------------------------------------------------------------------------- the format
class ToyBlocks(Format):
    name = "toyblk"
    extensions = (".toyblk",)
    description = "a JSON header line and raw tensor bytes, any dtype (test plugin)"
    stores_quantized = True

    def sniff(self, path: Path) -> bool:
        if not path.is_file():
            return False
        with open(path, "rb") as fh:
            return fh.read(9) == b'{"toyblk"'

    def prepare(self, model: Model, options: WriteOptions) -> Model:
        if not options.quant:
            return super().prepare(model, options)
        q = get_registry().quantizer(options.quant)
        out = []
        for t in model:
            if t.dtype.is_float and len(t.shape) == 2 and t.shape[-1] % q.block_size == 0:
                t = t.cast(dt.F32).map(q.quantize, dtype=q.dtype, note=f"quant:{q.name}", rows=True)
            out.append(t)
        return model.with_tensors(out)

    def write(self, model: Model, path: Path, options: WriteOptions) -> list[Path]:
        note = options.extra.get("toy_note")
        header = {"toyblk": 1, "note": note, "note_type": type(note).__name__, "config": model.config,
                  "tensors": [[t.name, t.dtype.name, list(t.shape)] for t in model]}
        with open(path, "wb") as fh:
            fh.write(json.dumps(header).encode() + b"\n")
            for t in model:
                fh.write(np.ascontiguousarray(t.load()).tobytes())
                options.progress(t.nbytes)
        return [path]

    def read(self, path: Path, options: ReadOptions) -> Model:
        with open(path, "rb") as fh:
            header = json.loads(fh.readline())
            offset = fh.tell()
        model = Model(config=header["config"], source=str(path), format=self.name)
        for name, dtype_name, shape in header["tensors"]:
            d = dt.get(dtype_name)
            start, n = offset, d.nbytes(tuple(shape))
            store = d.numpy if d.numpy is not None else np.dtype(np.uint8)

            def load(start: int = start, n: int = n, d: Any = d, shape: Any = tuple(shape), store: Any = store) -> np.ndarray:
                raw = np.fromfile(path, dtype=np.uint8, count=n, offset=start)
                return raw.view(store).reshape(d.storage_shape(shape))

            model.add(Tensor(name, tuple(shape), d, load, origin=str(path)))
            offset += n
        return model


# ----------------------------------------------------------------------------- the hooks
@hookimpl
def register_architectures(register: Any) -> None:
    register(ToyMlp())


@hookimpl
def register_quantizers(register: Any) -> None:
    register(Quantizer("toy8", TOY8, toy8_quantize, toy8_dequantize, "int8 levels over blocks of 16", toy8_bound()))


@hookimpl
def register_formats(register: Any) -> None:
    register(ToyBlocks())


@hookimpl
def register_options(register: Any) -> None:
    register(Option("--toy-note", int, "A number the toyblk writer records in its header.", metavar="INT"))
