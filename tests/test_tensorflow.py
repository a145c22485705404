"""TensorFlow checkpoints and Keras/HF h5 files, in and out (issue 5).

Inputs are made here with the reference writers — ``tf.compat.v1.train.Saver`` for OpenAI's
TF1 GPT-2 layout, ``tf.train.Checkpoint`` for TF2 object-based checkpoints, h5py in the exact
layout HF's ``save_pretrained`` wrote for ``tf_model.h5`` — and outputs are read back with
``tf.train.load_checkpoint``/h5py and, at the end of the chain, transformers and safetensors.
TensorFlow is imported in this process only by the tests that need it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .conftest import assert_one_line_error, lmconv, run
from .corpus.h5_cases import write_keras2


@pytest.fixture(scope="module")
def tf() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import tensorflow

    return tensorflow


def weights(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


def assert_same_tensors(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
        assert got[k].tobytes() == want[k].tobytes(), f"{k} differs"


def read_all(path: Path, **kw: Any) -> dict[str, np.ndarray]:
    from lmconv import read_model

    return {t.name: t.load() for t in read_model(path, **kw)}


# ----------------------------------------------------------------------------- inputs, as others wrote them
def openai_gpt2_layout(w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """HF GPT-2 weights in OpenAI's TF1 release layout (model/h0/attn/c_attn/w is [1, in, out])."""
    out = {"model/wte": w["transformer.wte.weight"], "model/wpe": w["transformer.wpe.weight"],
           "model/ln_f/g": w["transformer.ln_f.weight"], "model/ln_f/b": w["transformer.ln_f.bias"]}
    i = 0
    while f"transformer.h.{i}.ln_1.weight" in w:
        p = f"transformer.h.{i}."
        for ln in ("ln_1", "ln_2"):
            out[f"model/h{i}/{ln}/g"], out[f"model/h{i}/{ln}/b"] = w[p + ln + ".weight"], w[p + ln + ".bias"]
        for m in ("attn/c_attn", "attn/c_proj", "mlp/c_fc", "mlp/c_proj"):
            k = p + m.replace("/", ".")
            out[f"model/h{i}/{m}/w"], out[f"model/h{i}/{m}/b"] = w[k + ".weight"][None], w[k + ".bias"]
        i += 1
    return out


def save_tf1(tf: Any, variables: dict[str, np.ndarray], prefix: Path) -> None:
    with tf.Graph().as_default():
        for name, value in variables.items():
            tf.compat.v1.Variable(value, name=name)
        tf.compat.v1.train.get_or_create_global_step()
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, str(prefix))


def hf_tf_gpt2_names(w: dict[str, np.ndarray], old_embeddings: bool) -> dict[str, np.ndarray]:
    """HF GPT-2 weights under TFGPT2LMHeadModel's variable names (Conv1D weights stay [in, out])."""
    out = {}
    for name, a in w.items():
        comps = name.split(".")
        if comps[-2] in ("ln_1", "ln_2", "ln_f"):
            comps[-1] = {"weight": "gamma", "bias": "beta"}[comps[-1]]
        if comps[1] in ("wte", "wpe"):
            comps[-1] = "weight" if (old_embeddings and comps[1] == "wte") else "embeddings"
        path = "/".join(comps).replace("h/", "h_._", 1) if comps[1] == "h" else "/".join(comps)
        out[f"tfgp_t2lm_head_model/{path}:0"] = a
    return out


