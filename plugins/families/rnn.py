"""Recurrent language models: PyTorch's word_language_model layout, to Keras and TensorFlow and back.

The PyTorch side is a word or character LM as in PyTorch's classic ``word_language_model`` example:
``encoder`` (``nn.Embedding``), ``rnn`` (``nn.LSTM`` or ``nn.GRU``: stacked, optionally bidirectional,
an LSTM optionally with ``proj_size``), ``decoder`` (``nn.Linear``), optionally tied to the encoder;
a bidirectional encoder may come without the decoder. Its state_dict names are the canonical names
(``encoder.weight``, ``rnn.weight_ih_l0``, ``rnn.bias_hh_l1_reverse``, ``rnn.weight_hr_l0``,
``decoder.weight``, ``decoder.bias``), and a bare state_dict is enough: :meth:`RNNArchitecture.infer_config`
reads every config key from the names and shapes.

Config keys (config.json; the family's own, documented in README "Recurrent models"):

=======================  =================================================================
``architectures``        ``["RNNLanguageModel"]``; ``model_type`` ``"rnnlm"``
``rnn_type``             ``"LSTM"`` or ``"GRU"``
``vocab_size``           rows of the embedding (``ntoken``)
``embedding_size``       its width (``ninp``)
``hidden_size``          the cell's hidden size (``nhid``)
``num_hidden_layers``    stacked layers (``nlayers``)
``bidirectional``        a ``_reverse`` direction per layer; layer outputs are [forward, backward]
``proj_size``            LSTM projection size (``weight_hr_l{k}``), 0 for none
``rnn_bias``             the recurrent layers have biases (``bias=True``)
``has_decoder``          a ``decoder`` (``nn.Linear`` to the vocabulary) follows the last layer
``decoder_bias``         the decoder has a bias
``tie_word_embeddings``  ``decoder.weight`` is ``encoder.weight``
``tf1``                  (TF1 checkpoints only) the variable names to write back and ``forget_bias``
``tf_layout``            (set by the TF reader) ``"tf.v1"``: write TF checkpoints in TF1's layout again
=======================  =================================================================

Layouts (target → what it holds, in Keras' weight order):

* ``h5`` — Keras 2 / tf.keras ``save_weights`` h5: ``embedding/embeddings``, ``lstm_1/lstm_cell/kernel`` …,
  ``bidirectional/forward_lstm/lstm_cell/kernel``, ``dense/kernel``, ``dense/bias``. Keras loads it by
  position, and so does lmconv when a file's names are another Keras' (``sequential_3/lstm_5/…``).
* ``h5.weights`` — Keras 3 ``.weights.h5``: ``layers/lstm_1/cell/vars/0`` …, ``layers/bidirectional/
  forward_layer/cell/vars/2``, ``layers/dense/vars/0``.
* ``tf`` — ``tf.train.Checkpoint(model=m)`` of that Keras 3 model: ``model/_functional/_operations/2/cell/kernel``.
* ``tf.v1`` — a TF1 ``MultiRNNCell`` of ``BasicLSTMCell`` / ``LSTMCell`` / ``LSTMBlockCell`` (name-based).

Gates and biases. PyTorch's LSTM stacks i, f, g, o in the rows of ``weight_ih [4H, in]`` and
``weight_hh [4H, H]`` with two biases; Keras' LSTM stacks i, f, c, o (the same order) in the columns
of ``kernel [in, 4H]`` and ``recurrent_kernel [H, 4H]`` with one bias: transposed, and the bias is
``bias_ih + bias_hh``. A sum cannot be split back, so the way back puts the whole bias in ``bias_ih``
and zeros in ``bias_hh``: the same function, and ``load_state_dict(strict=True)`` takes it (a model that
came from Keras goes back bit for bit). That rule names its step (``sum_biases:bias_ih+bias_hh``,
declared with no element-wise bound: the split may change arbitrarily, the sum may not), so that
``lmconv verify`` shows the pair as such and ``--logits`` compares what the model computes. PyTorch's GRU
has r, z, n, Keras' GRU z, r, h: the first two gate blocks swap; Keras' ``reset_after=True`` bias
``[2, 3H]`` is exactly [bias_ih; bias_hh] (its recurrent bias sits inside the reset product as
PyTorch's does), so a GRU goes both ways bit for bit. ``reset_after=False`` applies the reset gate
before the recurrent matmul: refused. TF1 cells hold one ``kernel [in + H, 4H]`` over concat(x, h)
with gates i, j, f, o, and add ``forget_bias`` to f at run time without storing it: reading puts
the stored bias in ``bias_ih`` and ``forget_bias`` at the f gate of ``bias_hh`` (so the checkpoint's
bias comes back bit for bit), writing takes it out again. Peephole, layer-norm and GRU TF1 cells and
an LSTM projection in Keras have no exact counterpart: refused with one line (exit 3).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from lmconv import blocks as B
from lmconv.architectures import Architecture, Config, Layout, Recognition
from lmconv.bounds import Bound, declare
from lmconv.errors import InputError
from lmconv.hookspecs import hookimpl
from lmconv.ir import Model, Tensor
from lmconv.options import Option
from lmconv.rule_engine import apply_forward, apply_inverse
from lmconv.rules import Arrays, Map, Rename, Rule, Shape, Transpose

ARCH = "RNNLanguageModel"
MODEL_TYPE = "rnnlm"
ENC, DEC_W, DEC_B = "encoder.weight", "decoder.weight", "decoder.bias"
GATES = {"LSTM": 4, "GRU": 3}
TF1_DEFAULTS = {"scope": "rnn", "multi": True, "cell": "basic_lstm_cell", "embedding": "embedding",
                "softmax_w": "softmax_w", "softmax_b": "softmax_b", "forget_bias": 1.0}
#: the keys the tensors decide (compared with a config.json given beside a TF/Keras file)
STRUCTURE = ("rnn_type", "vocab_size", "embedding_size", "hidden_size", "num_hidden_layers", "bidirectional",
             "proj_size", "rnn_bias", "has_decoder", "decoder_bias")

FORGET_BIAS = Option("--forget-bias", float, "TF1 LSTM cells: the forget_bias they were built with (added to the "
                     "forget gate at run time, never stored; default 1.0, TensorFlow's)", metavar="FLOAT")


#: Keras' and TF1's one LSTM bias holds the sum of PyTorch's two: the sum (what the cell adds) is kept, the
#: split is not. Verification cannot bound the split element by element; it names the step, and
#: ``lmconv verify --logits`` compares what the model computes.
SUM_BIASES = declare(Bound(
    "sum_biases:bias_ih+bias_hh", abs=math.inf,
    why="an LSTM's bias_ih and bias_hh are stored as one bias (their sum; for TF1 without its forget_bias): the "
        "sum the cell adds is kept, the split between the two is not (back: all of it in bias_ih, zeros in "
        "bias_hh); compare the outputs with --logits"))


def pt(kind: str, k: int, reverse: bool = False) -> str:
    """PyTorch's name of a recurrent parameter: ``rnn.weight_ih_l0``, ``rnn.bias_hh_l1_reverse``."""
    return f"rnn.{kind}_l{k}{'_reverse' if reverse else ''}"


