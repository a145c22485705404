"""lmconv verify / roundtrip / SRC DST --verify: lossless hops are bit-exact, lossy ones stay inside their
documented bounds, and every kind of damage fails with exit 6 naming what is wrong."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from lmconv.cli import main
from lmconv.pipeline import read_model
from lmconv import verify as V
from tests.test_forward import tiny_models  # noqa: F401  (session fixture)

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "schemas" / "verify-report.schema.json").read_text())
DOC = (ROOT / "docs" / "verification.md").read_text()


def run(*args: object) -> int:
    return main([str(a) for a in args])


def convert(src: Path, dst: Path | str, *flags: str) -> Path:
    if not Path(dst).exists():
        Path(str(dst).rstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        assert run(src, dst, "--quiet", *flags) == 0
    return Path(str(dst).rstrip("/"))


def validate(doc: dict) -> None:
    import jsonschema

    jsonschema.validate(doc, SCHEMA, cls=jsonschema.Draft202012Validator)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("verify")


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_weights(folder: Path, fn) -> None:  # type: ignore[no-untyped-def]
    from safetensors.numpy import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    fn(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


# ----------------------------------------------------------------------------- lossless hops
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_lossless_hops_are_bit_exact(tiny_models: dict[str, Path], work: Path, kind: str) -> None:  # noqa: F811
    src = tiny_models[kind]
    d = work / f"lossless-{kind}"
    d.mkdir()
    st = convert(src, d / "st" / "model.safetensors")
    pt = convert(st, d / "pt" / "model.pt")
    hf = convert(pt, f"{d / 'hf'}/")
    gg = convert(hf, d / "f32.gguf")
    back = convert(gg, f"{d / 'back'}/")
    for a, b in ((src, st), (st, pt), (pt, hf), (hf, gg), (gg, back), (src, back), (src, gg)):
        report = V.verify_models(read_model(a), read_model(b))
        assert report.ok, report.summary()
        assert report.tensors and all(t.status == "exact" and t.exact for t in report.tensors)
        # Same dtype on both sides → the stored bits are equal too.
        assert all(t.bitwise for t in report.tensors if t.dtype_a == t.dtype_b)
        assert report.config.ok and report.tokenizer.ok and report.tokenizer.compared != "none"
    assert run("verify", src, gg, "--quiet") == 0


def test_tie_in_one_model_pairs_with_two_names_in_the_other() -> None:
    from lmconv.ir import Model, tensor_from_array

    emb = np.arange(12, dtype=np.float32).reshape(4, 3)
    a = Model(config={})
    a.add(tensor_from_array("embed.weight", emb, aliases=("lm_head.weight",)))
    b = Model(config={})
    b.add(tensor_from_array("embed.weight", emb.copy()))
    b.add(tensor_from_array("lm_head.weight", emb.copy()))
    report = V.verify_models(a, b)
    assert report.ok and [t.name for t in report.tensors] == ["embed.weight", "lm_head.weight"]
    report = V.verify_models(b, a)
    assert report.ok
    c = Model(config={})
    c.add(tensor_from_array("embed.weight", emb.copy()))
    c.add(tensor_from_array("lm_head.weight", emb + np.float32(1e-3)))
    report = V.verify_models(a, c)
    assert not report.ok and "'lm_head.weight'" in report.summary()


# ----------------------------------------------------------------------------- damage is caught
def _fails(capsys: pytest.CaptureFixture[str], a: Path, b: Path, *needles: str, args: tuple[str, ...] = ()) -> str:
    capsys.readouterr()
    assert run("verify", a, b, "--quiet", *args) == 6
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("lmconv: error: ")
    for n in needles:
        assert n in err, err
    return err


def test_one_weight_changed_by_1e3_fails(tiny_models: dict[str, Path], work: Path,  # noqa: F811
                                         capsys: pytest.CaptureFixture[str]) -> None:
    for kind, src in tiny_models.items():
        bad = copy_model(src, work / f"changed-{kind}")
        names: list[str] = []

        def change(t: dict[str, np.ndarray]) -> None:
            name = sorted(n for n, a in t.items() if a.ndim == 2 and "embed" not in n and "wte" not in n)[0]
            t[name] = t[name].copy()
            t[name][1, 2] += np.float32(1e-3)
            names.append(name)

        edit_weights(bad, change)
        err = _fails(capsys, src, bad, f"'{names[0]}'", "lossless")
        assert "1 element" in err
        # the same change passes a looser absolute tolerance and fails a tighter one
        assert run("verify", src, bad, "--quiet", "--atol", "2e-3") == 0
        _fails(capsys, src, bad, f"'{names[0]}'", args=("--atol", "1e-4"))


def test_missing_tensor_fails(tiny_models: dict[str, Path], work: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    src = tiny_models["llama"]
    bad = copy_model(src, work / "missing")
    edit_weights(bad, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    _fails(capsys, src, bad, "'model.layers.1.mlp.up_proj.weight'", "missing in B")
    _fails(capsys, bad, src, "'model.layers.1.mlp.up_proj.weight'", "missing in A")


def test_shape_change_fails(tiny_models: dict[str, Path], work: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    src = tiny_models["gpt2"]
    bad = copy_model(src, work / "shape")

    def cut(t: dict[str, np.ndarray]) -> None:
        t["transformer.h.0.mlp.c_fc.bias"] = t["transformer.h.0.mlp.c_fc.bias"][:-1].copy()

    edit_weights(bad, cut)
    _fails(capsys, src, bad, "'transformer.h.0.mlp.c_fc.bias'", "shape")


def test_tokenizer_edit_fails(tiny_models: dict[str, Path], work: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    src = tiny_models["llama"]
    bad = copy_model(src, work / "tokenizer")
    tj = json.loads((bad / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = tj["model"]["vocab"]
    victim = next(k for k, v in vocab.items() if v == 50)
    vocab["zz" + victim] = vocab.pop(victim)
    (bad / "tokenizer.json").write_text(json.dumps(tj), encoding="utf-8")
    err = _fails(capsys, src, bad, "tokenizer", "50")
    assert "tensor" not in err
    # GGUF's fields on one side, HF files on the other: compared through the bridge.
    gg = convert(src, work / "tok-ref.gguf")
    _fails(capsys, gg, bad, "tokenizer")


def test_config_change_fails(tiny_models: dict[str, Path], work: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    src = tiny_models["llama"]
    bad = copy_model(src, work / "config")
    cfg = json.loads((bad / "config.json").read_text())
    cfg["rms_norm_eps"] = 1e-3
    cfg["transformers_version"] = "0.0.1"  # bookkeeping: ignored
    (bad / "config.json").write_text(json.dumps(cfg))
    _fails(capsys, src, bad, "config 'rms_norm_eps'")


# ----------------------------------------------------------------------------- lossy hops
@pytest.mark.parametrize("quant", ["q8_0", "q4_0", "q4_K"])
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_quantised_error_within_documented_bound(tiny_models: dict[str, Path], work: Path, kind: str, quant: str) -> None:  # noqa: F811
    src = tiny_models[kind]
    gg = convert(src, work / f"{kind}-{quant}.gguf", "--quant", quant)
    report = V.verify_models(read_model(src), read_model(gg), logits=True)
    assert report.ok, report.summary()
    lossy = [t for t in report.tensors if t.steps]
    assert lossy
    for t in lossy:
        assert t.steps == [f"quant:{t.dtype_b}"] and t.layout == "gguf"
        assert t.max_ratio is not None and t.max_ratio <= 1.0
        assert t.rel_err is not None and 0 < t.rel_err <= t.rel_bound
        assert 0.9 < t.cosine <= 1.0
        # the bound applied is the documented one
        bound = V.bound_for(t.steps[0])
        assert f"| {t.dtype_b} |" in DOC and _fmt_coef(bound.blocks[0][1]) in DOC
    lg = report.logits
    assert lg is not None and lg["n_tokens"] > 0 and lg["max_abs_diff"] > 0
    assert lg["rel_max_diff"] < {"q8_0": 0.1, "q4_0": 0.5, "q4_K": 0.5}[quant]
    assert lg["top1_agreement"] >= {"q8_0": 0.75, "q4_0": 0.25, "q4_K": 0.25}[quant]
    assert math.isfinite(lg["kl_mean"]) and lg["kl_mean"] >= 0


@pytest.mark.parametrize("quant", ["q4_K", "q6_K", "q4_k_m"])
def test_k_quants_within_bounds_on_rows_of_256(work: Path, quant: str) -> None:
    """The fixtures' rows (64) are too short for 256-blocks: a wider llama puts K-quants everywhere."""
    from fixtures.make_fixtures import build_llama

    src = work / "wide-llama"
    if not src.exists():
        build_llama(src, hidden_size=256, intermediate_size=512, num_layers=2, num_heads=4, num_kv_heads=2, seed=3)
    gg = convert(src, work / f"wide-{quant}.gguf", "--quant", quant)
    report = V.verify_models(read_model(src), read_model(gg), logits=True)
    assert report.ok, report.summary()
    k_types = {t.dtype_b for t in report.tensors if t.dtype_b and t.dtype_b.endswith("_K")}
    assert k_types, "no tensor was K-quantised"
    for t in report.tensors:
        if t.steps:
            assert t.rel_err is not None and 0 < t.rel_err <= t.rel_bound, t.name
    # On random weights 4-bit top-1 agreement is noise; the figures must be there and sane.
    lg = report.logits
    assert lg is not None and lg["n_tokens"] > 0 and lg["kl_mean"] > 0 and 0 <= lg["top1_agreement"] <= 1