def hf_tf_llama_names(w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Llama weights as HF's TF port spells them: Dense kernels [in, out], layers_._N lists."""
    out = {}
    for name, a in w.items():
        comps = name.split(".")
        if comps[-1] == "weight" and (comps[-2].endswith("_proj") or comps[0] == "lm_head"):
            comps[-1], a = "kernel", a.T
        elif comps[-2] == "embed_tokens":
            comps[-1] = "embeddings"
        path = "/".join(comps).replace("layers/", "layers_._")
        out[f"tf_llama_for_causal_lm/{path}:0"] = np.ascontiguousarray(a)
    return out


# ----------------------------------------------------------------------------- (1) TF1 OpenAI GPT-2
def logits(folder: Path) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.eval()
    vocab = model.config.vocab_size
    ids = torch.tensor([[(7 * i + 3) % vocab for i in range(16)]])
    with torch.no_grad():
        return model(ids).logits.numpy()


def test_tf1_openai_gpt2_checkpoint_gives_the_same_logits(tf: Any, tiny_gpt2: Path, tmp_path: Path) -> None:
    w = {k: v for k, v in weights(tiny_gpt2).items() if k != "lm_head.weight"}  # tied: OpenAI's has none
    ckpt = tmp_path / "openai"
    ckpt.mkdir()
    variables = openai_gpt2_layout(w)
    variables["model/wte/adam_m"] = np.zeros_like(w["transformer.wte.weight"])  # optimiser slots: left out
    variables["model/h0/attn/c_attn/w/adam_v"] = np.zeros_like(variables["model/h0/attn/c_attn/w"])
    save_tf1(tf, variables, ckpt / "model.ckpt")
    shutil.copy(tiny_gpt2 / "config.json", ckpt / "config.json")

    run(ckpt / "model.ckpt", f"{tmp_path}/out/")
    assert_same_tensors(weights(tmp_path / "out"), w)
    want, got = logits(tiny_gpt2), logits(tmp_path / "out")
    assert np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want))

    # SRC may also be the .index file or the folder with its `checkpoint` state file.
    assert_same_tensors(read_all(ckpt / "model.ckpt.index"), w)
    assert_same_tensors(read_all(ckpt), w)


def test_openai_release_without_config_uses_hparams_json(tf: Any, tiny_gpt2: Path, tmp_path: Path) -> None:
    from lmconv import read_model

    w = weights(tiny_gpt2)
    cfg = json.loads((tiny_gpt2 / "config.json").read_text())
    save_tf1(tf, openai_gpt2_layout(w), tmp_path / "model.ckpt")
    (tmp_path / "hparams.json").write_text(json.dumps({
        "n_vocab": cfg["vocab_size"], "n_ctx": cfg["n_positions"], "n_embd": cfg["n_embd"],
        "n_head": cfg["n_head"], "n_layer": cfg["n_layer"]}))
    model = read_model(tmp_path / "model.ckpt")
    assert model.architecture == "GPT2LMHeadModel" and model.config["n_embd"] == cfg["n_embd"]
    assert model.metadata["tensorflow"]["naming"] == "openai-gpt2"


# ----------------------------------------------------------------------------- (2) TF2 object-based
def test_tf2_object_based_checkpoint_reads(tf: Any, tiny_gpt2: Path, tmp_path: Path) -> None:
    w = weights(tiny_gpt2)
    root = tf.Module()
    for name, a in hf_tf_gpt2_names(w, old_embeddings=False).items():
        comps = name[: -len(":0")].replace("_._", "/").split("/")[1:]  # object paths: lists are /N
        node = root
        for c in comps[:-1]:
            if not hasattr(node, c):
                setattr(node, c, tf.Module())
            node = getattr(node, c)
        setattr(node, comps[-1], tf.Variable(a))
    optimizer = tf.Module()
    optimizer.iter = tf.Variable(3, dtype=tf.int64)
    ckpt = tf.train.Checkpoint(model=root, optimizer=optimizer)
    prefix = ckpt.save(str(tmp_path / "tf2" / "ckpt"))  # ckpt-1, with save_counter and a `checkpoint` file
    keys = dict(tf.train.list_variables(prefix))
    assert "model/transformer/h/0/attn/c_attn/weight/.ATTRIBUTES/VARIABLE_VALUE" in keys and "save_counter/.ATTRIBUTES/VARIABLE_VALUE" in keys

    config = tiny_gpt2 / "config.json"
    for src in (Path(prefix), Path(prefix + ".index"), tmp_path / "tf2"):
        assert_same_tensors(read_all(src, config=config), w)
    # Without a config the HF-TF names still give HF names (the GPT-2 signature is recognised).
    assert sorted(read_all(Path(prefix))) == sorted(w)


def test_bookkeeping_is_left_out() -> None:
    from lmconv.plugins.formats.tensorflow.names import is_bookkeeping

    for key in ("global_step", "save_counter", "optimizer/iter", "model/wte/adam_m", "bert/x/kernel/adam_v",
                "model/x/kernel/.OPTIMIZER_SLOT/optimizer/m", "_CHECKPOINTABLE_OBJECT_GRAPH", "beta1_power",
                "model/h0/attn/c_attn/w/Adam_1"):
        assert is_bookkeeping(key), key
    for key in ("model/wte", "model/h0/ln_1/b", "tf_x/model/layers_._0/self_attn/q_proj/kernel", "dense/bias"):
        assert not is_bookkeeping(key), key


