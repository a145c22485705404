"""The llama family (LlamaForCausalLM, MistralForCausalLM and MixtralForCausalLM; GGUF arch llama):
the battery, every rope scaling llama.cpp runs (linear, llama3 as ``rope_freqs``, yarn) up to long
positions, GGUFs made by llama.cpp's own converter read back into transformers, and Mixtral's
experts: stacked both ways, read from transformers 5's fused in-memory layout too, and quantised
stacks cut into experts and put back without being dequantised."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.families.support import (
    IDS,
    assert_same_layout,
    battery,
    build,
    convert,
    hf_logits,
    llamacpp_logits,
    reference_ggufs,
    rel,
)

SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "max_position_embeddings": 1024, "rms_norm_eps": 1e-5, "initializer_range": 0.1}
ROPE = {
    "linear": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64, "rope_theta": 10000.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128, "rope_theta": 10000.0},
}
LONG = [(7 + 37 * i) % 512 for i in range(512)]


def test_llama_battery(tmp_path: Path) -> None:
    battery(build("llama", config=SMALL), tmp_path)


def test_llama_tied_battery(tmp_path: Path) -> None:
    battery(build("llama", config={**SMALL, "tie_word_embeddings": True}, name="llama-tied"), tmp_path)


def test_mistral_battery(tmp_path: Path) -> None:
    battery(build("mistral", config={**SMALL, "sliding_window": 4096}), tmp_path)


@pytest.mark.parametrize("kind", sorted(ROPE))
def test_rope_scaling_matches_transformers_at_long_positions(kind: str, tmp_path: Path) -> None:
    """Positions up to 512, where a dropped or wrong scaling shows: llama.cpp and lmconv's forward
    against transformers; the GGUF back to HF gives the same logits."""
    from lmconv import read_model
    from lmconv.verify.logits import forward

    src = build("llama", config={**SMALL, "rope_parameters": ROPE[kind]}, name=f"llama-rope-{kind}")
    want = hf_logits(src, LONG)
    gguf = convert(src, tmp_path / "m.gguf")
    assert rel(llamacpp_logits(gguf, LONG), want) <= 1e-4
    assert rel(forward(read_model(src), LONG, dtype=np.float64), want) <= 1e-4
    back = convert(gguf, f"{tmp_path / 'back'}/")
    assert rel(hf_logits(back, LONG), want) <= 1e-5


def test_llama3_rope_freqs_is_written_and_folded_back(tmp_path: Path) -> None:
    from gguf import GGUFReader

    src = build("llama", config={**SMALL, "rope_parameters": ROPE["llama3"]}, name="llama-rope-llama3")
    gguf = convert(src, tmp_path / "m.gguf")
    tensors = {t.name: np.array(t.data) for t in GGUFReader(gguf).tensors}
    factors = tensors["rope_freqs.weight"]
    assert factors.shape == (8,) and factors.max() == 8.0 and factors.min() == 1.0


MIXTRAL = {**SMALL, "num_local_experts": 4, "num_experts_per_tok": 2}
REFERENCE = {"llama": {}, "llama3": {"rope_parameters": ROPE["llama3"]}}


def tiny(kind: str) -> Path:
    if kind == "mixtral":
        return build("mixtral", config=MIXTRAL)
    return build("llama", config={**SMALL, **REFERENCE[kind]}, name="llama-rope-llama3" if kind == "llama3" else None)


@pytest.fixture(scope="module")
def llama_cpp_ggufs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("llama-cpp")
    jobs = {kind: (tiny(kind), out / f"{kind}.gguf", "llama-bpe") for kind in ("llama", "llama3", "mixtral")}
    reference_ggufs(list(jobs.values()))
    return {kind: job[1] for kind, job in jobs.items()}


@pytest.mark.parametrize("kind", ["llama", "llama3", "mixtral"])
def test_gguf_from_llama_cpp_converter_reads_back_into_transformers(kind: str, llama_cpp_ggufs: dict[str, Path],
                                                                    tmp_path: Path) -> None:
    """llama.cpp's convert_hf_to_gguf.py writes no config of ours: everything (head counts, rope
    scaling from its rope_freqs tensor, the un-permuted Q/K, Mixtral from its expert keys, the experts
    unstacked) comes from its tensors and keys."""
    back = convert(llama_cpp_ggufs[kind], f"{tmp_path / 'back'}/")
    ids = LONG if kind == "llama3" else IDS
    assert rel(hf_logits(back, ids), hf_logits(tiny(kind), ids)) <= 1e-5
    if kind == "mixtral":
        import json

        assert json.loads((back / "config.json").read_text())["architectures"] == ["MixtralForCausalLM"]
    assert_same_layout(convert(tiny(kind), tmp_path / "ours.gguf"), llama_cpp_ggufs[kind])


def test_mixtral_battery(tmp_path: Path) -> None:
    battery(tiny("mixtral"), tmp_path)


def test_mixtral_fused_experts_and_stacks(tmp_path: Path) -> None:
    """transformers 5's in-memory layout (``torch.save(model.state_dict())``: experts fused in
    ``mlp.experts.gate_up_proj``/``down_proj``, the router at ``mlp.gate``) gives the very GGUF the
    saved per-expert checkpoint gives, and the stack of expert e is expert e's w1/w3/w2; lmconv's
    forward runs the fused layout; GGUF → HF writes the on-disk names from_pretrained loads."""
    import torch
    from gguf import GGUFReader
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM

    from lmconv import read_model
    from lmconv.verify.logits import forward

    src = tiny("mixtral")
    fused = tmp_path / "fused"
    fused.mkdir()
    torch.save(AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32).state_dict(), fused / "pytorch_model.bin")
    for f in src.iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            (fused / f.name).write_bytes(f.read_bytes())
    names = set(torch.load(fused / "pytorch_model.bin", weights_only=True))
    assert {"model.layers.0.mlp.experts.gate_up_proj", "model.layers.0.mlp.gate.weight"} <= names
    want = hf_logits(src)
    assert rel(forward(read_model(fused), IDS, dtype=np.float64), want) <= 1e-4

    a = {t.name: np.array(t.data) for t in GGUFReader(convert(src, tmp_path / "saved.gguf")).tensors}
    b = {t.name: np.array(t.data) for t in GGUFReader(convert(fused, tmp_path / "fused.gguf")).tensors}
    assert a.keys() == b.keys() and all(np.array_equal(a[n], b[n]) for n in a)
    weights = load_file(str(src / "model.safetensors"))
    for e in range(4):
        for w, part in (("w1", "gate"), ("w3", "up"), ("w2", "down")):
            stacked = a[f"blk.1.ffn_{part}_exps.weight"][e]
            assert np.array_equal(stacked, weights[f"model.layers.1.block_sparse_moe.experts.{e}.{w}.weight"])
    assert np.array_equal(a["blk.1.ffn_gate_inp.weight"], weights["model.layers.1.block_sparse_moe.gate.weight"])

    back = convert(tmp_path / "fused.gguf", f"{tmp_path / 'back'}/")
    saved = load_file(str(back / "model.safetensors"))
    assert set(saved) == set(weights) and all(np.array_equal(saved[n], weights[n]) for n in weights)
    assert rel(hf_logits(back), want) <= 1e-5


def test_mixtral_q4_k_m_stacks_unstack_without_dequantising(tmp_path: Path) -> None:
    """A q4_k_m Mixtral GGUF (hidden 256: the experts' rows divide into 256-blocks, so the stacks are
    K-quants): read as HF tensors, each expert is a slice of the stack's blocks, still quantised;
    written back to GGUF, every tensor keeps its type and bytes; as an HF folder, the experts are the
    dequantised slices under their on-disk names, and transformers computes what lmconv's forward
    computes on the GGUF."""
    from gguf import GGUFReader, dequantize
    from safetensors.numpy import load_file

    from lmconv import read_model
    from lmconv.verify.logits import forward

    src = build("mixtral", config={**MIXTRAL, "hidden_size": 256, "intermediate_size": 256}, name="mixtral-h256")
    q = convert(src, tmp_path / "q.gguf", "--quant", "q4_k_m")
    stored = {t.name: (t.tensor_type.name, bytes(t.data)) for t in GGUFReader(q).tensors}
    assert stored["blk.0.ffn_gate_exps.weight"][0] == "Q4_K" and stored["blk.1.ffn_down_exps.weight"][0] == "Q6_K"

    model = read_model(q)
    expert = model.tensors["model.layers.1.block_sparse_moe.experts.3.w2.weight"]
    assert expert.dtype.name == "q6_K" and expert.shape == (256, 256)
    blocks = np.asarray(expert.load())
    whole = stored["blk.1.ffn_down_exps.weight"][1]
    assert blocks.tobytes() == whole[3 * len(whole) // 4:]

    again = convert(q, tmp_path / "again.gguf")
    assert {t.name: (t.tensor_type.name, bytes(t.data)) for t in GGUFReader(again).tensors} == stored

    # GGUF → HF: each expert is gguf-py's dequantisation of its slice of the stack, under the on-disk
    # per-expert name; transformers on the folder computes what lmconv's forward computes on the GGUF.
    # (Not compared with llama.cpp on the q4_k_m file: with hidden 256 some tokens route on near ties,
    # 8e-4 apart, that its quantised activations flip, even at q8_0.)
    back = convert(q, f"{tmp_path / 'back'}/")
    saved = load_file(str(back / "model.safetensors"))
    tensor = next(t for t in GGUFReader(q).tensors if t.name == "blk.1.ffn_down_exps.weight")
    stack = dequantize(np.asarray(tensor.data), tensor.tensor_type).reshape(4, 256, 256)
    assert all(np.array_equal(saved[f"model.layers.1.block_sparse_moe.experts.{e}.w2.weight"], stack[e]) for e in range(4))
    assert not any(".mlp." in n for n in saved)
    assert rel(hf_logits(back), forward(model, IDS, dtype=np.float64)) <= 1e-4


@pytest.mark.parametrize(("change", "message"), [
    ({"num_experts_per_tok": 5}, "more than the 4 experts"),
    ({"num_local_experts": 0}, "num_local_experts"),
])
def test_broken_mixtral_config_is_refused(change: dict[str, object], message: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from lmconv.cli import main

    src, folder = tiny("mixtral"), tmp_path / "m"
    folder.mkdir()
    for f in src.iterdir():
        if f.name != "config.json":
            (folder / f.name).symlink_to(f)
    (folder / "config.json").write_text(json.dumps({**json.loads((src / "config.json").read_text()), **change}))
    assert main([str(folder), str(tmp_path / "m.gguf")]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "config.json" in err[0], err
