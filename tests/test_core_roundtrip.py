"""Lossless conversions are bit-exact, casts touch floats only, and the reference tools load what we write.

Every check reads our output with the reference libraries (safetensors,
``torch.load(weights_only=True)``, transformers) and compares raw bytes, so an
lmconv reader and writer that agreed on a mistake would still be caught.
"""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from tests.conftest import (
    companion_bytes,
    copy_companions,
    logits,
    raw_tensors,
    run,
    safetensors_metadata,
)


def _total_bytes(raw: dict[str, tuple[str, tuple[int, ...], bytes]]) -> int:
    return sum(len(b) for _, _, b in raw.values())


def _produced(dst: Path, args: tuple[str, ...]) -> Path:
    """What to read back after ``lmconv SRC dst ARGS``: a sharded file target becomes its index."""
    if "--max-shard-size" in args and dst.suffix in (".bin", ".safetensors"):
        return dst.with_name(dst.name + ".index.json")
    return dst


def _shards(path: Path) -> list[str]:
    index = path / "model.safetensors.index.json" if path.is_dir() else path
    return sorted(set(json.loads(index.read_text())["weight_map"].values()))


# Each chain is a list of hops (target name, flags); "SHARD" is replaced by a third of the model's size.
CHAINS = {
    "st-pt-bin-hf": [("m.safetensors", ()), ("m.pt", ()), ("pytorch_model.bin", ()), ("out/", ())],
    "sharded-hf-bin-st": [("out/", ("--max-shard-size", "SHARD")), ("pytorch_model.bin", ("--max-shard-size", "SHARD")),
                          ("m.safetensors", ("--max-shard-size", "SHARD")), ("single/", ())],
    "index-names-pth": [("model.safetensors.index.json", ()), ("pytorch_model.bin.index.json", ()), ("m.pth", ()),
                        ("m.safetensors", ())],
}