# =========================================================================== config
def cell(config: Config) -> str:
    return str(config.get("rnn_type", "LSTM")).upper()


def dirs(config: Config) -> int:
    return 2 if config.get("bidirectional") else 1


def proj(config: Config) -> int:
    return int(config.get("proj_size") or 0)


def out_size(config: Config) -> int:
    """One direction's output width (the projection when there is one)."""
    return proj(config) or int(config["hidden_size"])


def in_size(config: Config, k: int) -> int:
    return int(config["embedding_size"]) if k == 0 else out_size(config) * dirs(config)


def has_bias(config: Config) -> bool:
    return config.get("rnn_bias", True) is not False


def has_decoder(config: Config) -> bool:
    return config.get("has_decoder", True) is not False


def decoder_bias(config: Config) -> bool:
    return has_decoder(config) and config.get("decoder_bias", True) is not False


def tied(config: Config) -> bool:
    return has_decoder(config) and config.get("tie_word_embeddings") is True


def base_config(**keys: Any) -> dict[str, Any]:
    return {"architectures": [ARCH], "model_type": MODEL_TYPE, **keys}


def hf_names(config: Config) -> list[str]:
    """Every state_dict name of the model, in nn.Module order."""
    names = [ENC]
    for k in range(int(config["num_hidden_layers"])):
        for rev in (False, True)[:dirs(config)]:
            names += [pt("weight_ih", k, rev), pt("weight_hh", k, rev)]
            if has_bias(config):
                names += [pt("bias_ih", k, rev), pt("bias_hh", k, rev)]
            if proj(config):
                names.append(pt("weight_hr", k, rev))
    if has_decoder(config):
        names.append(DEC_W)
        if decoder_bias(config):
            names.append(DEC_B)
    return names


# =========================================================================== rules' functions
def _block_perm(a: np.ndarray, order: Sequence[int]) -> np.ndarray:
    """Gate blocks of axis 0 reordered: block i of the result is block ``order[i]`` of ``a``."""
    parts = np.split(a, len(order), axis=0)
    return np.ascontiguousarray(np.concatenate([parts[i] for i in order], axis=0))


GRU_TO_KERAS = (1, 0, 2)  # PyTorch r, z, n → Keras z, r, h (its own inverse)
LSTM_TF1 = (0, 2, 1, 3)  # PyTorch i, f, g, o ⇄ TF1 i, j, f, o (its own inverse)


def _shape_error(name: str, shape: Shape, want: str) -> InputError:
    return InputError(f"variable {name!r} has shape {list(shape)}; a recurrent layer needs {want}")


def gates_t(source: str, target: str, order: Sequence[int], gates: int) -> Rule:
    """``[G·H, in]`` rows reordered by gate and transposed to ``[in, G·H]`` (a Keras kernel)."""

    def fwd(arrays: Arrays, config: Config) -> Arrays:
        return [np.ascontiguousarray(_block_perm(arrays[0], order).T)]

    def inv(arrays: Arrays, config: Config) -> Arrays:
        return [_block_perm(np.ascontiguousarray(arrays[0].T), order)]

    def shapes(which: str) -> Callable[[list[Shape], Config], list[Shape]]:
        def f(s: list[Shape], config: Config) -> list[Shape]:
            if len(s[0]) != 2 or s[0][0 if which == "pt" else 1] % gates:
                raise _shape_error(source if which == "pt" else target, s[0], f"a multiple of {gates} gates")
            return [(s[0][1], s[0][0])]
        return f

    return Map([source], [target], fwd, inv, forward_shapes=shapes("pt"), inverse_shapes=shapes("tf"), name="gates_t")


def _add_exact(a: np.ndarray, d: np.ndarray) -> np.ndarray:
    """``a + d`` in float32 (at least), rounded once to a's type; ``a`` itself (bits and all) where d is 0."""
    wide = np.promote_types(a.dtype, np.float32) if a.dtype.kind == "f" else np.float32
    s = (a.astype(wide) + d.astype(wide)).astype(a.dtype)
    return np.where(d == 0, a, s)


