"""Preset mixtures against llama.cpp's own llama_model_quantize, tensor by tensor.

A small f32 llama GGUF (8 layers, so use_more_bits picks real layers) is written
with gguf-py, quantised by llama.cpp for every preset, and read back: our
``choose_tensor_types`` must name the type llama.cpp chose for every tensor, and
every K-quant tensor llama.cpp wrote must be byte-identical to our numpy K-quants
run on the same f32 data (the headline test is ``--pure``, where every
quantisable tensor takes the preset's K type).
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader, GGUFWriter

ROOT = Path(__file__).resolve().parents[1]


from lmconv.plugins.quantizers import kquants as kq
from lmconv.plugins.quantizers import presets

MIXTURES = ["q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k",
            "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "f16"]
PURE = ["q2_k", "q3_k_s", "q4_k_s", "q5_k_s", "q6_k"]

# model variants: (n_layer, n_embd, n_ff, n_head, n_head_kv, tied output, odd extra tensor)
VARIANTS = {
    "gqa4": dict(n_layer=8, n_embd=256, n_ff=512, n_head=8, n_head_kv=2, tied=False, extra=False),
    # ffn_down rows of 320: K types fall back to 32-block types; a 48-wide tensor falls to F16;
    # no output.weight, so token_embd takes the output rule
    "fallback": dict(n_layer=8, n_embd=256, n_ff=320, n_head=8, n_head_kv=2, tied=True, extra=True),
    # no GQA and 12 layers: other attn_v choices, other use_more_bits layers, blk.10 sorts after blk.9
    "mha12": dict(n_layer=12, n_embd=256, n_ff=256, n_head=4, n_head_kv=4, tied=False, extra=False),
}


def build_model(path: Path, *, n_layer: int, n_embd: int, n_ff: int, n_head: int, n_head_kv: int,
                tied: bool, extra: bool, n_vocab: int = 288, seed: int = 0) -> None:
    """A random f32 llama GGUF that llama_model_quantize accepts."""
    rng = np.random.default_rng(seed)
    w = GGUFWriter(str(path), arch="llama")
    w.add_block_count(n_layer)
    w.add_context_length(128)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list([f"t{i}" for i in range(n_vocab)])
    w.add_token_types([1] * n_vocab)
    w.add_token_merges([])

    def add(name: str, shape: tuple[int, ...]) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * 0.05).astype(np.float32))

    head_dim = n_embd // n_head
    add("token_embd.weight", (n_vocab, n_embd))
    if not tied:
        add("output.weight", (n_vocab, n_embd))
    add("output_norm.weight", (n_embd,))
    for i in range(n_layer):
        p = f"blk.{i}."
        add(p + "attn_norm.weight", (n_embd,))
        add(p + "ffn_norm.weight", (n_embd,))
        add(p + "attn_q.weight", (n_embd, n_embd))
        add(p + "attn_k.weight", (n_head_kv * head_dim, n_embd))
        add(p + "attn_v.weight", (n_head_kv * head_dim, n_embd))
        add(p + "attn_output.weight", (n_embd, n_embd))
        add(p + "ffn_gate.weight", (n_ff, n_embd))
        add(p + "ffn_up.weight", (n_ff, n_embd))
        add(p + "ffn_down.weight", (n_embd, n_ff))
    if extra:
        add("blk.0.extra_proj.weight", (64, 48))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import llama_cpp  # noqa: F401
    d = tmp_path_factory.mktemp("presets")
    out = {}
    for key, v in VARIANTS.items():
        out[key] = d / f"{key}.gguf"
        build_model(out[key], **v)
    return out


def llama_quantize(src: Path, dst: Path, preset: str, *, pure: bool = False, leave_output_tensor: bool = False,
                   output_tensor_type: str | None = None, token_embedding_type: str | None = None,
                   overrides: list[tuple[str, str]] | None = None) -> None:
    import llama_cpp
    from gguf import GGMLQuantizationType

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = presets.PRESETS[preset].ftype
    params.nthread = 2
    params.pure = pure
    params.quantize_output_tensor = not leave_output_tensor
    if output_tensor_type:
        params.output_tensor_type = int(GGMLQuantizationType[output_tensor_type.upper()])
    if token_embedding_type:
        params.token_embedding_type = int(GGMLQuantizationType[token_embedding_type.upper()])
    keep: list[object] = []
    if overrides:
        arr = (llama_cpp.llama_model_tensor_override * (len(overrides) + 1))()
        for i, (pattern, type_name) in enumerate(overrides):
            b = pattern.encode()
            keep.append(b)
            arr[i].pattern = b
            arr[i].type = int(GGMLQuantizationType[type_name.upper()])
        arr[len(overrides)].pattern = None
        keep.append(arr)
        params.tt_overrides = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    assert rc == 0, f"llama_model_quantize failed ({rc})"


def tensor_list(path: Path) -> list[tuple[str, tuple[int, ...]]]:
    return [(t.name, tuple(int(d) for d in reversed(t.shape))) for t in GGUFReader(str(path)).tensors]


def f32_data(path: Path) -> dict[str, np.ndarray]:
    return {t.name: np.asarray(t.data).reshape(tuple(int(d) for d in reversed(t.shape)))
            for t in GGUFReader(str(path)).tensors}


def quantized(path: Path) -> Iterator[tuple[str, str, np.ndarray]]:
    for t in GGUFReader(str(path)).tensors:
        yield t.name, t.tensor_type.name, np.asarray(t.data).view(np.uint8).reshape(-1)


def ours(model: str, preset: str, **kw: object) -> dict[str, str]:
    v = VARIANTS[model]
    return presets.choose_tensor_types(tensor_list_cache[model], preset, arch="llama", n_layer=v["n_layer"],
                                       n_head=v["n_head"], n_head_kv=v["n_head_kv"], **kw)


tensor_list_cache: dict[str, list[tuple[str, tuple[int, ...]]]] = {}


def check_against_llama(models: dict[str, Path], tmp_path: Path, model: str, preset: str, *,
                        check_bytes: bool = True, **kw: object) -> dict[str, str]:
    """Quantise with llama.cpp, compare every tensor's type with ours, and the K-quant bytes."""
    src = models[model]
    tensor_list_cache.setdefault(model, tensor_list(src))
    dst = tmp_path / f"{model}-{preset}.gguf"
    llama_quantize(src, dst, preset, **kw)  # type: ignore[arg-type]
    choice = ours(model, preset, **{k: v for k, v in kw.items() if k != "overrides"},
                  tensor_type_overrides=kw.get("overrides") or ())
    got = {name: qtype for name, qtype, _ in quantized(dst)}
    assert set(got) == set(choice)
    mismatched = {n: (choice[n], got[n]) for n in got if choice[n] != got[n]}
    assert not mismatched, f"{model}/{preset}: ours vs llama.cpp {mismatched}"
    if check_bytes:
        data = f32_data(src)
        for name, qtype, raw in quantized(dst):
            fn = kq.KQUANTIZERS.get(qtype.lower().replace("_k", "_K"))
            if fn is not None:
                mine = fn(data[name]).reshape(-1)
                assert np.array_equal(mine, raw), f"{model}/{preset}: {name} ({qtype}) bytes differ"
    return choice