def _fmt_coef(x: float) -> str:
    return f"{x:.4g}"


def _hostile_rows() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [
        rng.standard_normal((8, 1024)),
        rng.laplace(size=(8, 1024)),
        rng.uniform(0, 1, (8, 1024)),  # all positive
        (rng.standard_normal((8, 64, 16)) * 10 ** rng.uniform(-4, 0, (8, 64, 1))).reshape(8, 1024),  # sub-block scales
        np.where(rng.random((8, 1024)) < 0.01, 50, 1) * rng.standard_normal((8, 1024)),  # outliers
        rng.standard_normal((8, 1024)) * 1e-6,  # block scales in f16's subnormal range
        rng.choice([-1.0, 1.0, 0.999, -0.5, 0.0], (8, 1024)),
        # sparse: half the elements and a third of the 32-element sub-blocks exactly zero (iq3_s: ggml
        # gives a zero sub-block no slot, so the later ones decode with their neighbours' codes and signs)
        (rng.standard_normal((8, 32, 32)) * (rng.random((8, 32, 32)) < 0.5)
         * (rng.random((8, 32, 1)) < 0.67)).reshape(8, 1024),
    ]


LATTICE = ["iq3_s", "iq3_xxs", "iq2_s", "iq2_xs", "iq2_xxs", "iq1_s", "iq1_m"]
NEEDS_IMATRIX = ("iq2_xxs", "iq2_xs", "iq1_s")  # ggml refuses these without one