def test_name_rules() -> None:
    from lmconv.plugins.formats.tensorflow.names import (
        TRANSPOSE,
        hf_tf_name,
        keras_scope,
        openai_gpt2_name,
    )

    assert keras_scope("TFGPT2LMHeadModel") == "tfgp_t2lm_head_model"
    assert keras_scope("TFLlamaForCausalLM") == "tf_llama_for_causal_lm"
    assert hf_tf_name("tfgp_t2lm_head_model/transformer/h_._0/attn/c_attn/weight", (4, 12)) == ("transformer.h.0.attn.c_attn.weight", "")
    assert hf_tf_name("tf_llama_for_causal_lm/model/layers_._3/self_attn/q_proj/kernel", (4, 4)) == ("model.layers.3.self_attn.q_proj.weight", TRANSPOSE)
    assert hf_tf_name("tf_bert_model/bert/embeddings/LayerNorm/beta", (4,)) == ("bert.embeddings.LayerNorm.bias", "")
    assert hf_tf_name("tf_bert_model/bert/embeddings/word_embeddings/embeddings", (9, 4))[0] == "bert.embeddings.word_embeddings.weight"
    assert openai_gpt2_name("model/h11/mlp/c_proj/w") == ("transformer.h.11.mlp.c_proj.weight", "squeeze0")
    assert openai_gpt2_name("model/ln_f/g") == ("transformer.ln_f.weight", "")


# ----------------------------------------------------------------------------- (3) HF tf_model.h5
@pytest.mark.parametrize("old_embeddings", [False, True], ids=["keras-embedding", "tf-shared-embeddings"])
def test_hf_gpt2_tf_model_h5_reads_canonical_names(tiny_gpt2: Path, tmp_path: Path, old_embeddings: bool) -> None:
    w = weights(tiny_gpt2)
    write_keras2(tmp_path / "tf_model.h5", hf_tf_gpt2_names(w, old_embeddings))
    shutil.copy(tiny_gpt2 / "config.json", tmp_path / "config.json")
    assert_same_tensors(read_all(tmp_path / "tf_model.h5"), w)


def test_hf_llama_tf_h5_transposes_dense_kernels(tiny_llama: Path, tmp_path: Path) -> None:
    w = weights(tiny_llama)
    write_keras2(tmp_path / "tf_model.h5", hf_tf_llama_names(w), whole_model=True)
    shutil.copy(tiny_llama / "config.json", tmp_path / "config.json")
    assert_same_tensors(read_all(tmp_path / "tf_model.h5"), w)
    run(tmp_path / "tf_model.h5", f"{tmp_path}/out/")
    assert_same_tensors(weights(tmp_path / "out"), w)