# --------------------------------------------------------------------------- against llama.cpp


@pytest.mark.parametrize("model", list(VARIANTS))
@pytest.mark.parametrize("preset", MIXTURES)
def test_mixture_matches_llama_cpp(models: dict[str, Path], tmp_path: Path, model: str, preset: str) -> None:
    choice = check_against_llama(models, tmp_path, model, preset)
    assert choice["output_norm.weight"] == "F32"  # 1-D: never quantised


@pytest.mark.parametrize("model", list(VARIANTS))
@pytest.mark.parametrize("preset", PURE)
def test_pure_is_byte_exact(models: dict[str, Path], tmp_path: Path, model: str, preset: str) -> None:
    """--pure: every quantisable tensor in the preset's K type, bytes identical to llama.cpp's."""
    choice = check_against_llama(models, tmp_path, model, preset, pure=True)
    base = presets.PRESETS[preset].base
    n_k = sum(1 for t in choice.values() if t == base)
    assert n_k >= 5 * VARIANTS[model]["n_layer"]  # most of the model really is in the K type


@pytest.mark.parametrize("preset", ["q4_k_m", "q3_k_m", "q2_k"])
def test_overrides_match_llama_cpp(models: dict[str, Path], tmp_path: Path, preset: str) -> None:
    """REGEX=TYPE overrides win over the rules (and don't advance the layer counters), as in llama.cpp."""
    overrides = [(r"blk\.[0-2]\.attn_v", "q8_0"), ("blk.5.ffn_down", "Q5_K"), ("attn_output", "f16")]
    choice = check_against_llama(models, tmp_path, "gqa4", preset, overrides=overrides)
    assert choice["blk.1.attn_v.weight"] == "Q8_0" and choice["blk.5.ffn_down.weight"] == "Q5_K"
    check_against_llama(models, tmp_path, "fallback", preset, overrides=overrides)