@pytest.mark.parametrize("qtype", ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K",
                                   "iq4_nl", "iq4_xs", *LATTICE])
def test_bounds_hold_on_hostile_data(qtype: str) -> None:
    """The derived bounds against our (llama.cpp byte-identical) quantisers on awkward data (the
    types that need an importance matrix get a uniform one), and the bound is the documented one."""
    from lmconv.registry import get_registry

    q = get_registry().quantizer(qtype)
    bound = V.bound_for(f"quant:{qtype}")
    row = next(line for line in DOC.splitlines() if line.startswith(f"| {qtype} |"))
    assert all(_fmt_coef(coef) in row for _, coef in bound.blocks), (row, bound.describe())
    w = np.ones(1024, np.float32) if qtype in NEEDS_IMATRIX else None
    for x in _hostile_rows():
        x = x.astype(np.float32)
        y = q.dequantize(q.quantize(x, imatrix=w)).reshape(x.shape).astype(np.float64)
        a = x.astype(np.float64)
        tol = bound.tolerance(np.abs(a)) * V.SLACK
        assert np.all(np.abs(a - y) <= tol), float(np.max(np.abs(a - y) / tol))


@pytest.mark.parametrize("qtype", ["q4_0", "q5_0", "q3_K", "q6_K", "iq4_nl", "iq4_xs", *LATTICE])
def test_bounds_hold_with_hostile_importance_weights(qtype: str) -> None:
    """With an importance matrix the scale search is weighted: the type's bound plus its declared
    ``imatrix:TYPE`` allowance (none for the i-quants, whose derivations hold for any positive
    weights) must hold for weights spread over decades, concentrated on one column in 97 or one in 7, or
    near zero."""
    from lmconv.bounds import declared, sum_bounds
    from lmconv.registry import get_registry

    q = get_registry().quantizer(qtype)
    extra = declared(f"imatrix:{qtype}")
    assert (extra is None) == qtype.startswith("iq")
    bound = sum_bounds([V.bound_for(f"quant:{qtype}")] + ([extra] if extra is not None else []))
    rng = np.random.default_rng(7)
    weights = [np.exp(rng.standard_normal(1024) * 3), np.where(np.arange(1024) % 97 == 0, 1e6, 1e-6),
               np.where(np.arange(1024) % 7 == 0, 1e4, 1e-4), np.full(1024, 1e-30), rng.uniform(0, 1, 1024) ** 8]
    for w in weights:
        for x in _hostile_rows():
            x = x.astype(np.float32)
            y = q.dequantize(q.quantize(x, imatrix=w.astype(np.float32))).reshape(x.shape).astype(np.float64)
            a = x.astype(np.float64)
            tol = bound.tolerance(np.abs(a)) * V.SLACK
            assert np.all(np.abs(a - y) <= tol), float(np.max(np.abs(a - y) / tol))