def summed_bias(b_ih: str, b_hh: str, target: str) -> Rule:
    """Keras' one LSTM bias: ``bias_ih + bias_hh``; back: all of it in bias_ih, zeros in bias_hh."""

    def fwd(arrays: Arrays, config: Config) -> Arrays:
        return [_add_exact(arrays[0], arrays[1])]

    def inv(arrays: Arrays, config: Config) -> Arrays:
        return [arrays[0], np.zeros_like(arrays[0])]

    def fshapes(s: list[Shape], config: Config) -> list[Shape]:
        if s[0] != s[1] or len(s[0]) != 1:
            raise _shape_error(b_ih, s[0], f"two biases of one shape (got {list(s[1])} for {b_hh})")
        return [s[0]]

    def ishapes(s: list[Shape], config: Config) -> list[Shape]:
        if len(s[0]) != 1:
            raise _shape_error(target, s[0], "a 1-D bias")
        return [s[0], s[0]]

    return Map([b_ih, b_hh], [target], fwd, inv, forward_shapes=fshapes, inverse_shapes=ishapes, name="sum_biases",
               bound=SUM_BIASES)


def stacked_bias(b_ih: str, b_hh: str, target: str) -> Rule:
    """Keras' GRU bias with reset_after=True: ``[2, 3H]`` = [bias_ih; bias_hh], gates reordered. Exact."""

    def fwd(arrays: Arrays, config: Config) -> Arrays:
        return [np.stack([_block_perm(a, GRU_TO_KERAS) for a in arrays])]

    def inv(arrays: Arrays, config: Config) -> Arrays:
        return [_block_perm(np.ascontiguousarray(arrays[0][i]), GRU_TO_KERAS) for i in (0, 1)]

    def ishapes(s: list[Shape], config: Config) -> list[Shape]:
        if len(s[0]) != 2 or s[0][0] != 2 or s[0][1] % 3:
            raise _shape_error(target, s[0], "a reset_after=True GRU bias [2, 3H]")
        return [(s[0][1],), (s[0][1],)]

    return Map([b_ih, b_hh], [target], fwd, inv, forward_shapes=lambda s, c: [(2, s[0][0])], inverse_shapes=ishapes,
               name="gru_bias")


def tf1_kernel(w_ih: str, w_hh: str, target: str, n_in: int) -> Rule:
    """TF1's one LSTM kernel ``[in + out, 4H]`` over concat(x, h), gates i, j, f, o. Exact."""

    def fwd(arrays: Arrays, config: Config) -> Arrays:
        both = np.concatenate([arrays[0], arrays[1]], axis=1)
        return [np.ascontiguousarray(_block_perm(both, LSTM_TF1).T)]

    def inv(arrays: Arrays, config: Config) -> Arrays:
        both = _block_perm(np.ascontiguousarray(arrays[0].T), LSTM_TF1)
        return [np.ascontiguousarray(both[:, :n_in]), np.ascontiguousarray(both[:, n_in:])]

    def ishapes(s: list[Shape], config: Config) -> list[Shape]:
        if len(s[0]) != 2 or s[0][0] <= n_in or s[0][1] % 4:
            raise _shape_error(target, s[0], f"[{n_in} + out, 4H]")
        return [(s[0][1], n_in), (s[0][1], s[0][0] - n_in)]

    return Map([w_ih, w_hh], [target], fwd, inv, forward_shapes=lambda s, c: [(s[0][1] + s[1][1], s[0][0])],
               inverse_shapes=ishapes, name="tf1_kernel")


def tf1_bias(b_ih: str, b_hh: str, target: str, forget_bias: float) -> Rule:
    """TF1's LSTM bias (gates i, j, f, o) without the forget bias TF adds at run time: reading puts the
    stored bias in bias_ih and ``forget_bias`` at the f gate of bias_hh, writing takes it back out
    (bit for bit when bias_hh is exactly that)."""

    def pattern(a: np.ndarray) -> np.ndarray:
        p = np.zeros_like(a)
        h = a.shape[0] // 4
        p[h:2 * h] = forget_bias
        return p

    def fwd(arrays: Arrays, config: Config) -> Arrays:
        b_ih_, b_hh_ = arrays
        wide = np.float64
        d = (b_hh_.astype(wide) - pattern(b_hh_).astype(wide)).astype(b_ih_.dtype)
        return [_block_perm(_add_exact(b_ih_, d), LSTM_TF1)]

    def inv(arrays: Arrays, config: Config) -> Arrays:
        b = _block_perm(arrays[0], LSTM_TF1)
        return [b, pattern(b)]

    def ishapes(s: list[Shape], config: Config) -> list[Shape]:
        if len(s[0]) != 1 or s[0][0] % 4:
            raise _shape_error(target, s[0], "a bias of 4 gates")
        return [s[0], s[0]]

    return Map([b_ih, b_hh], [target], fwd, inv, forward_shapes=lambda s, c: [s[0]], inverse_shapes=ishapes,
               name="tf1_bias", bound=SUM_BIASES)


# =========================================================================== Keras names
def _suffix(k: int) -> str:
    return "" if k == 0 else f"_{k}"


def keras_names(style: str, config: Config) -> dict[str, Any]:
    """The Keras variable names of one model in a style (``h5``, ``h5.weights``, ``tf``):
    ``{"embedding": name, "layers": [[(kernel, recurrent, bias) per direction] per layer], "dense": (kernel, bias)}``."""
    c = cell(config).lower()
    bidi = dirs(config) == 2
    n_layers = int(config["num_hidden_layers"])
    layers = []
    for k in range(n_layers):
        per_dir = []
        for d, side in enumerate(("forward", "backward")[:dirs(config)]):
            if style == "h5.weights":
                base = f"layers/{'bidirectional' if bidi else c}{_suffix(k)}" + (f"/{side}_layer" if bidi else "")
                leaves = (f"{base}/cell/vars/0", f"{base}/cell/vars/1", f"{base}/cell/vars/2")
            elif style == "tf":
                base = f"model/_functional/_operations/{k + 2}" + (f"/{side}_layer" if bidi else "")
                leaves = (f"{base}/cell/kernel", f"{base}/cell/recurrent_kernel", f"{base}/cell/bias")
            else:  # h5: tf.keras 2's save_weights names
                base = (f"bidirectional{_suffix(k)}/{side}_{c}{_suffix(k)}" if bidi else f"{c}{_suffix(k)}") + f"/{c}_cell"
                leaves = (f"{base}/kernel", f"{base}/recurrent_kernel", f"{base}/bias")
            per_dir.append(leaves)
        layers.append(per_dir)
    if style == "h5.weights":
        emb, dense = "layers/embedding/vars/0", ("layers/dense/vars/0", "layers/dense/vars/1")
    elif style == "tf":
        op = f"model/_functional/_operations/{n_layers + 2}"
        emb, dense = "model/_functional/_operations/1/_embeddings", (f"{op}/_kernel", f"{op}/bias")
    else:
        emb, dense = "embedding/embeddings", ("dense/kernel", "dense/bias")
    return {"embedding": emb, "layers": layers, "dense": dense}


