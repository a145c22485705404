"""The rnn family: recurrent LMs between PyTorch and TensorFlow/Keras, proved by running both.

PyTorch LSTM and GRU language models laid out as PyTorch's word_language_model (``encoder``, ``rnn``,
``decoder``; tied and untied; a bidirectional encoder without the head) are trained for a few steps
on the fixture texts with a character vocabulary, saved as bare state_dicts (no config.json: the family
infers it), and converted to Keras 3 ``.weights.h5``, Keras 2 ``.h5`` and a TF checkpoint. Keras
(TensorFlow backend, CPU) loads each into the equivalent ``keras.Sequential`` and its next-token
distributions over a held-out text equal PyTorch's within 1e-5; what Keras itself saves comes back to
PyTorch with ``load_state_dict(strict=True)`` and the same equality. TF1 ``MultiRNNCell``
checkpoints (BasicLSTMCell, an LSTMBlockCell kernel, an LSTMCell with a projection) come to PyTorch
with TF's own outputs, and go back bit for bit. f16/bf16 files stay within their bounds, lmconv's
numpy forward (``verify --logits``) agrees with PyTorch, and what cannot be exact is refused.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from lmconv.cli import main
from torch import nn

from tests.families.support import QUANT_LOGIT_BOUNDS, ROOT

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # keras' numpy-2 copy= warning, TF1's APIs
tf: Any = None  # TensorFlow and Keras, imported (quietly, on the CPU) by the fixture below when these tests run
keras: Any = None


@pytest.fixture(scope="module", autouse=True)
def tensorflow_on_cpu() -> None:
    global tf, keras
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import keras as keras_module
    import tensorflow

    tensorflow.config.set_visible_devices([], "GPU")
    tf, keras = tensorflow, keras_module
TEXTS = ROOT / "fixtures" / "texts"
TOL = 1e-5
MEASURED: dict[str, float] = {}  # max differences, printed at the end (pytest -s)


# ============================================================================ data and models
def _vocab() -> dict[str, int]:
    chars = sorted(set((TEXTS / "multilingual.txt").read_text(encoding="utf-8")))
    return {c: i + 1 for i, c in enumerate(chars)}  # 0: unknown


VOCAB = _vocab()
N_VOCAB = len(VOCAB) + 1


def encode(text: str) -> list[int]:
    return [VOCAB.get(c, 0) for c in text]


TRAIN = encode((TEXTS / "multilingual.txt").read_text(encoding="utf-8"))
HELD_OUT = encode((TEXTS / "test.txt").read_text(encoding="utf-8"))[:48]


class RNNModel(nn.Module):
    """PyTorch's word_language_model RNNModel (encoder, rnn, decoder; optionally tied)."""

    def __init__(self, kind: str, ninp: int, nhid: int, nlayers: int = 2, *, tie: bool = False, bidirectional: bool = False,
                 head: bool = True, proj_size: int = 0) -> None:
        super().__init__()
        self.encoder = nn.Embedding(N_VOCAB, ninp)
        extra = {"proj_size": proj_size} if proj_size else {}
        self.rnn = getattr(nn, kind)(ninp, nhid, nlayers, bidirectional=bidirectional, **extra)
        out = (proj_size or nhid) * (2 if bidirectional else 1)
        self.decoder = nn.Linear(out, N_VOCAB) if head else None
        if tie and self.decoder is not None:
            self.decoder.weight = self.encoder.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # ids [seq, batch]
        out, _ = self.rnn(self.encoder(ids))
        return self.decoder(out) if self.decoder is not None else out


CASES: dict[str, dict[str, Any]] = {
    "lstm": {"kind": "LSTM", "ninp": 16, "nhid": 24},
    "lstm-tied": {"kind": "LSTM", "ninp": 24, "nhid": 24, "tie": True},
    "lstm-bidirectional-encoder": {"kind": "LSTM", "ninp": 16, "nhid": 12, "bidirectional": True, "head": False},
    "gru": {"kind": "GRU", "ninp": 16, "nhid": 24},
    "gru-tied": {"kind": "GRU", "ninp": 24, "nhid": 24, "tie": True},
}


