"""``--imatrix``: importance matrices read and applied as llama-quantize applies them.

* the reader: llama-imatrix's GGUF and legacy .dat files of the same run agree; hostile files end
  in one line naming the file;
* the weighted legacy and K-quant kernels are byte-identical to ``ggml_quantize_chunk(…, imatrix)``;
* whole files: ``lmconv SRC DST --quant P --imatrix F`` equals ``llama-quantize --imatrix F SRC DST P``
  tensor by tensor (and in the ``quantize.imatrix.*`` keys) for every i-quant preset and q4_k_m, on a
  tiny llama and a tiny 8-expert Mixtral (whose expert tensors take one row of weights per expert);
* lmconv refuses a preset without an importance matrix exactly when llama-quantize does;
* llama.cpp runs every i-quant file, and verification reports each tensor against its bound.

llama-quantize and llama-imatrix are built from llama-cpp-python's sdist (tests/llamacpp_tools.py);
their outputs are cached by input content, so only a first run pays llama-quantize's table builds.
"""

from __future__ import annotations

import ctypes
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lmconv.cli import main
from lmconv.plugins.quantizers import kquants as kq
from lmconv.plugins.quantizers import legacy
from lmconv.plugins.quantizers.imatrix import load_imatrix

from tests.families.support import ROOT, build, llamacpp_logits
from tests.llamacpp_tools import OUTPUTS, cached_run, run_tool
from tests.test_kquants import _ggml_base, adversarial_blocks

LLAMA = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "max_position_embeddings": 1024, "rms_norm_eps": 1e-5, "initializer_range": 0.1}
MOE = {**LLAMA, "intermediate_size": 256, "num_local_experts": 8, "num_experts_per_tok": 2}
TEXT = ROOT / "fixtures" / "texts" / "multilingual.txt"
IQ_PRESETS = ["iq4_nl", "iq4_xs", "iq3_m", "iq3_s", "iq3_xs", "iq3_xxs", "iq2_m", "iq2_s", "iq2_xs", "iq2_xxs",
              "iq1_m", "iq1_s"]


# --------------------------------------------------------------------------- models and matrices


def _f32_gguf(folder: Path, out: Path) -> Path:
    assert main([str(folder), str(out), "--quiet"]) == 0
    return out


def _imatrix(gguf: Path, fmt: str) -> Path:
    """llama-imatrix on the fixture text (cached, at a stable path: llama-quantize records it)."""
    out = OUTPUTS / f"imatrix-{zlib.crc32(gguf.read_bytes()):08x}.{fmt}"
    if not out.is_file():
        tmp = out.with_name(out.name + ".new")
        assert cached_run("llama-imatrix", [gguf, TEXT], ["-m", gguf, "-f", TEXT, "-o", "{out}", "-c", "128", "-t", "2",
                                                          "--no-ppl", "--output-format", fmt], tmp) == 0
        tmp.rename(out)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    d = tmp_path_factory.mktemp("imatrix")
    out = {}
    for key, cfg, model_type in (("llama", LLAMA, "llama"), ("moe", MOE, "mixtral")):
        hf = build(model_type, config=cfg, name=f"{key}-h256-imatrix")
        gguf = _f32_gguf(hf, d / f"{key}-f32.gguf")
        out[key] = {"hf": hf, "gguf": gguf, "gguf_im": _imatrix(gguf, "gguf"), "dat_im": _imatrix(gguf, "dat")}
    return out