def keras_rules(style: str) -> Callable[[Config], list[Rule]]:
    def rules(config: Config) -> list[Rule]:
        if proj(config):
            raise InputError(f"an LSTM with a projection (proj_size {proj(config)}, rnn.weight_hr_l0) has no Keras "
                             "counterpart: Keras' LSTM has no projection")
        names = keras_names(style, config)
        gates = GATES[cell(config)]
        order = GRU_TO_KERAS if cell(config) == "GRU" else tuple(range(gates))
        out: list[Rule] = [Rename(ENC, names["embedding"])]
        for k, per_dir in enumerate(names["layers"]):
            for d, (kernel, recurrent, bias) in enumerate(per_dir):
                rev = d == 1
                if cell(config) == "LSTM":
                    out += [Transpose(pt("weight_ih", k, rev), kernel), Transpose(pt("weight_hh", k, rev), recurrent)]
                else:
                    out += [gates_t(pt("weight_ih", k, rev), kernel, order, gates),
                            gates_t(pt("weight_hh", k, rev), recurrent, order, gates)]
                if has_bias(config):
                    make = summed_bias if cell(config) == "LSTM" else stacked_bias
                    out.append(make(pt("bias_ih", k, rev), pt("bias_hh", k, rev), bias))
        if has_decoder(config):
            out.append(Transpose(DEC_W, names["dense"][0]))
            if decoder_bias(config):
                out.append(Rename(DEC_B, names["dense"][1]))
        return out

    return rules


# =========================================================================== TF1 names
def tf1_info(config: Config) -> dict[str, Any]:
    info = config.get("tf1")
    return {**TF1_DEFAULTS, **({k: v for k, v in info.items() if v is not None} if isinstance(info, dict) else {})}


def tf1_cell_scope(info: Config, k: int) -> str:
    scope = str(info["scope"])
    mid = f"multi_rnn_cell/cell_{k}/" if info.get("multi", True) else ""
    return f"{scope}/{mid}{info['cell']}" if scope else f"{mid}{info['cell']}"


def tf1_rules(config: Config) -> list[Rule]:
    why = ("bidirectional layers" if dirs(config) == 2 else "a GRU" if cell(config) == "GRU"
           else "layers without biases" if not has_bias(config) else "")
    if why:
        raise InputError(f"a TF1 MultiRNNCell checkpoint holds unidirectional LSTM cells with biases; this model has {why}")
    info = tf1_info(config)
    fb = float(info["forget_bias"])
    out: list[Rule] = [Rename(ENC, str(info["embedding"]))]
    for k in range(int(config["num_hidden_layers"])):
        s = tf1_cell_scope(info, k)
        out.append(tf1_kernel(pt("weight_ih", k), pt("weight_hh", k), f"{s}/kernel", in_size(config, k)))
        out.append(tf1_bias(pt("bias_ih", k), pt("bias_hh", k), f"{s}/bias", fb))
        if proj(config):
            out.append(Transpose(pt("weight_hr", k), f"{s}/projection/kernel"))
    if has_decoder(config):
        if not tied(config):
            out.append(Transpose(DEC_W, str(info["softmax_w"])))
        if decoder_bias(config):
            out.append(Rename(DEC_B, str(info["softmax_b"])))
    return out


# =========================================================================== reading variables
Var = tuple[str, tuple[int, ...]]


def _variables(meta: Config) -> list[Var]:
    return [(str(n), tuple(int(d) for d in s)) for n, s in meta.get("tensorflow.variables") or []]


def _config_from_layers(emb: tuple[int, ...], layers: list[list[dict[str, Any]]], dense: dict[str, Any] | None
                        ) -> dict[str, Any] | None:
    """The config of a Keras model seen as [Embedding, RNN layers (by direction), Dense], or None when
    it is none of this family's models. Refuses a GRU with reset_after=False."""
    if len(emb) != 2 or not layers:
        return None
    vocab, width = emb
    first = layers[0][0]
    rec = first.get("recurrent")
    if rec is None or len(rec) != 2 or rec[0] == 0 or rec[1] % rec[0]:
        return None
    hidden, gates = rec[0], rec[1] // rec[0]
    kind = {4: "LSTM", 3: "GRU"}.get(gates)
    n_dirs = len(layers[0])
    if kind is None or n_dirs not in (1, 2):
        return None
    with_bias = first.get("bias") is not None
    for k, per_dir in enumerate(layers):
        if len(per_dir) != n_dirs:
            return None
        n_in = width if k == 0 else hidden * n_dirs
        for d in per_dir:
            if d.get("kernel") != (n_in, gates * hidden) or d.get("recurrent") != (hidden, gates * hidden):
                return None
            b = d.get("bias")
            if (b is not None) != with_bias:
                return None
            if b is not None and kind == "GRU" and b == (gates * hidden,):
                raise InputError("a Keras GRU with reset_after=False (bias [3H]) applies the reset gate before the "
                                 "recurrent matmul; PyTorch's GRU applies it after (reset_after=True): no exact conversion")
            if b is not None and b != ((gates * hidden,) if kind == "LSTM" else (2, gates * hidden)):
                return None
    if dense is not None and (dense.get("kernel") != (hidden * n_dirs, vocab) or dense.get("bias") not in (None, (vocab,))):
        return None
    return base_config(rnn_type=kind, vocab_size=vocab, embedding_size=width, hidden_size=hidden,
                       num_hidden_layers=len(layers), bidirectional=n_dirs == 2, proj_size=0, rnn_bias=with_bias,
                       has_decoder=dense is not None, decoder_bias=bool(dense and dense.get("bias") is not None),
                       tie_word_embeddings=False)