# Inputs on which ggml's weighted fits of the asymmetric types come out as float32 rounding noise
# (docs/verification.md, "With an importance matrix"): why no ``imatrix:TYPE`` allowance is declared
# for them. q4_1/q5_1: one block of 32 values, importance 1 except 1e8 on two columns holding the same
# value; K-quants: one super-block whose sub-block j holds v_j·(linspace(-1, 1, n) + s_j), with the
# importance qw_j on all of it. The last figure: the error ggml makes, in maxima of the block (q4_1,
# q5_1) or super-block, rounded down; a float64 replay of the same code makes 0.01-0.22 of one.
_Q41_X = [-0.37, 0.99, 0.42, -0.62, 0.67, -1.45, 0.06, 0.06, 0.63, 0.44, -0.77, 0.53, 0.34, -0.65, 2.0, 0.8,
          -1.18, -0.99, 0.32, 0.31, -0.73, 1.22, 0.1, -0.86, -0.37, -0.18, -1.55, -0.83, -1.81, -0.29, 0.61, -1.29]
_Q51_X = [-0.39, 0.05, -0.17, -0.17, 0.06, -0.23, -0.96, -0.96, 0.57, -0.66, -0.36, -0.86, -1.67, -2.23, 0.06, -0.83,
          -0.76, -0.58, 0.42, 0.57, 0.69, 0.92, 2.98, 0.29, 0.15, -2.18, -1.68, 2.19, 2.75, 0.45, -0.08, 0.56]