@pytest.mark.parametrize("model", ["gqa4", "fallback"])
def test_output_and_embedding_types_match_llama_cpp(models: dict[str, Path], tmp_path: Path, model: str) -> None:
    check_against_llama(models, tmp_path, model, "q4_k_m", output_tensor_type="q8_0", token_embedding_type="Q4_K")
    check_against_llama(models, tmp_path, model, "q5_k_m", output_tensor_type="Q5_K")
    check_against_llama(models, tmp_path, model, "q3_k_s", token_embedding_type="q6_k", pure=True)


def test_leave_output_tensor_matches_llama_cpp(models: dict[str, Path], tmp_path: Path) -> None:
    choice = check_against_llama(models, tmp_path, "gqa4", "q4_k_m", leave_output_tensor=True)
    assert choice["output.weight"] == "F32"
    assert choice["token_embd.weight"] == "Q4_K"  # output.weight exists: embeddings are not tied


# --------------------------------------------------------------------------- the function alone

LLAMA8 = [("token_embd.weight", (512, 256)), ("output_norm.weight", (256,)), ("output.weight", (512, 256))] + [
    (f"blk.{i}.{n}", s)
    for i in range(8)
    for n, s in [("attn_norm.weight", (256,)), ("attn_v.weight", (64, 256)), ("attn_q.weight", (256, 256)),
                 ("ffn_down.weight", (256, 512)), ("ffn_up.weight", (512, 256))]
]


def choose(preset: str = "q4_k_m", tensors=LLAMA8, **kw: object) -> dict[str, str]:
    return presets.choose_tensor_types(tensors, preset, arch="llama", n_layer=8, n_head=8, n_head_kv=2, **kw)


def test_q4_k_m_shape_of_the_mixture() -> None:
    c = choose()
    assert c["output.weight"] == "Q6_K" and c["token_embd.weight"] == "Q4_K"
    # use_more_bits(i, 8): i < 1, i >= 7, or (i - 1) % 3 == 2 -> layers 0, 3, 6, 7
    assert [c[f"blk.{i}.ffn_down.weight"] for i in range(8)] == ["Q6_K", "Q4_K", "Q4_K", "Q6_K", "Q4_K",
                                                                 "Q4_K", "Q6_K", "Q6_K"]
    assert [c[f"blk.{i}.attn_v.weight"] for i in range(8)] == [c[f"blk.{i}.ffn_down.weight"] for i in range(8)]
    assert all(c[f"blk.{i}.attn_q.weight"] == "Q4_K" for i in range(8))
    assert c["blk.3.attn_norm.weight"] == "F32"


def test_counters_follow_llama_cpp_order_not_input_order() -> None:
    shuffled = list(reversed(LLAMA8))
    assert choose(tensors=shuffled) == choose()
    assert list(choose(tensors=shuffled)) == [n for n, _ in shuffled]  # result keeps the input order


def test_tied_embeddings_take_the_output_rule() -> None:
    tied = [t for t in LLAMA8 if t[0] != "output.weight"]
    assert choose(tensors=tied)["token_embd.weight"] == "Q6_K"
    assert choose("q4_0", tensors=tied)["token_embd.weight"] == "Q6_K"
    assert choose("q8_0", tensors=tied)["token_embd.weight"] == "Q8_0"


def test_fallback_chain() -> None:
    odd = [("blk.0.ffn_down.weight", (256, 320)), ("blk.0.attn_q.weight", (256, 48)),
           ("blk.0.attn_k.weight", (64, 1)), ("output.weight", (512, 320))]
    assert choose("q4_k_s", tensors=odd, pure=True)["blk.0.ffn_down.weight"] == "Q5_0"
    assert choose("q5_k_s", tensors=odd, pure=True)["blk.0.ffn_down.weight"] == "Q5_1"
    assert choose("q6_k", tensors=odd, pure=True)["blk.0.ffn_down.weight"] == "Q8_0"
    assert choose("q2_k", tensors=odd, pure=True)["blk.0.ffn_down.weight"] == "Q4_0"
    assert choose("q3_k_s", tensors=odd, pure=True)["blk.0.attn_q.weight"] == "F16"
    assert choose("q8_0", tensors=odd)["blk.0.attn_q.weight"] == "F16"
    assert choose("q4_k_m", tensors=odd)["output.weight"] == "Q8_0"  # row not a multiple of 256
    assert choose("q4_k_m", tensors=odd)["blk.0.attn_k.weight"] == "F16"  # ne = [1, 64]: 2-D, row of 1