_K3_PATH = re.compile(r"layers/(?P<layer>embedding|lstm|gru|bidirectional|dense)(?:_(?P<n>[1-9][0-9]*))?"
                      r"(?:/(?P<side>forward|backward)_layer)?(?:/(?P<cell>cell))?/vars/(?P<i>0|[1-9][0-9]*)")
_K3_CKPT = re.compile(r"model/_functional/_operations/(?P<op>[1-9][0-9]*)(?:/(?P<side>forward|backward)_layer)?"
                      r"/(?P<leaf>_embeddings|embeddings|cell/kernel|cell/recurrent_kernel|cell/bias|_kernel|kernel|bias)")
_RNN_LEAF = {"0": "kernel", "1": "recurrent", "2": "bias", "cell/kernel": "kernel", "cell/recurrent_kernel": "recurrent",
             "cell/bias": "bias"}


def _parse_keras3(variables: list[Var], style: str) -> tuple[Any, ...] | None:
    """Keras 3 ``.weights.h5`` paths or ``tf.train.Checkpoint`` keys → (embedding shape, layers, dense)."""
    slots: dict[tuple[int, str], dict[str, tuple[int, ...]]] = {}
    emb: tuple[int, ...] | None = None
    dense: dict[str, tuple[int, ...]] | None = None
    rnn_kind: set[str] = set()
    for name, shape in variables:
        if style == "h5.weights":
            m = _K3_PATH.fullmatch(name)
            if m is None:
                return None
            layer, idx, side, i = m["layer"], int(m["n"] or 0), m["side"], m["i"]
            is_rnn = layer in ("lstm", "gru", "bidirectional")
            if is_rnn != bool(m["cell"]) or (side is not None) != (layer == "bidirectional"):
                return None
            leaf = i
        else:
            m = _K3_CKPT.fullmatch(name)
            if m is None:
                return None
            op, side, leaf = int(m["op"]), m["side"], m["leaf"]
            layer = ("embedding" if leaf.endswith("embeddings") else "rnn" if leaf.startswith("cell/") else "dense")
            idx = op
            if layer == "rnn":
                rnn_kind.add("bidirectional" if side else "single")
            elif side is not None:
                return None
        if layer == "embedding":
            if emb is not None or idx != (0 if style == "h5.weights" else 1) or leaf not in ("0", "_embeddings", "embeddings"):
                return None
            emb = shape
        elif layer == "dense":
            dense = dense if dense is not None else {}
            key = {"0": "kernel", "_kernel": "kernel", "kernel": "kernel", "1": "bias", "bias": "bias"}.get(leaf)
            if key is None or key in dense or (style == "h5.weights" and idx != 0):
                return None
            dense[key] = shape
            dense["_op"] = (idx,)
        else:
            key = _RNN_LEAF.get(leaf)
            if key is None:
                return None
            if style == "h5.weights":
                rnn_kind.add(layer)
            slot = slots.setdefault((idx, side or "forward"), {})
            if key in slot:
                return None
            slot[key] = shape
    if emb is None or not slots or len(rnn_kind) != 1:
        return None
    indices = sorted({i for i, _ in slots})
    first = 0 if style == "h5.weights" else 2
    if indices != list(range(first, first + len(indices))):
        return None
    if dense is not None and style == "tf" and dense.pop("_op") != (first + len(indices),):
        return None
    if dense is not None:
        dense.pop("_op", None)
    bidi = "bidirectional" in rnn_kind
    layers = []
    for i in indices:
        sides = ("forward", "backward") if bidi else ("forward",)
        if any((i, s) not in slots for s in sides) or (not bidi and (i, "backward") in slots):
            return None
        layers.append([slots[(i, s)] for s in sides])
    return emb, layers, dense


def _parse_keras2(variables: list[Var]) -> tuple[Any, ...] | None:
    """Keras 2 h5 weights in file order (what Keras' load_weights goes by): embeddings, then per layer
    kernel, recurrent_kernel[, bias] (forward then backward for a Bidirectional), then a Dense."""
    leaves = [(n.rsplit("/", 1)[-1], n, s) for n, s in variables]
    if not leaves or leaves[0][0] != "embeddings":
        return None
    emb = leaves[0][2]
    layers: list[list[dict[str, Any]]] = []
    dense: dict[str, Any] | None = None
    i = 1
    while i < len(leaves):
        leaf, name, shape = leaves[i]
        if leaf != "kernel":
            return None
        if i + 1 < len(leaves) and leaves[i + 1][0] == "recurrent_kernel":
            unit: dict[str, Any] = {"kernel": shape, "recurrent": leaves[i + 1][2]}
            i += 2
            if i < len(leaves) and leaves[i][0] == "bias":
                unit["bias"] = leaves[i][2]
                i += 1
            comps = name.split("/")
            backward = any(c.startswith("backward_") for c in comps)
            forward = any(c.startswith("forward_") for c in comps)
            if backward:
                if not layers or len(layers[-1]) != 1 or not layers[-1][0].get("_fw"):
                    return None
                layers[-1].append(unit)
            else:
                unit["_fw"] = forward
                layers.append([unit])
            continue
        if dense is not None:
            return None
        dense = {"kernel": shape}
        i += 1
        if i < len(leaves) and leaves[i][0] == "bias":
            dense["bias"] = leaves[i][2]
            i += 1
        if i != len(leaves):
            return None
    for per_dir in layers:
        for u in per_dir:
            u.pop("_fw", None)
    return emb, layers, dense