@pytest.mark.parametrize("chain", sorted(CHAINS))
@pytest.mark.parametrize("which", ["tiny_llama", "tiny_gpt2"])
def test_round_trip_chain_is_bit_exact(which: str, chain: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    source: Path = request.getfixturevalue(which)
    want = raw_tensors(source)
    want_companions = companion_bytes(source)
    assert "config.json" in want_companions and "tokenizer.json" in want_companions
    shard = str(_total_bytes(want) // 3)
    src = source
    for i, (name, flags) in enumerate(CHAINS[chain]):
        flags = tuple(shard if f == "SHARD" else f for f in flags)
        folder = tmp_path / f"hop{i}"
        folder.mkdir()
        dst = folder / name
        run(src, f"{dst}/" if name.endswith("/") else dst, *flags)
        out = _produced(dst, flags)
        got = raw_tensors(out)
        assert got.keys() == want.keys(), f"hop {i} ({name}) changed the tensor names"
        for k in want:
            assert got[k] == want[k], f"hop {i} ({name}): tensor {k} is not bit-exact"
        companions_dir = out if out.is_dir() else out.parent
        assert companion_bytes(companions_dir) == want_companions, f"hop {i} ({name}): config/tokenizer files changed"
        if "--max-shard-size" in flags or name.endswith(".index.json"):
            assert out.name.endswith(".index.json") or (out / "model.safetensors.index.json").is_file()
            if "--max-shard-size" in flags:
                assert len(_shards(out)) >= 2, f"hop {i} ({name}) was not sharded"
        src = out


@pytest.fixture(scope="module")
def mixed_model(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-llama's tensors plus an int64 buffer, a bool mask and f32 edge values, with custom __metadata__."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    folder = tmp_path_factory.mktemp("mixed") / "mixed"
    copy_companions(tiny_llama, folder)
    with safe_open(str(next(tiny_llama.glob("*.safetensors"))), framework="numpy") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    bits = np.array([0x3F808000, 0x3F818000, 0x3F808001, 0x3F807FFF, 0x7F800000, 0xFF800000, 0x7FC00000,
                     0x80000000, 0x00000001, 0x477FF000, 0x477FE000, 0x33000000], dtype=np.uint32)
    tensors["edge.values"] = bits.view(np.float32)  # RNE ties, ±inf, NaN, -0, subnormal, f16 overflow/underflow
    tensors["model.position_ids"] = np.arange(64, dtype=np.int64)[None]
    tensors["model.mask"] = np.array([True, False, True])
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt", "lmconv.test": "kept ✓"})
    return folder


def test_safetensors_metadata_survives(mixed_model: Path, tmp_path: Path) -> None:
    want = raw_tensors(mixed_model)
    total = _total_bytes(want)
    hops = [(tmp_path / "a.safetensors", ()), (tmp_path / "hf", ("--max-shard-size", str(total // 3))),
            (tmp_path / "b" / "model.safetensors.index.json", ()), (tmp_path / "c" / "c.safetensors", ())]
    src = mixed_model
    for dst, flags in hops:
        dst.parent.mkdir(exist_ok=True)
        run(src, f"{dst}/" if dst.name == "hf" else dst, *flags)
        files = sorted(dst.glob("*.safetensors")) if dst.is_dir() else (
            [dst.parent / s for s in _shards(dst)] if dst.name.endswith(".index.json") else [dst])
        assert files
        for f in files:
            meta = safetensors_metadata(f)
            assert meta.get("lmconv.test") == "kept ✓" and meta.get("format") == "pt", f"{f.name}: {meta}"
        assert raw_tensors(dst) == want
        src = dst


def test_every_plain_dtype_round_trips_bit_exact_and_quietly(tmp_path: Path) -> None:
    """f64 … fp8, signed and unsigned ints, bool: through .pt, an HF folder and sharded .bin, byte for byte.

    Run as a real process with --quiet: stderr must stay empty (no library warnings either)."""
    from safetensors.numpy import save_file

    from tests.conftest import lmconv

    x = np.random.default_rng(3).standard_normal((5, 8)).astype(np.float32)
    arrays = {"f64": x.astype(np.float64), "f32": x, "f16": x.astype(np.float16), "bf16": x.astype(ml_dtypes.bfloat16),
              "f8_e4m3": x.astype(ml_dtypes.float8_e4m3fn), "f8_e5m2": x.astype(ml_dtypes.float8_e5m2),
              "bool": np.array([True, False, True])}
    ints = {"i64": np.int64, "i32": np.int32, "i16": np.int16, "i8": np.int8,
            "u64": np.uint64, "u32": np.uint32, "u16": np.uint16, "u8": np.uint8}
    for name, np_type in ints.items():
        arrays[name] = (np.arange(-20, 20) if name[0] == "i" else np.arange(40) * 3).astype(np_type)
    save_file(arrays, str(tmp_path / "all.safetensors"), metadata={"format": "pt"})
    want = raw_tensors(tmp_path / "all.safetensors")
    assert len(want) == 15
    hops = ["all.pt", "hf/", "pytorch_model.bin.index.json", "back.safetensors"]
    src = "all.safetensors"
    for dst in hops:
        proc = lmconv(src, dst, "--quiet", "--no-companions", cwd=tmp_path)
        assert proc.returncode == 0 and proc.stderr == "" and proc.stdout == "", f"{src} → {dst}: {proc.stderr}"
        assert raw_tensors(tmp_path / dst) == want, f"{src} → {dst} is not bit-exact"
        src = dst


def _np_from_raw(raw: tuple[str, tuple[int, ...], bytes]) -> np.ndarray:
    dtype = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "int64": np.int64,
             "bool": np.bool_}[raw[0]]
    return np.frombuffer(raw[2], dtype=dtype).reshape(raw[1])


@pytest.mark.parametrize("target", ["cast.safetensors", "cast.pt", "hf/"])
@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_dtype_casts_floats_only_with_round_to_nearest_even(mixed_model: Path, tmp_path: Path, dtype: str, target: str) -> None:
    src = raw_tensors(mixed_model)
    dst = tmp_path / target
    run(mixed_model, dst if not target.endswith("/") else f"{dst}/", "--dtype", dtype)
    got = raw_tensors(dst)
    assert got.keys() == src.keys()
    np_dtype = np.float16 if dtype == "f16" else ml_dtypes.bfloat16
    torch_name = "float16" if dtype == "f16" else "bfloat16"
    for name, raw in src.items():
        if raw[0] == "float32":
            assert got[name][0] == torch_name and got[name][1] == raw[1], name
            with np.errstate(over="ignore"):  # 65520 → inf in f16 is the expected result
                expect = _np_from_raw(raw).astype(np_dtype)
            assert got[name][2] == expect.tobytes(), f"{name}: not the round-to-nearest-even {dtype} of the source"
        else:
            assert got[name] == raw, f"{name} ({raw[0]}) must never be cast"
    assert got["model.position_ids"][0] == "int64" and got["model.mask"][0] == "bool"
    edge = _np_from_raw(got["edge.values"]).view(np.uint16)
    if dtype == "bf16":
        # Hand-checked bit patterns, so that the reference itself is held to round-to-nearest-even:
        # halfway cases go to the even neighbour, just above/below go up/down; inf and -0 stay.
        assert list(edge[:8]) == [0x3F80, 0x3F82, 0x3F81, 0x3F80, 0x7F80, 0xFF80, 0x7FC0, 0x8000]
    else:
        # 65520 overflows to inf in f16 (halfway above 65504, ties to even), 65504 stays, 2**-25 ties to 0.
        assert list(edge[[4, 5, 7, 9, 10, 11]]) == [0x7C00, 0xFC00, 0x8000, 0x7C00, 0x7BFF, 0x0000]
    assert np.isnan(_np_from_raw(got["edge.values"]).astype(np.float32)[6])


def test_reference_libraries_load_our_files(tiny_llama: Path, tmp_path: Path) -> None:
    import torch
    from safetensors import safe_open
    from safetensors.numpy import load_file as load_numpy
    from safetensors.torch import load_file as load_torch

    run(tiny_llama, tmp_path / "m.safetensors")
    run(tmp_path / "m.safetensors", tmp_path / "m.pt")
    with safe_open(str(next(tiny_llama.glob("*.safetensors"))), framework="numpy") as f:
        want = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    by_numpy = load_numpy(str(tmp_path / "m.safetensors"))
    by_torch = load_torch(str(tmp_path / "m.safetensors"))
    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as f:
        by_open = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    state = torch.load(tmp_path / "m.pt", map_location="cpu", weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    for loaded in (by_numpy, by_torch, by_open, state):
        assert loaded.keys() == want.keys()
        for k, v in want.items():
            got = loaded[k].numpy() if hasattr(loaded[k], "numpy") else loaded[k]
            assert got.dtype == v.dtype and got.tobytes() == v.tobytes(), k


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
@pytest.mark.parametrize("which", ["tiny_llama", "tiny_gpt2"])
def test_transformers_loads_our_hf_folder_with_same_logits(which: str, sharded: bool, request: pytest.FixtureRequest,
                                                           tmp_path: Path) -> None:
    import torch

    source: Path = request.getfixturevalue(which)
    run(source, tmp_path / "m.pt")  # through a lone PyTorch file and back into a folder
    flags = ("--max-shard-size", str(_total_bytes(raw_tensors(source)) // 3)) if sharded else ()
    run(tmp_path / "m.pt", f"{tmp_path / 'out'}/", *flags)
    out = tmp_path / "out"
    if sharded:
        assert len(_shards(out)) >= 2 and not (out / "model.safetensors").exists()
    want, got = logits(source), logits(out)
    assert torch.equal(want, got), f"max |diff| {float((want - got).abs().max())}"


def test_transformers_loads_our_sharded_pytorch_bin(tiny_llama: Path, tmp_path: Path) -> None:
    import torch

    folder = tmp_path / "bin"
    folder.mkdir()
    run(tiny_llama, folder / "pytorch_model.bin", "--max-shard-size", str(_total_bytes(raw_tensors(tiny_llama)) // 3))
    index = folder / "pytorch_model.bin.index.json"
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    assert len(shards) >= 2 and all((folder / s).is_file() for s in shards)
    assert not list(folder.glob("*.safetensors")), "transformers must be reading our .bin shards"
    assert torch.equal(logits(tiny_llama), logits(folder))
    # and the folder of .bin shards reads back as an HF folder, bit for bit
    run(folder, tmp_path / "back.safetensors")
    assert raw_tensors(tmp_path / "back.safetensors") == raw_tensors(tiny_llama)


# ----------------------------------------------------------------------------- tied weights
@pytest.fixture(scope="module")
def gpt2_state_pt(tiny_gpt2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """GPT-2 saved the plain PyTorch way: torch.save(model.state_dict()), lm_head tied to wte."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_gpt2), dtype=torch.float32)
    state = model.state_dict()
    assert state["lm_head.weight"].data_ptr() == state["transformer.wte.weight"].data_ptr()
    folder = tmp_path_factory.mktemp("gpt2pt")
    torch.save(state, folder / "gpt2.pt")
    copy_companions(tiny_gpt2, folder)
    return folder / "gpt2.pt"


def test_reference_safetensors_refuses_shared_tensors(gpt2_state_pt: Path, tmp_path: Path) -> None:
    """The hazard the tie handling avoids: safetensors' own writer rejects shared memory."""
    import torch
    from safetensors.torch import save_file

    state = torch.load(gpt2_state_pt, weights_only=True)
    with pytest.raises(RuntimeError, match="share memory"):
        save_file(state, str(tmp_path / "x.safetensors"))


def test_ties_survive_as_one_tensor_with_an_alias(gpt2_state_pt: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    from lmconv import read_model

    model = read_model(gpt2_state_pt)
    wte = model.tensors["transformer.wte.weight"]
    assert wte.aliases == ("lm_head.weight",) and "lm_head.weight" not in model.tensors

    run(gpt2_state_pt, tmp_path / "tied.safetensors")
    loaded = load_file(str(tmp_path / "tied.safetensors"))
    assert "transformer.wte.weight" in loaded and "lm_head.weight" not in loaded  # stored once
    assert json.loads(safetensors_metadata(tmp_path / "tied.safetensors")["lmconv.aliases"]) == {
        "lm_head.weight": "transformer.wte.weight"}
    original = torch.load(gpt2_state_pt, weights_only=True)
    assert torch.equal(loaded["transformer.wte.weight"], original["lm_head.weight"])

    for src in (gpt2_state_pt, tmp_path / "tied.safetensors"):
        dst = tmp_path / f"from-{src.suffix[1:]}.pt"
        run(src, dst)
        state = torch.load(dst, weights_only=True)
        assert state.keys() == original.keys()
        assert state["lm_head.weight"].data_ptr() == state["transformer.wte.weight"].data_ptr(), f"tie lost via {src.name}"
        for k, v in original.items():
            assert torch.equal(state[k], v), k


def test_tied_checkpoint_to_hf_folder_loads_with_same_logits(gpt2_state_pt: Path, tiny_gpt2: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    run(gpt2_state_pt, f"{tmp_path / 'hf'}/", "--max-shard-size", str(gpt2_state_pt.stat().st_size // 3))
    weight_map = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())["weight_map"]
    assert weight_map["lm_head.weight"] == weight_map["transformer.wte.weight"]
    assert torch.equal(logits(tiny_gpt2), logits(tmp_path / "hf"))
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"))
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    # and back to a .pt from the sharded folder: still one storage
    run(tmp_path / "hf", tmp_path / "back.pt")
    state = torch.load(tmp_path / "back.pt", weights_only=True)
    assert state["lm_head.weight"].data_ptr() == state["transformer.wte.weight"].data_ptr()
