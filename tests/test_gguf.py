"""GGUF against the real tools: llama.cpp runs what we write, transformers loads what we write back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from lmconv.cli import main
from tests.llamacpp_support import (
    llamacpp_logits,
    llamacpp_quantize,
    relative_max_diff,
    top1_agreement,
    transformers_logits,
)

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
TEST_TEXT = (FIXTURES / "texts" / "test.txt").read_text(encoding="utf-8")
MODELS = {"llama": FIXTURES / "tiny-llama", "gpt2": FIXTURES / "tiny-gpt2"}
# f32 against the original model; f16/q8_0 against transformers on the GGUF's own dequantised weights.
BOUNDS = {("llama", "f32"): 1e-4, ("gpt2", "f32"): 5e-4, ("llama", "f16"): 1e-2, ("gpt2", "f16"): 1e-2,
          ("llama", "q8_0"): 6e-2, ("gpt2", "q8_0"): 6e-2}


def run(*args: object) -> None:
    assert main([str(a) for a in args] + ["--quiet"]) == 0


def token_ids(model_dir: Path, n: int = 32) -> list[int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    return tok(TEST_TEXT)["input_ids"][:n]


@pytest.fixture(scope="module")
def outdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gguf")


def write_gguf(outdir: Path, name: str, kind: str, *extra: str) -> Path:
    out = outdir / f"{name}-{kind}.gguf"
    if not out.exists():
        flag = ["--quant", kind] if kind.startswith("q") else ["--dtype", kind]
        run(MODELS[name], out, *flag, *extra)
    return out


@pytest.mark.parametrize("name", ["llama", "gpt2"])
@pytest.mark.parametrize("kind", ["f32", "f16", "q8_0"])
def test_llamacpp_runs_our_gguf_with_transformers_logits(outdir: Path, name: str, kind: str) -> None:
    gguf_path = write_gguf(outdir, name, kind)
    GGUFReader(gguf_path)  # gguf-py's own reader accepts it
    ids = token_ids(MODELS[name])
    got = llamacpp_logits(gguf_path, ids)
    if kind == "f32":
        ref_dir = MODELS[name]
    else:
        ref_dir = outdir / f"{name}-{kind}-dequant"
        if not ref_dir.exists():
            run(gguf_path, f"{ref_dir}/")
    want = transformers_logits(ref_dir, ids)
    assert relative_max_diff(got, want) <= BOUNDS[(name, kind)]
    assert top1_agreement(got, want) >= 0.9


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_llamacpp_tokenizer_matches_hf(outdir: Path, name: str) -> None:
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    gguf_path = write_gguf(outdir, name, "f32")
    hf = AutoTokenizer.from_pretrained(str(MODELS[name]))
    want = hf(TEST_TEXT, add_special_tokens=False)["input_ids"]
    llm = Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    try:
        got = llm.tokenize(TEST_TEXT.encode("utf-8"), add_bos=False, special=False)
        assert got == want
        assert llm.detokenize(got).decode("utf-8") == TEST_TEXT
    finally:
        llm.close()


def test_tied_embeddings_write_no_output_tensor(outdir: Path) -> None:
    names = {t.name for t in GGUFReader(write_gguf(outdir, "gpt2", "f32")).tensors}
    assert "token_embd.weight" in names and "output.weight" not in names
    names = {t.name for t in GGUFReader(write_gguf(outdir, "llama", "f32")).tensors}
    assert "output.weight" in names  # the llama fixture is untied


def test_metadata_keys(outdir: Path) -> None:
    r = GGUFReader(write_gguf(outdir, "llama", "q8_0"))
    kv = {k: f.contents() for k, f in r.fields.items()}
    cfg = json.loads((MODELS["llama"] / "config.json").read_text())
    assert kv["general.architecture"] == "llama"
    assert kv["llama.block_count"] == cfg["num_hidden_layers"]
    assert kv["llama.attention.head_count_kv"] == cfg["num_key_value_heads"]
    assert kv["llama.embedding_length"] == cfg["hidden_size"]
    assert kv["general.file_type"] == 7  # MOSTLY_Q8_0
    assert kv["tokenizer.ggml.model"] == "gpt2"
    assert kv["tokenizer.ggml.pre"] == "llama-bpe"
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["blk.0.attn_norm.weight"] == "F32" and types["blk.0.attn_q.weight"] == "Q8_0"


def test_gguf_hf_gguf_hf_is_bit_exact_in_f32(outdir: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    for name in ("llama", "gpt2"):
        g1 = write_gguf(outdir, name, "f32")
        run(g1, f"{tmp_path}/{name}-hf1/")
        run(tmp_path / f"{name}-hf1", tmp_path / f"{name}-2.gguf")
        run(tmp_path / f"{name}-2.gguf", f"{tmp_path}/{name}-hf2/")
        a = load_file(str(tmp_path / f"{name}-hf1" / "model.safetensors"))
        b = load_file(str(tmp_path / f"{name}-hf2" / "model.safetensors"))
        orig = load_file(str(MODELS[name] / "model.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].tobytes() == b[k].tobytes(), k
            assert a[k].tobytes() == orig[k].tobytes(), k  # and equal to the fixture itself
        t1 = {t.name: bytes(t.data) for t in GGUFReader(g1).tensors}
        t2 = {t.name: bytes(t.data) for t in GGUFReader(tmp_path / f"{name}-2.gguf").tensors}
        assert t1 == t2


def test_gguf_to_hf_loads_in_transformers_with_tokenizer(outdir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    for name in ("llama", "gpt2"):
        run(write_gguf(outdir, name, "f32"), f"{tmp_path}/{name}/")
        tok = AutoTokenizer.from_pretrained(str(tmp_path / name))
        ref = AutoTokenizer.from_pretrained(str(MODELS[name]))
        assert tok(TEST_TEXT)["input_ids"] == ref(TEST_TEXT)["input_ids"]
        ids = token_ids(MODELS[name])
        np.testing.assert_array_equal(transformers_logits(tmp_path / name, ids), transformers_logits(MODELS[name], ids))


def test_llamacpp_quantized_gguf_converts_to_hf(outdir: Path, tmp_path: Path) -> None:
    """A GGUF made by llama-quantize (Q4_K_M) → HF folder; transformers' own GGUF loader is the reference."""
    src = write_gguf(outdir, "llama", "f32")
    q = tmp_path / "q4km.gguf"
    llamacpp_quantize(src, q, "Q4_K_M")
    run(q, f"{tmp_path}/hf/")
    ids = token_ids(MODELS["llama"])
    got = transformers_logits(tmp_path / "hf", ids)
    want = transformers_logits(tmp_path, ids, gguf_file=q.name)
    assert relative_max_diff(got, want) <= 1e-4