_CELL_COMPONENT = re.compile(r"[a-z0-9_]*_cell")


def _parse_tf1(variables: list[Var], options: Config, given: Config, warn: Callable[[str], None]
               ) -> dict[str, Any] | None:
    """A TF1 MultiRNNCell of LSTM cells with an embedding and an optional softmax, or None.

    Refuses (one line) a model that is one but whose cells no PyTorch LSTM computes exactly."""
    cells: dict[int, dict[str, tuple[int, ...]]] = {}
    scope: tuple[str, ...] | None = None
    multi: bool | None = None
    cell_name: str | None = None
    others: list[Var] = []
    for name, shape in variables:
        comps = name.split("/")
        at = next((i for i, c in enumerate(comps) if _CELL_COMPONENT.fullmatch(c) and c != "multi_rnn_cell"), None)
        if at is None or at == len(comps) - 1:
            others.append((name, shape))
            continue
        prefix = comps[:at]
        m = re.fullmatch(r"cell_(0|[1-9][0-9]*)", prefix[-1]) if len(prefix) >= 2 else None
        if m and prefix[-2] == "multi_rnn_cell":
            k, sc, mu = int(m.group(1)), tuple(prefix[:-2]), True
        else:
            k, sc, mu = 0, tuple(prefix), False
        if scope is None:
            scope, multi, cell_name = sc, mu, comps[at]
        if (sc, mu, comps[at]) != (scope, multi, cell_name):
            return None
        leaf = "/".join(comps[at + 1:])
        if leaf in cells.setdefault(k, {}):
            return None
        cells[k][leaf] = shape
    if not cells or sorted(cells) != list(range(len(cells))):
        return None
    embeds = [v for v in others if len(v[1]) == 2 and "embed" in v[0].rsplit("/", 1)[-1].lower()]
    if len(embeds) != 1:
        return None
    emb_name, (vocab, width) = embeds[0]
    rest = [v for v in others if v[0] != emb_name]
    mats = [v for v in rest if len(v[1]) == 2]
    vecs = [v for v in rest if len(v[1]) == 1]
    if len(mats) > 1 or len(vecs) > 1 or len(mats) + len(vecs) != len(rest):
        return None
    # what the cells are
    leaves = set().union(*cells.values())
    assert cell_name is not None and scope is not None
    problem = ""
    if "gru" in cell_name or {"gates/kernel", "candidate/kernel"} & leaves:
        problem = (f"TF1 {cell_name} cells apply the reset gate before the recurrent matmul (Keras' reset_after=False); "
                   "PyTorch's GRU applies it after: no exact conversion")
    elif "layer_norm" in cell_name or any(x.endswith(("gamma", "beta")) for x in leaves):
        problem = f"TF1 {cell_name} cells normalise their gates (layer norm); PyTorch's nn.LSTM does not: no exact conversion"
    elif {"w_f_diag", "w_i_diag", "w_o_diag"} & leaves:
        problem = (f"TF1 {cell_name} cells have peephole connections (w_f_diag, w_i_diag, w_o_diag); "
                   "PyTorch's nn.LSTM has none: no exact conversion")
    elif leaves - {"kernel", "bias", "projection/kernel"}:
        return None
    if problem:
        raise InputError(problem)
    p = 0
    out = None
    hidden = None
    for k in range(len(cells)):
        c = cells[k]
        if set(c) not in ({"kernel", "bias"}, {"kernel", "bias", "projection/kernel"}):
            return None
        kern, bias = c["kernel"], c["bias"]
        if len(kern) != 2 or len(bias) != 1 or bias[0] % 4 or kern[1] != bias[0]:
            return None
        h = bias[0] // 4
        pr = c.get("projection/kernel")
        if pr is not None and (len(pr) != 2 or pr[0] != h):
            return None
        o = pr[1] if pr is not None else h
        if hidden is None:
            hidden, p, out = h, (pr[1] if pr is not None else 0), o
        if (h, o, bool(pr)) != (hidden, out, bool(p)):
            return None
        if kern[0] != (width if k == 0 else out) + out:
            return None
    assert out is not None
    softmax_w = mats[0] if mats else None
    softmax_b = vecs[0] if vecs else None
    if softmax_w is not None and softmax_w[1] != (out, vocab):
        return None
    if softmax_b is not None and softmax_b[1] != (vocab,):
        return None
    if softmax_w is None and softmax_b is not None and width != out:
        return None
    fb = options.get("forget_bias")
    given_info = given.get("tf1") if isinstance(given.get("tf1"), dict) else {}
    if fb is None:
        fb = given_info.get("forget_bias")
    if fb is None:
        fb = 1.0
        warn(f"the TF1 LSTM cells' forget_bias is not recorded anywhere: assumed {fb} (TensorFlow's default); "
             "pass --forget-bias if they were built with another")
    has_dec = softmax_w is not None or softmax_b is not None
    return base_config(
        rnn_type="LSTM", vocab_size=vocab, embedding_size=width, hidden_size=hidden, num_hidden_layers=len(cells),
        bidirectional=False, proj_size=p, rnn_bias=True, has_decoder=has_dec, decoder_bias=softmax_b is not None,
        tie_word_embeddings=has_dec and softmax_w is None,
        tf1={"scope": "/".join(scope), "multi": bool(multi), "cell": cell_name, "embedding": emb_name,
             "softmax_w": softmax_w[0] if softmax_w else None, "softmax_b": softmax_b[0] if softmax_b else None,
             "forget_bias": float(fb)})