def train(model: RNNModel, seed: int, steps: int = 6) -> None:
    """A few Adam steps of next-character prediction (an encoder learns to predict through a throwaway head)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only contend (with TensorFlow's pool, and other jobs)
    try:
        _train(model, seed, steps)
    finally:
        torch.set_num_threads(threads)


def _train(model: RNNModel, seed: int, steps: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    data = torch.tensor(TRAIN)
    head = model.decoder or nn.Linear(model.rnn.hidden_size * 2, N_VOCAB)
    params = list(model.parameters()) + ([] if head is model.decoder else list(head.parameters()))
    opt = torch.optim.Adam(params, lr=3e-2)
    for _ in range(steps):
        starts = torch.randint(0, len(data) - 33, (8,), generator=gen)
        batch = torch.stack([data[s:s + 33] for s in starts], dim=1)
        out, _ = model.rnn(model.encoder(batch[:-1]))
        loss = nn.functional.cross_entropy(head(out).reshape(-1, N_VOCAB), batch[1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def torch_out(model: nn.Module) -> np.ndarray:
    """Next-token distributions over the held-out text (an encoder's outputs when it has no head)."""
    with torch.no_grad():
        y = model(torch.tensor(HELD_OUT)[:, None])[:, 0]
    return (torch.softmax(y, -1) if getattr(model, "decoder", True) is not None else y).double().numpy()


def keras_model(cfg: dict[str, Any]) -> Any:
    """The equivalent keras.Sequential: Input, Embedding, LSTM/GRU(return_sequences) × layers, Dense."""
    cell = {"LSTM": keras.layers.LSTM, "GRU": keras.layers.GRU}[cfg["rnn_type"]]
    layers: list[Any] = [keras.Input((None,), dtype="int32"), keras.layers.Embedding(cfg["vocab_size"], cfg["embedding_size"])]
    for _ in range(cfg["num_hidden_layers"]):
        rnn = cell(cfg["hidden_size"], return_sequences=True, use_bias=cfg["rnn_bias"])
        layers.append(keras.layers.Bidirectional(rnn) if cfg["bidirectional"] else rnn)
    if cfg["has_decoder"]:
        layers.append(keras.layers.Dense(cfg["vocab_size"], use_bias=cfg["decoder_bias"]))
    return keras.Sequential(layers)


def keras_out(model: Any, cfg: dict[str, Any]) -> np.ndarray:
    y = model(np.asarray([HELD_OUT], dtype=np.int32))[0]
    return np.asarray(tf.nn.softmax(y) if cfg["has_decoder"] else y, dtype=np.float64)


def lmconv_ok(*args: object) -> None:
    code = main([str(a) for a in args] + ["--quiet"])
    assert code == 0, f"lmconv {' '.join(map(str, args))} exited {code}"


def load_torch(case: str, path: Path) -> RNNModel:
    model = RNNModel(**CASES[case])
    model.load_state_dict(torch.load(path, weights_only=True), strict=True)
    return model.eval()


def close(name: str, got: np.ndarray, want: np.ndarray, tol: float = TOL) -> None:
    diff = float(np.max(np.abs(got - want)))
    MEASURED[name] = max(diff, MEASURED.get(name, 0.0))
    assert got.shape == want.shape and diff <= tol, f"{name}: max |diff| {diff:.3g} > {tol}"


@pytest.fixture(scope="module", params=list(CASES))
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A trained model of each case, saved as a bare state_dict (no config.json beside it)."""
    case = request.param
    torch.manual_seed(list(CASES).index(case))
    model = RNNModel(**CASES[case])
    train(model, seed=list(CASES).index(case))
    folder = tmp_path_factory.mktemp(case)
    torch.save(model.state_dict(), folder / "rnnlm.pt")
    return {"case": case, "folder": folder, "model": model, "want": torch_out(model)}


# ============================================================================ PyTorch → Keras → PyTorch
def test_keras_runs_what_lmconv_writes_and_it_comes_back(trained: dict[str, Any], tmp_path: Path) -> None:
    case, folder, want = trained["case"], trained["folder"], trained["want"]
    outs = {"weights.h5": tmp_path / "model.weights.h5", "h5": tmp_path / "model.h5", "ckpt": tmp_path / "model.ckpt"}
    for out in outs.values():
        lmconv_ok(folder / "rnnlm.pt", out)
    cfg = json.loads((tmp_path / "config.json").read_text())  # inferred from the state_dict, written beside
    spec = CASES[case]
    assert cfg["model_type"] == "rnnlm" and cfg["architectures"] == ["RNNLanguageModel"]
    assert (cfg["rnn_type"], cfg["num_hidden_layers"], cfg["hidden_size"], cfg["embedding_size"], cfg["vocab_size"]) == \
        (spec["kind"], 2, spec["nhid"], spec["ninp"], N_VOCAB)
    assert cfg["bidirectional"] is spec.get("bidirectional", False) and cfg["has_decoder"] is spec.get("head", True)
    assert cfg["tie_word_embeddings"] is spec.get("tie", False)

    for kind, path in outs.items():
        km = keras_model(cfg)
        if kind == "ckpt":
            tf.train.Checkpoint(model=km).restore(str(path)).assert_existing_objects_matched()
        else:
            km.load_weights(path)
        close(f"keras {kind} vs torch", keras_out(km, cfg), want)
        # back to PyTorch from what lmconv wrote (each in its own folder, the file alone with its config.json)
        back = tmp_path / f"back-{kind}"
        back.mkdir()
        lmconv_ok(path, back / "rnnlm.pt")
        close(f"torch from {kind} vs torch", torch_out(load_torch(case, back / "rnnlm.pt")), want)
        if kind == "weights.h5":
            own = tmp_path / "keras-own"
            own.mkdir()
            km.save_weights(own / "k.weights.h5")  # what Keras writes itself, without a config.json

    # Keras' own file → PyTorch: the config comes from the variables' names and shapes
    lmconv_ok(own / "k.weights.h5", own / "rnnlm.pt")
    close("torch from keras' own .weights.h5 vs torch", torch_out(load_torch(case, own / "rnnlm.pt")), want)
    # ... and back to Keras bit for bit (a bias that came from Keras splits as bias_ih + zeros and sums back exactly)
    lmconv_ok(own / "rnnlm.pt", own / "again.weights.h5")
    with h5py.File(own / "k.weights.h5") as a, h5py.File(own / "again.weights.h5") as b:
        names: list[str] = []
        a.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        assert names and all(np.asarray(a[n]).tobytes() == np.asarray(b[n]).tobytes() for n in names)


def test_keras2_h5_written_by_keras_is_read_by_position(tmp_path: Path) -> None:
    """A Keras 2 h5 whose names are Keras' own counters (``sequential_3/bidirectional_2/forward_lstm_4/…``)
    is matched by position, as Keras' load_weights matches it; a .keras archive by its paths."""
    from keras.src.legacy.saving import legacy_h5_format

    cfg = {"rnn_type": "GRU", "vocab_size": N_VOCAB, "embedding_size": 8, "hidden_size": 10, "num_hidden_layers": 2,
           "bidirectional": True, "rnn_bias": True, "has_decoder": True, "decoder_bias": True}
    km = keras_model(cfg)
    rng = np.random.default_rng(5)
    km.set_weights([rng.normal(0, 0.4, w.shape).astype(np.float32) for w in km.get_weights()])
    want = keras_out(km, cfg)
    with h5py.File(tmp_path / "weights.h5", "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, km)
    km.save(tmp_path / "model.keras")

    class BiGRU(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Embedding(N_VOCAB, 8)
            self.rnn = nn.GRU(8, 10, 2, bidirectional=True)
            self.decoder = nn.Linear(20, N_VOCAB)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.decoder(self.rnn(self.encoder(ids))[0])

    for src in ("weights.h5", "model.keras"):
        dst = tmp_path / src.replace(".", "-")
        dst.mkdir()
        lmconv_ok(tmp_path / src, dst / "rnnlm.pt")
        model = BiGRU()
        model.load_state_dict(torch.load(dst / "rnnlm.pt", weights_only=True), strict=True)
        close(f"torch from keras' {src} (bidirectional GRU) vs keras", torch_out(model.eval()), want)


# ============================================================================ TF1 MultiRNNCell checkpoints
def _tf1_checkpoint(folder: Path, cell: str, forget_bias: float, *, proj: int = 0) -> np.ndarray:
    """A PTB-style TF1 graph (``Model/embedding``, ``Model/RNN/multi_rnn_cell/cell_k/…``, ``Model/softmax_w|b``),
    saved by tf.compat.v1's Saver; returns TF's next-token distributions over the held-out text."""
    from tensorflow.python.ops import rnn_cell_impl as rc

    v1 = tf.compat.v1
    emb_size, hidden, n_layers = 12, 16, 2
    out_size = proj or hidden
    graph = tf.Graph()
    with graph.as_default(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        v1.set_random_seed(3)
        ids = v1.placeholder(tf.int32, [1, None])
        with v1.variable_scope("Model", initializer=v1.random_uniform_initializer(-0.4, 0.4)):
            x = tf.nn.embedding_lookup(v1.get_variable("embedding", [N_VOCAB, emb_size]), ids)
            if cell == "block":  # LSTMBlockCell: its variables (lstm_cell/kernel, bias) and its fused kernel
                h_in = x[0]
                for k in range(n_layers):
                    with v1.variable_scope(f"RNN/multi_rnn_cell/cell_{k}/lstm_cell"):
                        w = v1.get_variable("kernel", [(emb_size if k == 0 else hidden) + hidden, 4 * hidden])
                        b = v1.get_variable("bias", [4 * hidden])
                    h, c, steps = tf.zeros([1, hidden]), tf.zeros([1, hidden]), []
                    zeros = tf.zeros([hidden])
                    for t in range(len(HELD_OUT)):
                        res = tf.raw_ops.LSTMBlockCell(x=h_in[t:t + 1], cs_prev=c, h_prev=h, w=w, wci=zeros, wcf=zeros,
                                                       wco=zeros, b=b, forget_bias=forget_bias, cell_clip=-1.0,
                                                       use_peephole=False)
                        c, h = res[1], res[6]
                        steps.append(h)
                    h_in = tf.concat(steps, 0)
                outputs = h_in
            else:
                make = (lambda: rc.BasicLSTMCell(hidden, forget_bias=forget_bias)) if cell == "basic" else \
                    (lambda: rc.LSTMCell(hidden, forget_bias=forget_bias, num_proj=proj or None))
                outs, _ = v1.nn.dynamic_rnn(rc.MultiRNNCell([make() for _ in range(n_layers)]), x, dtype=tf.float32, scope="RNN")
                outputs = outs[0]
            logits = tf.matmul(outputs, v1.get_variable("softmax_w", [out_size, N_VOCAB])) + v1.get_variable("softmax_b", [N_VOCAB])
        v1.train.get_or_create_global_step()
        saver = v1.train.Saver()
        with v1.Session(graph=graph) as sess:
            sess.run(v1.global_variables_initializer())
            got = sess.run(tf.nn.softmax(logits), {ids: [HELD_OUT]})
            saver.save(sess, str(folder / "model.ckpt"))
    return got.astype(np.float64)


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("cell, forget_bias, option", [("basic", 1.0, None), ("block", 1.0, None), ("basic", 0.5, "0.5"),
                                                       ("proj", 1.0, "1.0")])
def test_tf1_lstm_checkpoint_to_pytorch_and_back(cell: str, forget_bias: float, option: str | None, tmp_path: Path) -> None:
    proj = 8 if cell == "proj" else 0
    want = _tf1_checkpoint(tmp_path, cell, forget_bias, proj=proj)
    out = tmp_path / "pt"
    out.mkdir()
    lmconv_ok(tmp_path / "model.ckpt", out / "rnnlm.pt", *(["--forget-bias", option] if option else []))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["tf1"]["forget_bias"] == forget_bias and cfg["tf_layout"] == "tf.v1" and cfg["proj_size"] == proj
    model = RNNModel("LSTM", 12, 16, 2, proj_size=proj)
    model.load_state_dict(torch.load(out / "rnnlm.pt", weights_only=True), strict=True)
    close(f"torch from TF1 {cell} (forget_bias {forget_bias}) vs TF", torch_out(model.eval()), want)
    # and back into the same TF1 layout, bit for bit (the forget bias taken out of bias_hh again)
    lmconv_ok(out / "rnnlm.pt", out / "again.ckpt")
    a, b = tf.train.load_checkpoint(str(tmp_path / "model.ckpt")), tf.train.load_checkpoint(str(out / "again.ckpt"))
    names = [n for n in a.get_variable_to_shape_map() if n != "global_step"]
    assert set(names) <= set(b.get_variable_to_shape_map())
    assert all(a.get_tensor(n).tobytes() == b.get_tensor(n).tobytes() for n in names)


# ============================================================================ dtypes, verify, inspect
@pytest.fixture(scope="module")
def lstm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    torch.manual_seed(11)
    model = RNNModel(**CASES["lstm"])
    train(model, seed=11)
    folder = tmp_path_factory.mktemp("lstm-dtypes")
    torch.save(model.state_dict(), folder / "rnnlm.pt")
    with torch.no_grad():
        logits = model(torch.tensor(HELD_OUT)[:, None])[:, 0].double().numpy()
    return {"folder": folder, "model": model, "logits": logits}


@pytest.mark.parametrize("dtype, target", [("f16", "model.weights.h5"), ("bf16", "model.h5")])
def test_f16_and_bf16_stay_within_their_bound(lstm: dict[str, Any], dtype: str, target: str, tmp_path: Path) -> None:
    lmconv_ok(lstm["folder"] / "rnnlm.pt", tmp_path / target, "--dtype", dtype)
    cfg = json.loads((tmp_path / "config.json").read_text())
    km = keras_model(cfg)
    km.load_weights(tmp_path / target)
    got = np.asarray(km(np.asarray([HELD_OUT], dtype=np.int32))[0], dtype=np.float64)
    rel = float(np.max(np.abs(got - lstm["logits"])) / np.max(np.abs(lstm["logits"])))
    MEASURED[f"keras {dtype} logits, rel to max|logit|"] = rel
    assert 0 < rel <= QUANT_LOGIT_BOUNDS[dtype]
    from lmconv import read_model

    back = read_model(tmp_path / target)
    assert {t.dtype.name for t in back} == {dtype}  # HDF5 holds bf16 as f32; the record gives the dtype back


def test_verify_logits_runs_the_family_forward(lstm: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lmconv import read_model
    from lmconv.verify.logits import forward

    src = lstm["folder"] / "rnnlm.pt"
    got = forward(read_model(src), HELD_OUT, dtype=np.float32)
    close("lmconv numpy forward vs torch logits", got.astype(np.float64), lstm["logits"])

    out = tmp_path / "model.weights.h5"
    lmconv_ok(src, out, "--verify")  # the summed biases are a named step, the rest bit-exact
    capsys.readouterr()
    assert main(["verify", str(src), str(out), "--logits", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    steps = {t["name"]: t["steps"] for t in report["tensors"]}
    assert steps["rnn.bias_ih_l0"] == ["sum_biases:bias_ih+bias_hh"] and steps["rnn.weight_ih_l0"] == []
    assert report["logits"]["rel_max_diff"] <= TOL

    assert main(["inspect", str(src)]) == 0
    shown = capsys.readouterr().out
    assert "family: rnn" in shown and "architecture: RNNLanguageModel" in shown
    assert "hidden_size=24" in shown and "num_hidden_layers=2" in shown and f"vocab_size={N_VOCAB}" in shown
    assert "rnn_type=LSTM" in shown and "embedding_size=" in shown  # the family's own summary keys


# ============================================================================ what cannot be exact
def _refused(capsys: pytest.CaptureFixture[str], *args: object) -> str:
    capsys.readouterr()
    code = main([str(a) for a in args] + ["--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and len(err) == 1 and err[0].startswith("lmconv: error: "), (code, err)
    return err[0]


def test_what_cannot_be_exact_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tensorflow.python.ops import rnn_cell_impl as rc

    # a Keras GRU with reset_after=False
    km = keras.Sequential([keras.Input((None,), dtype="int32"), keras.layers.Embedding(20, 4),
                           keras.layers.GRU(6, return_sequences=True, reset_after=False), keras.layers.Dense(20)])
    km.save_weights(tmp_path / "gru.weights.h5")
    line = _refused(capsys, tmp_path / "gru.weights.h5", tmp_path / "gru.pt")
    assert "reset_after=False" in line and "gru.weights.h5" in line and not (tmp_path / "gru.pt").exists()

    # a TF1 peephole LSTMCell
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ids = v1.placeholder(tf.int32, [1, None])
        x = tf.nn.embedding_lookup(v1.get_variable("embedding", [20, 4]), ids)
        v1.nn.dynamic_rnn(rc.MultiRNNCell([rc.LSTMCell(6, use_peepholes=True)]), x, dtype=tf.float32)
        with v1.Session(graph=graph) as sess:
            sess.run(v1.global_variables_initializer())
            v1.train.Saver().save(sess, str(tmp_path / "peep.ckpt"))
    line = _refused(capsys, tmp_path / "peep.ckpt", tmp_path / "peep.pt")
    assert "peephole" in line and "w_f_diag" in line

    # an LSTM with a projection has no Keras counterpart
    model = RNNModel("LSTM", 8, 12, 1, proj_size=4)
    torch.save(model.state_dict(), tmp_path / "proj.pt")
    line = _refused(capsys, tmp_path / "proj.pt", tmp_path / "proj.weights.h5")
    assert "proj_size 4" in line and "proj.pt" in line and not (tmp_path / "proj.weights.h5").exists()


def test_zz_report_measured_differences() -> None:
    """Not a check: what the tests above measured (shown with pytest -s)."""
    for name, value in sorted(MEASURED.items()):
        print(f"{name}: {value:.3g}")