def test_what_is_never_quantised() -> None:
    tensors = [("blk.0.attn_norm.weight", (4096, 256)), ("blk.0.ffn_gate_inp.weight", (8, 256)),
               ("position_embd.weight", (512, 256)), ("blk.0.attn_q.bias", (256, 256)),
               ("rope_freqs.weight", (32,)), ("blk.0.attn_q.weight", (1, 256)), ("output.weight", (512, 256))]
    c = choose("q4_k_m", tensors=tensors, leave_output_tensor=True)
    assert set(c.values()) == {"F32"}
    c = choose("q4_k_m", tensors=[(n, s, "BF16") for n, s in tensors[:2]])
    assert set(c.values()) == {"BF16"}  # kept in the type they came in
    assert choose("q4_k_m", tensors=tensors[:1], source_types={"blk.0.attn_norm.weight": "f16"}) == {
        "blk.0.attn_norm.weight": "F16"}


def test_overrides_and_their_spellings() -> None:
    c = choose(tensor_type_overrides=["attn_v=q8_0", (r"blk\.7\.", "Q2_K")])
    assert all(c[f"blk.{i}.attn_v.weight"] == "Q8_0" for i in range(8))  # first match wins
    assert c["blk.7.ffn_down.weight"] == "Q2_K"
    assert choose("f16", tensor_type_overrides=["attn_v=q8_0"])["blk.0.attn_v.weight"] == "F16"  # as llama.cpp
    assert choose(output_tensor_type="q8_0")["output.weight"] == "Q8_0"
    assert choose(token_embedding_type="Bf16")["token_embd.weight"] == "BF16"


def test_presets_and_types_are_case_insensitive() -> None:
    assert choose("Q4_K_M") == choose("q4_k_m")
    assert presets.normalize_type_name("q6_k") == "Q6_K"
    assert presets.normalize_type_name(" bf16 ") == "BF16"


@pytest.mark.parametrize("bad", ["q4_k_x", "Q7_K", ""])
def test_unknown_names_list_the_valid_ones(bad: str) -> None:
    with pytest.raises(ValueError, match="valid types: .*Q4_K"):
        choose(output_tensor_type=bad or "nope")
    with pytest.raises(ValueError, match="valid types: .*Q8_0"):
        choose(tensor_type_overrides=[("attn", bad or "nope")])
    with pytest.raises(ValueError, match="valid presets: .*q4_k_m"):
        choose(bad or "nope")


def test_malformed_override() -> None:
    with pytest.raises(ValueError, match="REGEX=TYPE"):
        choose(tensor_type_overrides=["attn_v"])
    with pytest.raises(ValueError, match="regex"):
        choose(tensor_type_overrides=[("attn_v(", "q8_0")])


def test_70b_attn_v_bump_and_moe_layers() -> None:
    tensors = [(f"blk.{i}.attn_v.weight", (1024, 8192)) for i in range(80)]
    c = presets.choose_tensor_types(tensors, "q3_k_s", arch="llama", n_layer=80, n_head=64, n_head_kv=8)
    assert set(c.values()) == {"Q5_K"}
    c = presets.choose_tensor_types(tensors, "q3_k_s", arch="llama", n_layer=80, n_head=64, n_head_kv=64)
    assert set(c.values()) == {"Q3_K"}  # 65B: no bump
    moe = [("blk.3.ffn_down_exps.weight", (8, 256, 512)), ("blk.0.ffn_down_exps.weight", (8, 256, 512))]
    c = presets.choose_tensor_types(moe, "q4_k_m", arch="llama", n_layer=4, n_head=8, n_head_kv=2, n_expert=8)
    # with experts the layer comes from the name: use_more_bits(3, 4) but not (0, 4)
    assert c == {"blk.3.ffn_down_exps.weight": "Q6_K", "blk.0.ffn_down_exps.weight": "Q4_K"}
    with pytest.raises(ValueError, match="layer"):
        presets.choose_tensor_types([("blk.9.ffn_down_exps.weight", (8, 256, 512))], "q4_k_m", arch="llama",
                                    n_layer=4, n_head=8, n_head_kv=2, n_expert=8)