@pytest.fixture(scope="module")
def ours_with_imatrix(models: dict[str, dict[str, Path]], tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """``get(model, preset)``: lmconv's GGUF of the model's f32 GGUF with its matrix (made once)."""
    d = tmp_path_factory.mktemp("ours")
    made: dict[tuple[str, str], Path] = {}

    def get(model: str, preset: str) -> Path:
        if (model, preset) not in made:
            out = d / f"{model}-{preset}.gguf"
            assert ours(models[model]["gguf"], out, preset, "--imatrix", models[model]["gguf_im"]) == 0
            made[model, preset] = out
        return made[model, preset]

    return get


def tensors(path: Path) -> dict[str, tuple[str, bytes]]:
    return {t.name: (t.tensor_type.name, bytes(t.data)) for t in GGUFReader(path).tensors}


def imatrix_keys(path: Path) -> dict[str, object]:
    r = GGUFReader(path)
    return {k: (f.types[0].name, f.contents()) for k, f in r.fields.items() if k.startswith("quantize.imatrix.")}


def llama_quantize(src: Path, dst: Path, preset: str, *args: object) -> int:
    """llama-quantize ARGS SRC DST PRESET 2 (cached; an imatrix among ARGS is a file at a stable path)."""
    inputs = [src] + [Path(a) for a in args if isinstance(a, Path)]
    return cached_run("llama-quantize", inputs, [*[str(a) for a in args], src, "{out}", preset.upper(), "2"], dst)


def ours(src: Path, dst: Path, preset: str, *args: object) -> int:
    return main([str(src), str(dst), "--quant", preset, *map(str, args), "--quiet", "--force"])


def assert_same_file(a: Path, b: Path) -> None:
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys()
    types = {n: (ta[n][0], tb[n][0]) for n in tb if ta[n][0] != tb[n][0]}
    assert not types, f"types differ (ours, llama.cpp): {types}"
    differ = [n for n in tb if ta[n][1] != tb[n][1]]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


# --------------------------------------------------------------------------- reading


def test_gguf_and_legacy_files_of_one_run_agree(models: dict[str, dict[str, Path]]) -> None:
    for m in models.values():
        g, d = load_imatrix(m["gguf_im"]), load_imatrix(m["dat_im"])
        assert not g.legacy and d.legacy
        assert g.entries.keys() == d.entries.keys() and len(g) >= 14
        for name in g.entries:
            np.testing.assert_allclose(g.entries[name], d.entries[name], rtol=1e-5)
        # the text's path as llama-imatrix was given it (cached runs keep the path of the clone that made them)
        assert g.datasets == d.datasets and [Path(p).name for p in g.datasets] == [TEXT.name]
        assert g.chunk_count == d.chunk_count > 0
    moe = load_imatrix(models["moe"]["gguf_im"])
    assert moe.weights_for("blk.0.ffn_down_exps.weight", (8, 256, 256)).shape == (8, 256)
    assert moe.weights_for("blk.0.attn_q.weight", (256, 256)).shape == (1, 256)
    assert moe.weights_for("output.weight", (512, 256)) is None  # llama-imatrix leaves the output out


def _gguf_imatrix(path: Path, entries: dict[str, tuple[np.ndarray, np.ndarray]], meta: bool = True) -> Path:
    w = GGUFWriter(str(path), arch="imatrix")
    if meta:
        w.add_array("imatrix.datasets", ["text.txt"])
        w.add_uint32("imatrix.chunk_count", 3)
        w.add_uint32("imatrix.chunk_size", 512)
    for name, (sums, counts) in entries.items():
        w.add_tensor(f"{name}.in_sum2", sums.astype(np.float32))
        if counts is not None:
            w.add_tensor(f"{name}.counts", counts.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _dat(path: Path, entries: dict[str, tuple[int, np.ndarray]], trailer: tuple[int, str] | None = (7, "d.txt")) -> Path:
    out = struct.pack("<i", len(entries))
    for name, (ncall, values) in entries.items():
        b = name.encode()
        out += struct.pack("<i", len(b)) + b + struct.pack("<ii", ncall, values.size) + values.astype("<f4").tobytes()
    if trailer:
        out += struct.pack("<i", trailer[0]) + struct.pack("<i", len(trailer[1])) + trailer[1].encode()
    path.write_bytes(out)
    return path


def test_normalisation_as_llama_quantize(tmp_path: Path) -> None:
    """GGUF: sums / count per expert row, 1 for a row that saw nothing; .dat: values / ncall."""
    sums = np.arange(1, 9, dtype=np.float32).reshape(2, 4) * 3
    g = load_imatrix(_gguf_imatrix(tmp_path / "a.gguf", {"x.weight": (sums, np.array([[3.0], [0.0]]))}))
    np.testing.assert_array_equal(g.entries["x.weight"], np.r_[sums[0] / 3, np.ones(4)].astype(np.float32))
    assert g.metadata() == {"quantize.imatrix.file": str(tmp_path / "a.gguf"), "quantize.imatrix.dataset": "text.txt",
                            "quantize.imatrix.entries_count": 1, "quantize.imatrix.chunks_count": 3}
    d = load_imatrix(_dat(tmp_path / "b.dat", {"y.weight": (4, np.array([4.0, 8.0], np.float32)),
                                                "z.weight": (0, np.array([5.0], np.float32))}))
    np.testing.assert_array_equal(d.entries["y.weight"], [1.0, 2.0])
    np.testing.assert_array_equal(d.entries["z.weight"], [5.0])
    assert d.chunk_count == 7 and d.datasets == ["d.txt"]
    assert load_imatrix(_dat(tmp_path / "c.dat", {"y.weight": (1, np.ones(2, np.float32))}, None)).metadata() == {
        "quantize.imatrix.file": str(tmp_path / "c.dat"), "quantize.imatrix.entries_count": 1}


def _hostile(tmp: Path) -> dict[str, Path]:
    good = _dat(tmp / "good.dat", {"blk.0.attn_q.weight": (1, np.ones(256, np.float32))})
    cases = {
        "empty": b"",
        "no entries": struct.pack("<i", 0),
        "cut in a name": good.read_bytes()[:10],
        "cut in the values": good.read_bytes()[:40],
        "negative name length": struct.pack("<ii", 1, -5),
        "huge value count": struct.pack("<i", 1) + struct.pack("<i", 1) + b"x" + struct.pack("<ii", 1, 2**30),
    }
    out = {k: tmp / f"{i}.dat" for i, k in enumerate(cases)}
    for k, v in cases.items():
        out[k].write_bytes(v)
    out["gguf without metadata"] = _gguf_imatrix(tmp / "nometa.gguf", {"a.weight": (np.ones((1, 4)), np.ones((1, 1)))},
                                                 meta=False)
    out["sums without counts"] = _gguf_imatrix(tmp / "nocounts.gguf", {"a.weight": (np.ones((1, 4)), None)})
    out["non-finite"] = _dat(tmp / "nan.dat", {"blk.0.attn_q.weight": (1, np.full(256, np.nan, np.float32))})
    out["not gguf"] = tmp / "garbage.gguf"
    out["not gguf"].write_bytes(b"GGUF" + b"\xff" * 40)
    return out


def test_hostile_imatrix_files_end_in_one_line(models: dict[str, dict[str, Path]], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    src = models["llama"]["gguf"]
    for what, bad in _hostile(tmp_path).items():
        dst = tmp_path / "out.gguf"
        code = main([str(src), str(dst), "--quant", "q4_k_m", "--imatrix", str(bad)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 3, (what, code, err)
        assert len(err) == 1 and str(bad) in err[0] and "Traceback" not in err[0], (what, err)
        assert not dst.exists()


def test_an_imatrix_of_another_model_is_refused(models: dict[str, dict[str, Path]], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A size mismatch: llama-quantize stops (except for the token embedding), so does lmconv (exit 2)."""
    src = models["llama"]["gguf"]
    bad = _dat(tmp_path / "small.dat", {"blk.0.attn_q.weight": (1, np.ones(128, np.float32))})
    assert main([str(src), str(tmp_path / "o.gguf"), "--quant", "q4_k_m", "--imatrix", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "blk.0.attn_q.weight" in err[0] and "128" in err[0]
    assert run_tool("llama-quantize", "--imatrix", bad, src, tmp_path / "t.gguf", "Q4_K_M", check=False).returncode != 0
    emb = _dat(tmp_path / "emb.dat", {"token_embd.weight": (1, np.ones(7, np.float32))})
    assert ours(src, tmp_path / "o.gguf", "q4_k_m", "--imatrix", emb) == 0  # ignored for the embedding, as there


# --------------------------------------------------------------------------- kernels against ggml


def c_quantize(lib: ctypes.CDLL, name: str, x: np.ndarray, imatrix: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, x.shape[-1])
    qtype = int(GGMLQuantizationType[name.upper()])
    out = np.zeros((x.shape[0], lib.ggml_row_size(qtype, x.shape[1])), np.uint8)
    w = np.ascontiguousarray(imatrix, dtype=np.float32)
    assert lib.ggml_quantize_chunk(qtype, x.ctypes.data, out.ctypes.data, 0, x.shape[0], x.shape[1], w.ctypes.data) == out.nbytes
    return out


WEIGHTED = ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K"]


def weighted(name: str, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    from lmconv.registry import get_registry

    return get_registry().quantizer(name).quantize(x, imatrix=w)


def _weights(kind: str, rng: np.random.Generator, n: int) -> np.ndarray:
    if kind == "lognormal":
        return np.exp(rng.standard_normal(n) * 1.5).astype(np.float32)
    if kind == "zeros":
        w = np.exp(rng.standard_normal(n)).astype(np.float32)
        w[rng.random(n) < 0.4] = 0
        return w
    if kind == "allzero":
        return np.zeros(n, np.float32)
    w = np.zeros(n, np.float32)  # sparse
    w[rng.integers(0, n, n // 16)] = 1
    return w


@pytest.mark.parametrize("name", WEIGHTED)
@pytest.mark.parametrize("kind", ["normal", "heavy", "scaled"])
def test_weighted_kernels_are_byte_exact(name: str, kind: str) -> None:
    lib = _ggml_base()
    rng = np.random.default_rng(zlib.crc32(f"{name}-{kind}".encode()))
    shape = (8, 1024)
    if kind == "normal":
        x = rng.standard_normal(shape).astype(np.float32)
    elif kind == "heavy":
        x = (rng.standard_t(2, shape) * 0.02).astype(np.float32)
    else:
        x = (rng.standard_normal(shape) * 10.0 ** rng.integers(-30, 31, (shape[0], 1))).astype(np.float32)
    for wk in ("lognormal", "zeros", "allzero", "sparse"):
        w = _weights(wk, rng, shape[1])
        ours_ = weighted(name, x, w)
        assert np.array_equal(ours_.reshape(c_quantize(lib, name, x, w).shape), c_quantize(lib, name, x, w)), (name, kind, wk)


@pytest.mark.parametrize("name", WEIGHTED)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(x=adversarial_blocks(), seed=st.integers(0, 2**32 - 1), wk=st.sampled_from(["lognormal", "zeros", "allzero", "sparse"]))
def test_weighted_kernels_on_adversarial_blocks(name: str, x: np.ndarray, seed: int, wk: str) -> None:
    """The K-quant tests' hostile super-blocks, as one row, with weights. Values whose squares could
    overflow float32 (and NaN/Inf) become 0: with them σ² is infinite and ggml's weighted searches end
    in NaN scales whose sign depends on its compiler's operand order (llama-quantize then rejects the
    tensor: ggml_validate_row_data), so there are no bytes worth matching."""
    row = np.where(np.isfinite(x) & (np.abs(x) < 1e17), x, np.float32(0)).reshape(1, -1).astype(np.float32)
    w = _weights(wk, np.random.default_rng(seed), row.shape[1])
    ref = c_quantize(_ggml_base(), name, row, w)
    assert np.array_equal(weighted(name, row, w).reshape(ref.shape), ref)


def test_weighted_chunks_are_invisible(monkeypatch: pytest.MonkeyPatch) -> None:
    lib = _ggml_base()
    monkeypatch.setattr(kq, "CHUNK_BLOCKS", 3)
    monkeypatch.setattr(legacy, "ROWS_PER_CHUNK_ELEMENTS", 700)
    monkeypatch.setenv("LMCONV_QUANT_PROCESSES", "0")  # the patched chunk sizes live in this process only
    rng = np.random.default_rng(9)
    x = rng.standard_normal((7, 768)).astype(np.float32)
    w = _weights("lognormal", rng, 768)
    for name in ("q4_0", "q5_1", "q3_K", "q5_K"):
        assert np.array_equal(weighted(name, x, w).reshape(7, -1), c_quantize(lib, name, x, w)), name


# --------------------------------------------------------------------------- whole files against llama-quantize


@pytest.mark.parametrize("preset", IQ_PRESETS + ["q4_k_m"])
@pytest.mark.parametrize("model", ["llama", "moe"])
def test_whole_files_equal_llama_quantize(models: dict[str, dict[str, Path]], ours_with_imatrix, tmp_path: Path,  # type: ignore[no-untyped-def]
                                          model: str, preset: str) -> None:
    m = models[model]
    a, b = ours_with_imatrix(model, preset), tmp_path / "theirs.gguf"
    assert llama_quantize(m["gguf"], b, preset, "--imatrix", m["gguf_im"]) == 0
    assert_same_file(a, b)
    assert imatrix_keys(a) == imatrix_keys(b) and len(imatrix_keys(b)) == 4


@pytest.mark.parametrize(("model", "preset"), [("moe", "q4_k_m"), ("moe", "iq2_xs"), ("llama", "q4_0"),
                                               ("llama", "q2_k_s"), ("llama", "q5_0")])
def test_legacy_dat_matrices_and_other_presets(models: dict[str, dict[str, Path]], tmp_path: Path, model: str,
                                               preset: str) -> None:
    m = models[model]
    a, b = tmp_path / "ours.gguf", tmp_path / "theirs.gguf"
    assert ours(m["gguf"], a, preset, "--imatrix", m["dat_im"]) == 0
    assert llama_quantize(m["gguf"], b, preset, "--imatrix", m["dat_im"]) == 0
    assert_same_file(a, b)
    assert imatrix_keys(a) == imatrix_keys(b)


def test_tensor_type_overrides_take_the_new_types(models: dict[str, dict[str, Path]], tmp_path: Path) -> None:
    m = models["llama"]
    over = ["--tensor-type", "attn_v=iq4_nl", "--tensor-type", "ffn_down=iq3_s", "--tensor-type", "attn_q=iq2_xxs"]
    a, b = tmp_path / "ours.gguf", tmp_path / "theirs.gguf"
    assert ours(m["gguf"], a, "q4_k_m", "--imatrix", m["gguf_im"], *over) == 0
    assert llama_quantize(m["gguf"], b, "q4_k_m", *over, "--imatrix", m["gguf_im"]) == 0
    assert_same_file(a, b)
    assert {t[0] for n, t in tensors(a).items() if "attn_q" in n} == {"IQ2_XXS"}


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("preset", IQ_PRESETS + ["q2_k_s", "q2_k", "q4_k_m"])
def test_refuses_exactly_where_llama_quantize_does(models: dict[str, dict[str, Path]], tmp_path: Path, preset: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Without an importance matrix: the same presets fail (one line, exit 2, nothing written), and
    those that run give llama-quantize's bytes."""
    src = models["llama"]["gguf"]
    a, b = tmp_path / "ours.gguf", tmp_path / "theirs.gguf"
    theirs_ok = llama_quantize(src, b, preset) == 0
    code = ours(src, a, preset)
    err = capsys.readouterr().err.strip().splitlines()
    if theirs_ok:
        assert code == 0, err
        assert_same_file(a, b)
    else:
        assert code == 2 and len(err) == 1 and "--imatrix" in err[0], err
        assert not a.exists()
    assert theirs_ok == (preset in ("iq4_nl", "iq4_xs", "iq3_m", "iq3_s", "q2_k", "q4_k_m"))


@pytest.mark.parametrize(("preset", "flags", "seventh"), [("q4_1", ("--pure",), False), ("q5_1", ("--pure",), False),
                                                      ("q4_k_m", (), True), ("q5_k_m", (), True)])
def test_verify_requantizes_where_no_bound_holds(models: dict[str, dict[str, Path]], tmp_path: Path, preset: str,
                                                 flags: tuple[str, ...], seventh: bool,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """With a matrix, ggml's asymmetric types (q4_1, q5_1, q2_K, q4_K, q5_K) have no error bound
    (docs/verification.md): llama-imatrix's own matrix takes q4_1/q5_1 past their plain bounds, one
    with 10⁴ on every 7th column and 10⁻⁴ elsewhere takes q4_K/q5_K past theirs. ``--verify`` then
    re-quantises the source with the recorded weights and passes a tensor whose blocks are exactly
    that ("requantized"); without that check the same files fail."""
    from lmconv.pipeline import convert
    from lmconv.verify import compare, verify_conversion

    m = models["llama"]
    im = m["gguf_im"]
    if seventh:
        entries = {t.name: (1, np.where(np.arange(int(t.shape[0])) % 7 == 0, 1e4, 1e-4).astype(np.float32))
                   for t in GGUFReader(m["gguf"]).tensors if len(t.shape) == 2 and t.name != "token_embd.weight"}
        im = _dat(tmp_path / "seventh.dat", entries)
    extra = {"imatrix": load_imatrix(im), **{f.lstrip("-"): True for f in flags}}
    result = convert(str(m["hf"]), str(tmp_path / f"{preset}.gguf"), quant=preset, extra=extra)
    report = verify_conversion(result, quiet=True)
    requantized = [t for t in report.tensors if t.status == "requantized"]
    assert report.ok and requantized, report.summary()
    assert all(t.max_ratio is not None and t.max_ratio > 1 and "exactly the source quantised" in (t.detail or "")
               for t in requantized)
    monkeypatch.setattr(compare, "_requantizes", lambda *a: False)
    assert not verify_conversion(result, quiet=True).ok


@pytest.mark.parametrize("preset", ["iq2_xxs", "iq1_s"])
def test_pure_on_the_embedding_and_output_head(models: dict[str, dict[str, Path]], tmp_path: Path, preset: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """``--pure`` gives the embedding and output head a type ggml cannot quantise without weights,
    and llama-imatrix never collects those two: llama-quantize lets them through and then aborts in
    ggml; lmconv refuses in one line (exit 2, nothing written) and names the way out, which works."""
    m = models["llama"]
    a, b = tmp_path / "ours.gguf", tmp_path / "theirs.gguf"
    assert llama_quantize(m["gguf"], b, preset, "--pure", "--imatrix", m["gguf_im"]) != 0
    code = ours(m["gguf"], a, preset, "--pure", "--imatrix", m["gguf_im"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "output.weight" in err[0] and "--output-tensor-type" in err[0], err
    assert not a.exists()
    flags = ("--pure", "--imatrix", m["gguf_im"], "--output-tensor-type", "q4_k", "--token-embedding-type", "q4_k")
    assert llama_quantize(m["gguf"], b, preset, *flags) == 0
    assert ours(m["gguf"], a, preset, *flags) == 0
    assert_same_file(a, b)


def test_a_tensor_the_matrix_lacks(models: dict[str, dict[str, Path]], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Quantised without weights where allowed (q4_k_m), refused where the type needs them (iq2_xxs)."""
    m = models["llama"]
    full = load_imatrix(m["dat_im"])
    part = _dat(OUTPUTS / f"partial-{zlib.crc32(m['dat_im'].read_bytes()):08x}.dat",
                {k: (1, v) for k, v in full.entries.items() if k != "blk.1.attn_q.weight"})
    for preset in ("q4_k_m", "iq2_xxs"):
        a, b = tmp_path / f"o-{preset}.gguf", tmp_path / f"t-{preset}.gguf"
        theirs = llama_quantize(m["gguf"], b, preset, "--imatrix", part)
        code = ours(m["gguf"], a, preset, "--imatrix", part)
        if preset == "q4_k_m":
            assert theirs == 0 and code == 0
            assert_same_file(a, b)
        else:
            err = capsys.readouterr().err.strip().splitlines()
            assert theirs != 0 and code == 2 and len(err) == 1 and "blk.1.attn_q.weight" in err[0], err


# --------------------------------------------------------------------------- llama.cpp runs them


def test_llamacpp_runs_every_iquant_file_and_verify_reports_bounds(models: dict[str, dict[str, Path]],
                                                                    ours_with_imatrix) -> None:  # type: ignore[no-untyped-def]
    """Every i-quant preset's file (lmconv's, with the matrix) runs in llama.cpp (f32 KV
    cache) and reads as lmconv wrote it: its logits are within 10 % of lmconv's numpy forward pass on
    the file's own dequantised weights (llama.cpp also rounds the activations it multiplies these
    types with), and still correlate with the f32 model's, less as the bits go down. Verification
    checks every tensor against its type's documented bound (with the ``imatrix:TYPE`` allowance of the
    types that have one), the lattice types' loose bounds included, and every file passes."""
    from lmconv import read_model
    from lmconv.verify import verify_models
    from lmconv.verify.logits import forward

    from tests.families.support import rel

    m = models["llama"]
    ids = [3, 17, 42, 99, 120, 7, 250, 11, 33, 2, 77, 150]
    ref = llamacpp_logits(m["gguf"], ids)
    src = read_model(m["hf"])
    lattice = ("iq3_s", "iq3_xxs", "iq2_s", "iq2_xs", "iq2_xxs", "iq1_s", "iq1_m")
    for preset in IQ_PRESETS:
        out = ours_with_imatrix("llama", preset)
        got = llamacpp_logits(out, ids)
        model = read_model(out)
        same = forward(model, ids, dtype=np.float64)
        assert rel(got, same) < 0.1, (preset, rel(got, same))
        assert float(np.mean(got.argmax(-1) == same.argmax(-1))) >= 0.75, preset
        corr = float(np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(got, ref)]))
        assert corr > {"4": 0.85, "3": 0.55, "2": 0.3, "1": 0.1}[preset[2]], (preset, corr)
        assume = {t.name: [f"imatrix:{t.dtype.name}"] for t in model
                  if t.dtype.name in ("q4_0", "q5_0", "q3_K", "q6_K")}
        report = verify_models(src, model, assume=assume)
        for t in report.tensors:
            assert t.status in ("exact", "within"), (preset, t.name, t.status, t.steps, t.max_ratio)
            if any(s.split(":")[1] in lattice for s in t.steps):
                assert t.rel_err is not None and 0 < t.rel_err < 0.8, (preset, t.name, t.rel_err)
                assert t.max_ratio is not None and t.max_ratio <= 1.0, (preset, t.name, t.max_ratio)
        assert report.ok, (preset, report.summary())


@pytest.mark.parametrize("preset", ["iq2_xs", "iq1_m", "q3_k_m", "q4_k_m"])
def test_verify_flag_applies_the_imatrix_allowances(models: dict[str, dict[str, Path]], tmp_path: Path,
                                                    preset: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``--imatrix … --verify`` from the HF folder passes, and judges each tensor quantised with
    weights to q4_0/q5_0/q3_K/q6_K by its type's bound plus the ``imatrix:TYPE`` allowance recorded
    in its history (the verification once dropped those steps, and the fallbacks of the i-quant
    presets then failed their plain bounds), the lattice types by their own bounds."""
    from lmconv.pipeline import convert
    from lmconv.verify import verify_conversion

    m = models["llama"]
    code = main([str(m["hf"]), str(tmp_path / f"{preset}.gguf"), "--quant", preset, "--imatrix", str(m["gguf_im"]),
                 "--verify"])
    out = capsys.readouterr()
    assert code == 0, out.err + out.out[-3000:]
    assert "of its bound" in out.err and "config equal" in out.err, out.err[-3000:]

    result = convert(str(m["hf"]), str(tmp_path / "again.gguf"), quant=preset, extra={"imatrix": load_imatrix(m["gguf_im"])})
    report = verify_conversion(result, quiet=True)
    assert report.ok
    seen = set()
    for t in report.tensors:  # llama-imatrix saw every layer weight, not the embedding and output head
        if t.dtype_b in ("q4_0", "q5_0", "q3_K", "q6_K") and ".layers." in t.name:
            assert f"imatrix:{t.dtype_b}" in t.steps, (t.name, t.steps)
            seen.add(t.dtype_b)
        elif t.name in ("lm_head.weight", "model.embed_tokens.weight"):
            assert not any(s.startswith("imatrix:") for s in t.steps), (t.name, t.steps)
    assert seen or preset.startswith("iq"), "no tensor of a type with an imatrix allowance"