def test_gguf_to_gguf_keeps_quantized_blocks(outdir: Path, tmp_path: Path) -> None:
    src = write_gguf(outdir, "llama", "q8_0")
    run(src, tmp_path / "copy.gguf")
    a = {t.name: (t.tensor_type, bytes(t.data)) for t in GGUFReader(src).tensors}
    b = {t.name: (t.tensor_type, bytes(t.data)) for t in GGUFReader(tmp_path / "copy.gguf").tensors}
    assert a == b


def test_split_gguf(outdir: Path, tmp_path: Path) -> None:
    run(MODELS["llama"], tmp_path / "split.gguf", "--split-max-size", "200K")
    parts = sorted(tmp_path.glob("split-*-of-*.gguf"))
    assert len(parts) >= 2 and not (tmp_path / "split.gguf").exists()
    kv = {k: f.contents() for k, f in GGUFReader(parts[0]).fields.items()}
    assert kv["split.count"] == len(parts) and kv["split.no"] == 0
    ids = token_ids(MODELS["llama"])
    whole = llamacpp_logits(write_gguf(outdir, "llama", "f32"), ids)
    np.testing.assert_allclose(llamacpp_logits(parts[0], ids), whole, rtol=0, atol=1e-5)
    run(parts[0], f"{tmp_path}/back/")
    from safetensors.numpy import load_file

    a = load_file(str(tmp_path / "back" / "model.safetensors"))
    b = load_file(str(MODELS["llama"] / "model.safetensors"))
    assert all(a[k].tobytes() == b[k].tobytes() for k in b)


def test_unknown_architecture_writes_generic_gguf(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.numpy import save_file

    save_file({"encoder.w": np.arange(64, dtype=np.float32).reshape(8, 8), "encoder.b": np.ones(8, np.float32)},
              str(tmp_path / "odd.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["OddModel"], "model_type": "odd"}))
    # without --generic lmconv stops before writing: llama.cpp would not run it (tests/test_first_command.py)
    assert main([str(tmp_path / "odd.safetensors"), str(tmp_path / "odd.gguf"), "--generic"]) == 0
    assert "llama.cpp will not run" in capsys.readouterr().err
    names = {t.name for t in GGUFReader(tmp_path / "odd.gguf").tensors}
    assert names == {"encoder.w", "encoder.b"}
    assert main([str(tmp_path / "odd.gguf"), str(tmp_path / "back.safetensors"), "--quiet"]) == 0
    from safetensors.numpy import load_file

    back = load_file(str(tmp_path / "back.safetensors"))
    assert np.array_equal(back["encoder.w"], np.arange(64, dtype=np.float32).reshape(8, 8))


def test_unknown_pre_tokenizer_names_the_way_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    model = tmp_path / "m"
    shutil.copytree(MODELS["llama"], model)
    tj = json.loads((model / "tokenizer.json").read_text())
    tj["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "[a-z]+|[0-9]{7}"}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    (model / "tokenizer.json").write_text(json.dumps(tj))
    code = main([str(model), str(tmp_path / "x.gguf")])
    err = capsys.readouterr().err
    assert code == 2 and "--pre-tokenizer" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.gguf").exists()
    assert main([str(model), str(tmp_path / "x.gguf"), "--pre-tokenizer", "llama-bpe", "--quiet"]) == 0


def test_inspect_gguf(outdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(write_gguf(outdir, "llama", "q8_0")), "--json"]) == 0
    man = json.loads(capsys.readouterr().out)
    assert man["format"] == "gguf" and man["architecture"] == "LlamaForCausalLM"
    dtypes = {t["name"]: t["dtype"] for t in man["tensors"]}
    assert dtypes["model.layers.0.self_attn.q_proj.weight"] == "q8_0"
    assert man["metadata"]["gguf"]["general.architecture"] == "llama"