_TWIN_HEAVY = [1.0] * 6 + [1e8, 1e8] + [1.0] * 24
NO_IMATRIX_ALLOWANCE = {
    "q4_1": ("q4_1", _Q41_X, _TWIN_HEAVY, 3.4),
    "q5_1": ("q5_1", _Q51_X, _TWIN_HEAVY, 2.5),
    "q2_K": ("q2_K", {"v": [0.43, 0.13, 0.02, 0.01, 0.01, 0, 0, 0, 0, 0, 0.07, 0, 0.39, 0.14, 0, 0],
                      "s": [-0.82, -1.0, -0.99, -0.96, -1.01, -0.86, -0.84, -1.0, -1.0, -1.0, -1.02, -1.0, -1.02, -1.0,
                            -1.01, -1.0]},
             [0.00011, 0.013, 2.7e-05, 3.1e-06, 29.0, 5.2, 410.0, 14000.0, 2.7, 12000.0, 39.0, 0.49, 7e6, 10.0, 1.4e-07,
              0.015], 12.8),
    "q4_K": ("q4_K", {"v": [0.18, 0.45, 0.13, 0.25, 0.2, 0.06, 0.53, 0.33],
                      "s": [-0.32, -0.32, 0.15, 0.75, -0.25, 0.57, -0.26, -0.49]},
             [0.0001, 10000.0, 0.00091, 0.0028, 0.014, 0.0024, 0.0001, 0.00095], 18.7),
    "q4_K-wide": ("q4_K", {"v": [0.2, 0.61, 0.13, 0.16, 0.21, 0.08, 0.55, 0.4],
                           "s": [-0.09, -0.05, -0.1, 0.18, 0.25, 0.06, -0.1, -0.58]},
                  [0.0015, 1.1e6, 2.1, 1.3e-06, 1.9, 2.6e-06, 0.0092, 4.3e-07], 60.0),
    "q5_K": ("q5_K", {"v": [0.75, 0.58, 0.26, 0.45, 0.13, 0.58, 0.96, 0.64],
                      "s": [-0.15, -0.47, 0.92, -0.24, 0.5, 0.7, -0.13, -0.73]},
             [0.006, 0.0001, 0.00083, 0.00015, 0.16, 0.0075, 10000.0, 0.00078], 23.2),
}


@pytest.mark.parametrize("case", list(NO_IMATRIX_ALLOWANCE))
def test_no_imatrix_allowance_where_ggml_has_no_bound(case: str) -> None:
    """The asymmetric types declare no ``imatrix:TYPE`` allowance: on these inputs ggml's own bytes
    (``ggml_quantize_chunk``, which our quantisers equal) are off by the recorded number of block
    maxima, so an allowance would either fail correct files or admit errors of tens of maxima."""
    from gguf import GGMLQuantizationType
    from lmconv.bounds import declared
    from lmconv.registry import get_registry

    from tests.test_kquants import _ggml_base

    qtype, data, qw, at_least = NO_IMATRIX_ALLOWANCE[case]
    q = get_registry().quantizer(qtype)  # loads the plugins, which declare the allowances
    assert declared(f"imatrix:{qtype}") is None
    assert "| imatrix:q4_1, q5_1, q2_K, q4_K, q5_K | none" in DOC
    if isinstance(data, dict):  # a K-quant super-block: sub-block j = v_j·(linspace(-1, 1, n) + s_j)
        sub = 256 // len(qw)
        x = np.concatenate([v * (np.linspace(-1, 1, sub) + s) for v, s in zip(data["v"], data["s"])])
        w = np.repeat(np.asarray(qw, np.float32), sub)
    else:
        x, w = np.asarray(data), np.asarray(qw, np.float32)
    x = x.astype(np.float32)[None, :]
    ours = np.asarray(q.quantize(x, imatrix=w)).reshape(1, -1)
    lib = _ggml_base()
    qt = int(GGMLQuantizationType[qtype.upper()])
    ref = np.zeros((1, lib.ggml_row_size(qt, x.shape[1])), np.uint8)
    lib.ggml_quantize_chunk(qt, x.ctypes.data, ref.ctypes.data, 0, 1, x.shape[1], w.ctypes.data)
    assert np.array_equal(ours, ref)
    err = np.abs(q.dequantize(ours).reshape(x.shape).astype(np.float64) - x)
    assert err.max() >= at_least * np.abs(x).max(), float(err.max() / np.abs(x).max())


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_cast_bounds_are_tight_and_hold(dtype: str) -> None:
    from lmconv import dtypes as dt

    d = dt.get(dtype)
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.standard_normal(10000), rng.standard_normal(1000) * 1e-6, rng.standard_normal(100) * 1e-30]).astype(np.float32)
    if dtype == "f16":
        x = x[np.abs(x) < 60000]
    y = x.astype(d.numpy).astype(np.float64)
    a = x.astype(np.float64)
    bound = V.bound_for(f"cast:{dtype}")
    ratio = np.abs(a - y) / (bound.tolerance(np.abs(a)[None, :])[0] * V.SLACK)
    assert ratio.max() <= 1.0
    assert ratio.max() > 0.9  # the bound is the real worst case, not a loose guess
    assert bound.rel == {"f16": 2.0**-11, "bf16": 2.0**-8}[dtype]