def test_unknown_keras_model_keeps_its_names(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    named = {"sequential/d1/kernel:0": rng.standard_normal((4, 3), dtype=np.float32),
             "sequential/d1/bias:0": rng.standard_normal(3, dtype=np.float32),
             "sequential/ln/gamma:0": rng.standard_normal(3, dtype=np.float32)}
    write_keras2(tmp_path / "m.h5", named)
    want = {k[:-2]: v for k, v in named.items()}
    assert_same_tensors(read_all(tmp_path / "m.h5"), want)
    run(tmp_path / "m.h5", tmp_path / "m.safetensors")
    run(tmp_path / "m.safetensors", tmp_path / "back.h5")
    assert_same_tensors(read_all(tmp_path / "back.h5"), want)


def test_keras3_weights_h5_and_keras_archive(tmp_path: Path) -> None:
    import h5py

    rng = np.random.default_rng(1)
    arrays = {"layers/dense/vars/0": rng.standard_normal((4, 3), dtype=np.float32),
              "layers/dense/vars/1": rng.standard_normal(3, dtype=np.float32),
              "layers/embedding/vars/0": rng.standard_normal((10, 4), dtype=np.float32)}
    with h5py.File(tmp_path / "model.weights.h5", "w") as f:
        f.create_group("vars")
        for k, a in arrays.items():
            f.create_dataset(k, data=a)
    assert_same_tensors(read_all(tmp_path / "model.weights.h5"), arrays)
    with zipfile.ZipFile(tmp_path / "m.keras", "w") as zf:
        zf.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
        zf.writestr("config.json", json.dumps({"class_name": "Sequential"}))
        zf.write(tmp_path / "model.weights.h5", "model.weights.h5")
    assert_same_tensors(read_all(tmp_path / "m.keras"), arrays)
    proc = lmconv(tmp_path / "m.keras", tmp_path / "again.keras")
    assert_one_line_error(proc, 2, ".h5")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # keras' own numpy-2 copy= warning
def test_real_keras_files_read_and_keras_loads_our_h5(tf: Any, tmp_path: Path) -> None:
    import keras

    def make() -> Any:
        return keras.Sequential([
            keras.Input((4,)), keras.layers.Embedding(10, 4, name="emb"), keras.layers.LayerNormalization(name="ln"),
            keras.layers.Dense(3, name="d1"), keras.layers.Dense(2, use_bias=False, name="dense")],
            name="sequential")  # fixed: Keras numbers unnamed models per process, and other tests make some

    model = make()
    model.save(tmp_path / "m.keras")
    model.save_weights(tmp_path / "m.weights.h5")
    model.save(tmp_path / "legacy.h5")  # Keras 2 layout, under model_weights/
    emb, ln, d1, dense = model.layers
    want = {"layers/embedding/vars/0": emb.embeddings, "layers/layer_normalization/vars/0": ln.gamma,
            "layers/layer_normalization/vars/1": ln.beta, "layers/dense/vars/0": d1.kernel,
            "layers/dense/vars/1": d1.bias, "layers/dense_1/vars/0": dense.kernel}
    want = {k: np.asarray(v.numpy()) for k, v in want.items()}
    assert_same_tensors(read_all(tmp_path / "m.keras"), want)
    assert_same_tensors(read_all(tmp_path / "m.weights.h5"), want)
    legacy = read_all(tmp_path / "legacy.h5")
    assert np.array_equal(legacy["sequential/d1/kernel"], want["layers/dense/vars/0"])  # verbatim names

    run(tmp_path / "legacy.h5", tmp_path / "m.safetensors")
    run(tmp_path / "m.safetensors", tmp_path / "back.h5")
    other = make()
    other.load_weights(tmp_path / "back.h5")  # Keras reads the layout we write
    for a, b in zip(model.get_weights(), other.get_weights(), strict=True):
        assert np.array_equal(a, b)


# ----------------------------------------------------------------------------- (4) round trips, our writers
@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])
def test_safetensors_tf_h5_pytorch_safetensors_is_bit_exact(tf: Any, fixture: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    src: Path = request.getfixturevalue(fixture)
    w = weights(src)
    run(src / "model.safetensors", tmp_path / "m.ckpt")
    run(tmp_path / "m.ckpt", tmp_path / "m.h5")
    run(tmp_path / "m.h5", tmp_path / "m.pt")
    run(tmp_path / "m.pt", tmp_path / "back.safetensors")
    from safetensors.numpy import load_file

    assert_same_tensors(load_file(str(tmp_path / "back.safetensors")), w)

    # TF sees the names and layouts its users expect.
    reader = tf.train.load_checkpoint(str(tmp_path / "m.ckpt"))
    shapes = reader.get_variable_to_shape_map()
    key = "model/{}/.ATTRIBUTES/VARIABLE_VALUE".format
    if fixture == "tiny_gpt2":
        expect = {
            key("transformer/h/0/attn/c_attn/weight"): w["transformer.h.0.attn.c_attn.weight"],  # Conv1D: [in, out] as in PT
            key("transformer/h/1/ln_2/gamma"): w["transformer.h.1.ln_2.weight"],
            key("transformer/ln_f/beta"): w["transformer.ln_f.bias"],
            key("transformer/wte/embeddings"): w["transformer.wte.weight"],
        }
        h5_name = "transformer/tfgp_t2lm_head_model/transformer/h_._1/mlp/c_fc/weight:0"
        h5_value = w["transformer.h.1.mlp.c_fc.weight"]
    else:
        expect = {
            key("model/layers/0/self_attn/k_proj/kernel"): w["model.layers.0.self_attn.k_proj.weight"].T,  # Dense: [in, out]
            key("model/layers/1/mlp/down_proj/kernel"): w["model.layers.1.mlp.down_proj.weight"].T,
            key("model/layers/1/input_layernorm/weight"): w["model.layers.1.input_layernorm.weight"],
            key("model/embed_tokens/embeddings"): w["model.embed_tokens.weight"],
            key("lm_head/kernel"): w["lm_head.weight"].T,
        }
        h5_name = "model/tf_llama_for_causal_lm/model/layers_._0/self_attn/q_proj/kernel:0"
        h5_value = w["model.layers.0.self_attn.q_proj.weight"].T
    for k, v in expect.items():
        assert shapes[k] == list(v.shape), k
        assert np.array_equal(reader.get_tensor(k), v), k
    assert len([k for k in shapes if k.startswith("model/")]) == len(w)

    # A real object-based checkpoint: tf.train.Checkpoint restores it into a matching object tree.
    root, variables = tf.Module(), {}
    for k in sorted(shapes):
        if not k.startswith("model/"):
            continue
        comps = k[len("model/"): -len("/.ATTRIBUTES/VARIABLE_VALUE")].split("/")
        node = root
        for c in comps[:-1]:
            if not hasattr(node, c):
                setattr(node, c, tf.Module())
            node = getattr(node, c)
        variables[k] = tf.Variable(tf.zeros(shapes[k], dtype=reader.get_variable_to_dtype_map()[k]))
        setattr(node, comps[-1], variables[k])
    tf.train.Checkpoint(model=root).restore(str(tmp_path / "m.ckpt")).assert_existing_objects_matched()
    for k, v in expect.items():
        assert np.array_equal(variables[k].numpy(), v), k

    import h5py

    with h5py.File(tmp_path / "m.h5") as f:
        assert np.array_equal(f[h5_name][()], h5_value)


def test_bf16_survives_checkpoint_and_h5(tf: Any, tiny_llama: Path, tmp_path: Path) -> None:
    import ml_dtypes
    import torch
    from safetensors import safe_open

    w = {k: v.astype(ml_dtypes.bfloat16) for k, v in weights(tiny_llama).items()}
    run(tiny_llama / "model.safetensors", tmp_path / "m.ckpt", "--dtype", "bf16")
    assert tf.train.load_checkpoint(str(tmp_path / "m.ckpt")).get_variable_to_dtype_map()[
        "model/model/norm/weight/.ATTRIBUTES/VARIABLE_VALUE"] == tf.bfloat16
    run(tmp_path / "m.ckpt", tmp_path / "m.h5")
    run(tmp_path / "m.h5", tmp_path / "back.safetensors")
    with safe_open(str(tmp_path / "back.safetensors"), "pt") as f:
        got = {k: f.get_tensor(k).view(torch.int16).numpy().view(ml_dtypes.bfloat16) for k in f.keys()}
    assert_same_tensors(got, w)


# ----------------------------------------------------------------------------- (5) inspect
def test_inspect_checkpoint_and_h5(tf: Any, tiny_gpt2: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lmconv.cli import main

    run(tiny_gpt2 / "model.safetensors", tmp_path / "m.ckpt")
    run(tmp_path / "m.ckpt", tmp_path / "m.h5")
    w = weights(tiny_gpt2)
    n = len(w)
    for path, fmt in ((tmp_path / "m.ckpt", "tf"), (tmp_path / "m.ckpt.index", "tf"), (tmp_path / "m.h5", "h5")):
        capsys.readouterr()
        assert main(["inspect", str(path), "--json"]) == 0
        man = json.loads(capsys.readouterr().out)
        assert man["format"] == fmt and man["architecture"] == "GPT2LMHeadModel"
        assert man["totals"]["tensors"] == n
        c_attn = next(t for t in man["tensors"] if t["name"] == "transformer.h.0.attn.c_attn.weight")
        assert c_attn["shape"] == list(w["transformer.h.0.attn.c_attn.weight"].shape) and c_attn["dtype"] == "f32"
        assert main(["inspect", str(path)]) == 0
        assert "transformer.wte.weight" in capsys.readouterr().out


# ----------------------------------------------------------------------------- (6) without TensorFlow
HIDE_TF = """
import sys, json
sys.modules["tensorflow"] = None  # an import of tensorflow now raises ImportError
from lmconv.cli import main
from lmconv.registry import get_registry
get_registry()
loaded = [m for m in ("tensorflow", "h5py") if m in sys.modules and sys.modules[m] is not None]
codes = [main(argv) for argv in json.loads(sys.argv[1])]
print(json.dumps({"codes": codes, "loaded_at_start": loaded}))
"""


def test_missing_tensorflow_names_the_extra_and_h5_still_works(tf: Any, tiny_gpt2: Path, tmp_path: Path) -> None:
    run(tiny_gpt2 / "model.safetensors", tmp_path / "m.ckpt")
    run(tmp_path / "m.ckpt", tmp_path / "m.h5")
    argvs = [
        [str(tmp_path / "m.ckpt"), str(tmp_path / "a.safetensors"), "--quiet"],
        [str(tiny_gpt2 / "model.safetensors"), str(tmp_path / "b.ckpt"), "--quiet"],
        [str(tmp_path / "m.h5"), str(tmp_path / "c.safetensors"), "--quiet"],
        [str(tiny_gpt2 / "model.safetensors"), str(tmp_path / "d.h5"), "--quiet"],
    ]
    proc = subprocess.run([sys.executable, "-c", HIDE_TF, json.dumps(argvs)], capture_output=True, text=True, timeout=120)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["loaded_at_start"] == []  # neither TensorFlow nor h5py is imported when plugins load
    assert out["codes"] == [7, 7, 0, 0], proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 2 and all(e.startswith("lmconv: error:") and "lmconv[tf]" in e for e in errors), proc.stderr
    assert "Traceback" not in proc.stderr
    assert_same_tensors(read_all(tmp_path / "c.safetensors"), weights(tiny_gpt2))
    assert_same_tensors(read_all(tmp_path / "d.h5"), weights(tiny_gpt2))


# ----------------------------------------------------------------------------- (7) bad input
def test_wrong_shape_h5_dataset_is_an_input_error(tiny_gpt2: Path, tmp_path: Path) -> None:
    w = weights(tiny_gpt2)
    named = hf_tf_gpt2_names(w, old_embeddings=False)
    key = "tfgp_t2lm_head_model/transformer/h_._0/attn/c_attn/weight:0"
    named[key] = np.ascontiguousarray(named[key].T)  # [3n, n]: not what config.json implies
    write_keras2(tmp_path / "tf_model.h5", named)
    shutil.copy(tiny_gpt2 / "config.json", tmp_path / "config.json")
    proc = lmconv(tmp_path / "tf_model.h5", tmp_path / "out.safetensors")
    assert_one_line_error(proc, 3, str(tmp_path / "tf_model.h5"), "c_attn")

    # A kernel must have 2 to 4 dimensions; a layer-norm gamma one.
    write_keras2(tmp_path / "bad.h5", {"tf_x_model/x/dense/kernel:0": np.zeros(3, np.float32)})
    assert_one_line_error(lmconv("inspect", tmp_path / "bad.h5"), 3, "bad.h5", "kernel")


def test_truncated_h5_is_an_input_error(tiny_gpt2: Path, tmp_path: Path) -> None:
    write_keras2(tmp_path / "full.h5", hf_tf_gpt2_names(weights(tiny_gpt2), old_embeddings=False))
    data = (tmp_path / "full.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    assert_one_line_error(lmconv(tmp_path / "cut.h5", tmp_path / "out.safetensors"), 3, "cut.h5")
    (tmp_path / "head.h5").write_bytes(data[:100])
    assert_one_line_error(lmconv("inspect", tmp_path / "head.h5"), 3, "head.h5")


def test_missing_data_shard_is_an_input_error(tf: Any, tiny_gpt2: Path, tmp_path: Path) -> None:
    run(tiny_gpt2 / "model.safetensors", tmp_path / "m.ckpt", "--max-shard-size", "40KB")
    data = sorted(tmp_path.glob("m.ckpt.data-*"))
    assert len(data) > 1  # sharded: the writer never holds more than a shard
    assert_same_tensors(read_all(tmp_path / "m.ckpt"), weights(tiny_gpt2))
    data[1].unlink()
    proc = lmconv(tmp_path / "m.ckpt", tmp_path / "out.safetensors")
    assert_one_line_error(proc, 3, "m.ckpt.index", data[1].name)
    for p in data:
        p.unlink(missing_ok=True)
    assert_one_line_error(lmconv("inspect", tmp_path / "m.ckpt.index"), 3, "m.ckpt.index", "data")