def claim_config(style: str) -> Callable[[Config, dict[str, Any]], None]:
    """``Layout.extra_config`` of a TF/Keras layout: the TF plugins hand over the file's variables
    (``tensorflow.variables``: [[name, shape], …] in file order), its config.json (``tensorflow.config``),
    the command's plugin options and a warning callback; the config those variables imply is filled in
    when they are one of this family's models (left empty otherwise)."""

    def fill(meta: Config, config: dict[str, Any]) -> None:
        variables = _variables(meta)
        given = meta.get("tensorflow.config") or {}
        warn = meta.get("tensorflow.warn") or (lambda m: None)
        if style == "tf.v1":
            found = _parse_tf1(variables, meta.get("tensorflow.options") or {}, given, warn)
        else:
            parsed = _parse_keras2(variables) if style == "h5" else _parse_keras3(variables, style)
            found = _config_from_layers(*parsed) if parsed is not None else None
        if found is None:
            return
        if isinstance(given, dict) and given.get("model_type") == MODEL_TYPE:
            for key in STRUCTURE:
                if key in given and given[key] != found[key] and not (key == "proj_size" and not given[key] and not found[key]):
                    raise InputError(f"config.json says {key}={given[key]!r} but the file's variables say {found[key]!r}")
            tie = given.get("tie_word_embeddings")
            found = {**found, **given, "tf1": found.get("tf1")} if style == "tf.v1" else {**found, **given}
            if tie is not None:
                found["tie_word_embeddings"] = bool(tie) and has_decoder(found)
        config.update(found)

    return fill