# ----------------------------------------------------------------------------- JSON, conversions, round trips
def test_json_report_validates(tiny_models: dict[str, Path], work: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    src = tiny_models["gpt2"]
    gg = convert(src, work / "gpt2-q8_0.gguf", "--quant", "q8_0")
    capsys.readouterr()
    assert run("verify", src, gg, "--json", "--logits") == 0
    doc = json.loads(capsys.readouterr().out)
    validate(doc)
    assert doc["ok"] and doc["logits"]["runtime_a"] == "numpy" and doc["first_failure"] is None
    bad = copy_model(src, work / "json-bad")
    edit_weights(bad, lambda t: t.pop("transformer.wpe.weight"))
    assert run("verify", src, bad, "--json") == 6
    doc = json.loads(capsys.readouterr().out)
    validate(doc)
    assert not doc["ok"] and "transformer.wpe.weight" in doc["first_failure"]


def test_text_logits(tiny_models: dict[str, Path], work: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    src = tiny_models["llama"]
    gg = convert(src, work / "llama-f16.gguf", "--dtype", "f16")
    capsys.readouterr()
    assert run("verify", src, gg, "--json", "--text", "Hello world, the quick brown fox.") == 0
    doc = json.loads(capsys.readouterr().out)
    validate(doc)
    lg = doc["logits"]
    assert lg["n_tokens"] > 3 and lg["rel_max_diff"] < 1e-2 and lg["top1_agreement"] >= 0.9


def test_llamacpp_runtime(tiny_models: dict[str, Path], work: Path) -> None:  # noqa: F811
    import llama_cpp  # noqa: F401
    for kind, src in tiny_models.items():
        gg = convert(src, work / f"{kind}-rt-f32.gguf")
        report = V.verify_models(read_model(src), read_model(gg), logits=True, runtime="llama.cpp")
        lg = report.logits
        assert lg is not None and lg["runtime_a"] == "numpy" and lg["runtime_b"] == "llama.cpp"
        assert lg["rel_max_diff"] < 1e-3 and lg["top1_agreement"] == 1.0


@pytest.mark.parametrize("flags", [("--dtype", "f16"), ("--quant", "q8_0")], ids=["f16", "q8_0"])
def test_convert_verify_passes(tiny_models: dict[str, Path], work: Path, flags: tuple[str, str],  # noqa: F811
                               capsys: pytest.CaptureFixture[str]) -> None:
    src = tiny_models["llama"]
    for out in (work / f"cv-{flags[1]}.gguf", f"{work / ('cv-' + flags[1] + '-hf')}/"):
        if flags[0] == "--quant" and not str(out).endswith(".gguf"):
            continue
        capsys.readouterr()
        assert run(src, out, "--verify", *flags) == 0
        err = capsys.readouterr().err
        assert "verify: OK" in err and "within bounds" in err


def test_convert_verify_fails_clearly_with_a_wrong_bound(tiny_models: dict[str, Path], work: Path,  # noqa: F811
                                                         capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    from lmconv.bounds import Bound
    from lmconv.registry import get_registry

    q8 = get_registry().quantizers["q8_0"]  # the bound is the quantiser's own: give it a wrong one
    wrong = Bound("quant:q8_0", blocks=((32, q8.bound.blocks[0][1] / 4),))
    monkeypatch.setitem(get_registry().quantizers, "q8_0", replace(q8, bound=wrong))
    out = work / "wrong-bound.gguf"
    capsys.readouterr()
    assert run(tiny_models["llama"], out, "--verify", "--quant", "q8_0", "--quiet") == 6
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith(f"lmconv: error: {out}: verification failed") and "exceeds its quant:q8_0 bound" in err
    assert "problems: tensor '" in err and "(the file was kept)" in err
    assert out.exists()


@pytest.mark.parametrize("via,flags", [("gguf", ()), ("pytorch", ()), ("gguf", ("--quant", "q8_0"))], ids=["gguf", "pytorch", "gguf-q8_0"])
def test_roundtrip(tiny_models: dict[str, Path], via: str, flags: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    capsys.readouterr()
    assert run("roundtrip", tiny_models["gpt2"], "--via", via, "--json", *flags) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"]
    validate(doc["intermediate"])
    validate(doc["final"])
    statuses = {t["status"] for t in doc["final"]["tensors"]}
    assert statuses == ({"exact"} if not flags else {"exact", "within"})


def test_policy_and_steps() -> None:
    assert V.parse_steps("q8_0") == ("quant:q8_0",)
    assert V.parse_steps("f16+Q4_K") == ("cast:f16", "quant:q4_K")
    assert V.parse_steps("lossless") == () and V.parse_steps("auto") is None
    from lmconv.errors import UsageError

    with pytest.raises(UsageError):
        V.parse_steps("q9_9")
    from lmconv import dtypes as dt

    assert V.represents(dt.F32, dt.get("bf16")) and V.represents(dt.F32, dt.F16)
    assert not V.represents(dt.F16, dt.get("bf16")) and not V.represents(dt.get("bf16"), dt.F16)


def test_nan_and_inf_must_sit_in_the_same_places() -> None:
    from lmconv.ir import Model, tensor_from_array

    x = np.array([[1.0, np.nan, np.inf, -np.inf]], dtype=np.float32)
    a, b, c = Model(), Model(), Model()
    a.add(tensor_from_array("w", x))
    b.add(tensor_from_array("w", x.copy()))
    y = x.copy()
    y[0, 0] = np.nan
    c.add(tensor_from_array("w", y))
    assert V.verify_models(a, b).ok
    report = V.verify_models(a, c)
    assert not report.ok and report.tensors[0].status == "nonfinite" and report.tensors[0].worst_index == [0, 0]
    validate(json.loads(report.to_json()))


def test_policy_option(tiny_models: dict[str, Path], work: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    src = tiny_models["llama"]
    gg = convert(src, work / "llama-q8_0.gguf", "--quant", "q8_0")
    _fails(capsys, src, gg, "lossless", "tensor '", args=("--policy", "lossless"))
    assert run("verify", src, gg, "--quiet", "--policy", "q4_0") == 0  # a looser claim holds too


def test_tokenizer_json_fallback_without_bridge(tiny_models: dict[str, Path], work: Path,  # noqa: F811
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    src = tiny_models["gpt2"]
    bad = copy_model(src, work / "tokenizer-nobridge")
    tj = json.loads((bad / "tokenizer.json").read_text(encoding="utf-8"))
    tj["model"]["merges"] = tj["model"]["merges"][:-1]
    (bad / "tokenizer.json").write_text(json.dumps(tj), encoding="utf-8")
    from lmconv.registry import get_registry

    monkeypatch.setattr(get_registry(), "tokenizer_bridge", None)
    report = V.verify_models(read_model(src), read_model(bad))
    assert report.tokenizer.compared == "tokenizer.json" and not report.ok
    assert report.tokenizer.differences[0]["field"] == "merges"