# =========================================================================== the family
class RNNArchitecture(Architecture):
    name = "rnn"
    hf_architectures = (ARCH,)
    model_types = (MODEL_TYPE,)
    description = "recurrent LM (PyTorch word_language_model: Embedding, LSTM/GRU, Linear) ⇄ Keras and TF1 layouts"
    hf_embedding = ENC
    hf_output = DEC_W
    required_ints = ("vocab_size", "embedding_size", "hidden_size", "num_hidden_layers")
    summary_keys = ("rnn_type", "embedding_size", "bidirectional", "proj_size")

    # ---- config ------------------------------------------------------------------------
    def check_consistency(self, config: Config, origin: str | None) -> None:
        kind = config.get("rnn_type", "LSTM")
        if not isinstance(kind, str) or kind.upper() not in GATES:
            raise InputError(f"rnn_type is {kind!r} in the config; the rnn family runs LSTM or GRU", path=origin)
        p = config.get("proj_size", 0)
        if p is not None and (type(p) is not int or p < 0 or p >= int(config["hidden_size"])):
            raise InputError(f"proj_size is {p!r} in the config; it must be 0 or a whole number below hidden_size",
                             path=origin)
        if p and cell(config) != "LSTM":
            raise InputError("proj_size is set but only an LSTM has a projection", path=origin)
        for key in ("bidirectional", "rnn_bias", "has_decoder", "decoder_bias", "tie_word_embeddings"):
            if config.get(key) is not None and not isinstance(config[key], bool):
                raise InputError(f"{key} is {config[key]!r} in the config; it must be true or false", path=origin)
        if tied(config) and int(config["embedding_size"]) != out_size(config) * dirs(config):
            raise InputError(f"tie_word_embeddings needs embedding_size ({config['embedding_size']}) to equal the last "
                             f"layer's output ({out_size(config) * dirs(config)})", path=origin)

    def expected_shape(self, hf_name: str, config: Config) -> tuple[int | None, ...] | None:
        vocab, width, hid = int(config["vocab_size"]), int(config["embedding_size"]), int(config["hidden_size"])
        g = GATES[cell(config)] * hid
        if hf_name == ENC:
            return (vocab, width)
        if hf_name == DEC_W:
            return (vocab, out_size(config) * dirs(config))
        if hf_name == DEC_B:
            return (vocab,)
        m = re.fullmatch(r"rnn\.(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(0|[1-9][0-9]*)(_reverse)?", hf_name)
        if m is None:
            return None
        kind, k = m.group(1), int(m.group(2))
        return {"weight_ih": (g, in_size(config, k)), "weight_hh": (g, out_size(config)), "bias_ih": (g,),
                "bias_hh": (g,), "weight_hr": (proj(config), hid)}[kind]

    def n_layer(self, config: Config) -> int:
        return int(config["num_hidden_layers"])

    # ---- recognition (a bare state_dict) ------------------------------------------------
    def infer_config(self, model: Model) -> dict[str, Any]:
        """Every key from the state_dict's names and shapes (and ties: an alias of the encoder)."""
        t = model.tensors
        enc, ih, hh = t.get(ENC), t.get(pt("weight_ih", 0)), t.get(pt("weight_hh", 0))
        if enc is None or ih is None or hh is None or len(enc.shape) != 2 or len(ih.shape) != 2 or len(hh.shape) != 2:
            return {}
        hr = t.get(pt("weight_hr", 0))
        if hr is not None and len(hr.shape) != 2:
            return {}
        hidden = hr.shape[1] if hr is not None else hh.shape[1]
        if hidden == 0 or ih.shape[0] % hidden:
            return {}
        kind = {4: "LSTM", 3: "GRU"}.get(ih.shape[0] // hidden)
        if kind is None:
            return {}
        layers = 0
        while pt("weight_ih", layers) in t:
            layers += 1
        dec = t.get(DEC_W)
        has_dec = dec is not None or DEC_W in enc.aliases
        return base_config(
            rnn_type=kind, vocab_size=enc.shape[0], embedding_size=enc.shape[1], hidden_size=hidden,
            num_hidden_layers=layers, bidirectional=pt("weight_ih", 0, True) in t,
            proj_size=hr.shape[0] if hr is not None else 0, rnn_bias=pt("bias_ih", 0) in t, has_decoder=has_dec,
            decoder_bias=DEC_B in t, tie_word_embeddings=has_dec and dec is None)

    def recognize(self, model: Model) -> Recognition | None:
        config = self.infer_config(model)
        if not config:
            return None
        try:
            self.check_config(config, None)
            want = hf_names(config)
            names = [n for x in model for n in (x.name, *x.aliases)]
            if sorted(names) != sorted(want):
                return None
            for x in model:
                self.check_shape(x.name, x.shape, config, None)
        except InputError:
            return None
        return Recognition(self.name, config, (), layers=int(config["num_hidden_layers"]),
                           hidden=int(config["hidden_size"]), fit=1.0, priority=self.recognition_priority)

    # ---- layouts -------------------------------------------------------------------------
    def layouts(self) -> dict[str, Layout]:
        return {
            "h5": Layout("h5", MODEL_TYPE, keras_rules("h5"), extra_config=claim_config("h5")),
            "h5.weights": Layout("h5.weights", MODEL_TYPE, keras_rules("h5.weights"), extra_config=claim_config("h5.weights")),
            "tf": Layout("tf", MODEL_TYPE, keras_rules("tf"), extra_config=claim_config("tf")),
            "tf.v1": Layout("tf.v1", MODEL_TYPE, tf1_rules, extra_config=claim_config("tf.v1")),
        }

    def to_target(self, model: Model, target: str, warn: Callable[[str], None] = lambda m: None
                  ) -> tuple[list[Tensor], dict[str, Any]]:
        """As the contract's, with the tie decided by the tensors: a decoder that is the encoder is
        written where the target stores an output projection of its own (a Keras Dense kernel)."""
        layout = self._layout_or_fail(target)
        origin = model.config_source or model.source or None
        config = dict(model.config)
        enc = model.tensors.get(ENC)
        if has_decoder(config):
            config["tie_word_embeddings"] = enc is not None and DEC_W in enc.aliases and DEC_W not in model.tensors
        self.check_config(config, origin)
        self.check_shapes(model, origin)
        have = {n for t in model for n in (t.name, *t.aliases)}
        missing = [n for n in hf_names(config) if n not in have]
        if missing:
            raise InputError(f"tensor {missing[0]!r} is missing; an {MODEL_TYPE} model of this config has it", path=origin)
        try:
            rules = layout.rules(config)
        except InputError as exc:
            raise (exc if exc.path is not None else InputError(str(exc), path=origin)) from None
        wants_decoder = any(DEC_W in r.sources for r in rules)
        tensors: list[Tensor] = []
        for t in model:
            tensors.append(t.replace(aliases=()))
            if DEC_W in t.aliases and wants_decoder:
                tensors.append(t.replace(name=DEC_W, aliases=()))
        out, unmatched = apply_forward(rules, tensors, config)
        for t in unmatched:
            warn(f"tensor {t.name!r} has no {target} name in an {MODEL_TYPE} model; left out")
        return out, layout.meta_from_config(config, origin)

    def from_target(self, tensors: Sequence[Tensor], config: dict[str, Any], target: str,
                    origin: str | None = None) -> tuple[list[Tensor], dict[str, Any]]:
        """As the contract's; a tied config gets ``decoder.weight`` back as an alias of the encoder
        (checked equal when the file stores both, as a Keras Dense does)."""
        layout = self._layout_or_fail(target)
        self.check_config(config, origin)
        hf, unmatched, _ = apply_inverse(layout.rules(config), tensors, config)
        if unmatched:
            t = unmatched[0]
            raise InputError(f"variable {t.name!r} is not part of an {MODEL_TYPE} model", path=t.origin or origin)
        for t in hf:
            self.check_shape(t.name, t.shape, config, t.origin or origin)
        if not tied(config):
            return hf, config
        dec = next((t for t in hf if t.name == DEC_W), None)
        out = []
        for t in hf:
            if t.name == DEC_W:
                continue
            if t.name == ENC:
                t = t.replace(aliases=(DEC_W,), loader=_checked_tie(t, dec, origin)) if dec is not None \
                    else t.replace(aliases=(DEC_W,))
            out.append(t)
        return out, config

    # ---- the reference forward pass ------------------------------------------------------
    def forward(self, model: Model, ids: Sequence[int], dtype: np.dtype) -> np.ndarray:
        """Logits ``[n, vocab]`` (the last layer's outputs ``[n, dirs·out]`` for an encoder without a
        decoder), as nn.LSTM / nn.GRU in eval mode compute them from a zero state."""
        cfg = model.config
        W = B.Weights(model, dtype, self.name)
        emb = W(ENC)
        B.checked_ids(model, list(ids), emb.shape[0])
        x = emb[np.asarray(ids)]
        lstm = cell(cfg) == "LSTM"
        for k in range(int(cfg["num_hidden_layers"])):
            outs = []
            for rev in (False, True)[:dirs(cfg)]:
                args = (W(pt("weight_ih", k, rev)), W(pt("weight_hh", k, rev)),
                        W.opt(pt("bias_ih", k, rev)), W.opt(pt("bias_hh", k, rev)))
                if lstm:
                    outs.append(B.lstm_sequence(x, *args, w_hr=W.opt(pt("weight_hr", k, rev)), reverse=rev))
                else:
                    outs.append(B.gru_sequence(x, *args, reverse=rev))
            x = np.concatenate(outs, axis=-1) if len(outs) > 1 else outs[0]
        if not has_decoder(cfg):
            return x
        return B.linear(x, W(DEC_W, ENC), W.opt(DEC_B))


def _checked_tie(enc: Tensor, dec: Tensor, origin: str | None) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        a = enc.load()
        if not np.array_equal(a, dec.load(), equal_nan=True):
            raise InputError(f"the config ties {DEC_W} to {ENC}, but the file's output projection differs from its "
                             "embedding; drop tie_word_embeddings from config.json to keep both", path=enc.origin or origin)
        return a

    return load


@hookimpl
def register_architectures(register: Any) -> None:
    register(RNNArchitecture())


@hookimpl
def register_options(register: Any) -> None:
    register(FORGET_BIAS)
