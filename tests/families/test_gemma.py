"""The Gemma families (GemmaForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM and the language model of
Gemma3ForConditionalGeneration; GGUF arch gemma, gemma2, gemma3): the battery, soft-capping, sliding
windows and local/global rotary bases, GGUFs from llama.cpp's own converter, the vision-language
checkpoint's text model, a Gemma-sized SentencePiece vocabulary both ways, and a q4_k_m GGUF read back
against transformers' own GGUF loader.

Tolerance against llama.cpp: :data:`GELU_TOL`. llama.cpp's CPU GELU (``ggml_vec_gelu_f32`` with
``GGML_GELU_FP16``) rounds its input to half precision and looks the result up in a half-precision
table: each activation is off by up to ~1e-3 relative, which moves these tiny models' logits by
1e-5 (Gemma) to 8e-5 (Gemma 2 and 3, whose post-feed-forward norms rescale the MLP output) relative.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.families.support import (
    CACHE,
    IDS,
    battery,
    build,
    convert,
    hf_logits,
    llamacpp_logits,
    reference_gguf,
    rel,
)

#: llama.cpp against transformers: GELU from a half-precision table (see the module docstring)
GELU_TOL = 2e-4
SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 1024, "rms_norm_eps": 1e-6,
         "initializer_range": 0.1}
#: llama.cpp scales attention by head_dim ** -0.5 (it reads no key for query_pre_attn_scalar)
GEMMA2 = {**SMALL, "query_pre_attn_scalar": 16, "sliding_window": 4, "attn_logit_softcapping": 5.0,
          "final_logit_softcapping": 30.0}
#: a local rotary base of 100 on the sliding layers; linear rope scaling on the global ones only (as Gemma 3 4B+)
LOCAL_GLOBAL = {"sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
                "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}}
#: layer 0 slides, layer 1 is global: not llama.cpp's default pattern for Gemma 3 (five of six slide)
GEMMA3 = {**SMALL, "query_pre_attn_scalar": 16, "sliding_window": 4, "final_logit_softcapping": 30.0,
          "layer_types": ["sliding_attention", "full_attention"], "rope_parameters": LOCAL_GLOBAL}
#: llama.cpp's default pattern (layers 0-4 slide, 5 is global): what llama.cpp's own converter can express.
#: (Six layers of half-precision GELU put llama.cpp 6e-4 from transformers: this one is only read back.)
GEMMA3_REF = {**SMALL, "num_hidden_layers": 6, "query_pre_attn_scalar": 16, "sliding_window": 4,
              "tie_word_embeddings": False, "rope_parameters": LOCAL_GLOBAL}
LONG = [(7 + 37 * i) % 300 for i in range(48)]


def gemma(model_type: str, config: dict[str, Any], name: str, **kw: Any) -> Path:
    return build(model_type, tokenizer="spm", config=config, name=name, **kw)


def _fields(model: Any) -> dict[str, Any]:
    from lmconv.tokenizer_files import tokenizer_fields

    fields = tokenizer_fields(model.tokenizer, model.config)
    assert fields is not None
    return fields


# ============================================================================ the battery
@pytest.mark.parametrize("family", ["gemma", "gemma2", "gemma3"])
def test_battery(family: str, tmp_path: Path) -> None:
    """Gemma 2: soft-capping at 5 (attention) and 30 (logits) and a window of 4 over 16 tokens, so
    that a dropped key (llama.cpp's defaults are 50, 30 and 4096) shows. Gemma 3: a local rotary base
    of 100 against a global 1e4 scaled by 4, a non-default layer pattern (written as llama.cpp's
    per-layer ``sliding_window_pattern`` array)."""
    model_type, config = {"gemma": ("gemma", SMALL), "gemma2": ("gemma2", GEMMA2),
                          "gemma3": ("gemma3_text", GEMMA3)}[family]
    fig = battery(gemma(model_type, config, family), tmp_path, llama_tol=GELU_TOL)
    assert fig.numpy_vs_hf <= 1e-6 and fig.back_vs_hf <= 1e-6


def half_gelu_forward(folder: Path, ids: list[int], monkeypatch: pytest.MonkeyPatch) -> np.ndarray:
    """lmconv's numpy forward with llama.cpp's CPU GELU: input and result rounded to half precision
    (``ggml_vec_gelu_f32`` under ``GGML_GELU_FP16``), 0 below -10 and the identity above 10."""
    from lmconv import blocks as B
    from lmconv import read_model
    from lmconv.verify.logits import forward

    exact = B.ACTIVATIONS["gelu_pytorch_tanh"]

    def gelu(x: np.ndarray) -> np.ndarray:
        y = exact(x.astype(np.float16).astype(x.dtype)).astype(np.float16).astype(x.dtype)
        return np.where(x <= -10, 0.0, np.where(x >= 10, x, y))

    monkeypatch.setitem(B.ACTIVATIONS, "gelu_pytorch_tanh", gelu)
    try:
        return forward(read_model(folder), ids, dtype=np.float64)
    finally:
        monkeypatch.undo()


def test_gemma2_and_gemma3_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The keys llama.cpp reads for soft-capping, windows and rotary bases; Gemma 3's local and global
    rotary at positions up to 48 in llama.cpp; an untied Gemma 3 output as llama.cpp's output.weight.
    Untied, the embedding no longer carries the output's gain and the MLPs weigh more in the logits:
    llama.cpp's half-precision GELU then moves them by 7e-4 from transformers, so llama.cpp is held
    to lmconv's forward with that very GELU (9e-5 apart) instead."""
    from gguf import GGUFReader

    def kv(path: Path) -> dict[str, Any]:
        r = GGUFReader(path)
        return {k: f.contents() for k, f in r.fields.items() if not k.startswith("tokenizer.")}

    g2 = kv(convert(gemma("gemma2", GEMMA2, "gemma2"), tmp_path / "g2.gguf"))
    assert g2["gemma2.attn_logit_softcapping"] == 5.0 and g2["gemma2.final_logit_softcapping"] == 30.0
    assert g2["gemma2.attention.sliding_window"] == 4 and "gemma2.attention.sliding_window_pattern" not in g2
    assert g2["gemma2.attention.key_length"] == 16
    src = gemma("gemma3_text", GEMMA3, "gemma3")
    g3 = kv(convert(src, tmp_path / "g3.gguf"))
    assert g3["gemma3.rope.freq_base"] == 1e4 and g3["gemma3.rope.freq_base_swa"] == 100.0
    assert g3["gemma3.rope.scaling.type"] == "linear" and g3["gemma3.rope.scaling.factor"] == 4.0
    assert g3["gemma3.attention.sliding_window_pattern"] == [True, False]
    assert g3["gemma3.final_logit_softcapping"] == 30.0 and "gemma3.attn_logit_softcapping" not in g3
    assert "output.weight" not in {t.name for t in GGUFReader(tmp_path / "g3.gguf").tensors}
    got, want = llamacpp_logits(tmp_path / "g3.gguf", LONG), hf_logits(src, LONG)
    assert rel(got, want) <= GELU_TOL and np.array_equal(got.argmax(-1), want.argmax(-1))

    # llama.cpp's default pattern needs no pattern key; an older config spelling (rope_theta,
    # rope_local_base_freq, rope_scaling, sliding_window_pattern) gives the very same keys
    ref = gemma("gemma3_text", GEMMA3_REF, "gemma3-ref")
    new = kv(convert(ref, tmp_path / "new.gguf"))
    assert "gemma3.attention.sliding_window_pattern" not in new and new["gemma3.attention.sliding_window"] == 4
    old_dir = tmp_path / "old"
    shutil.copytree(ref, old_dir)
    cfg = json.loads((old_dir / "config.json").read_text())
    rope, _ = cfg.pop("rope_parameters"), cfg.pop("layer_types")
    cfg.update(rope_theta=rope["full_attention"]["rope_theta"], sliding_window_pattern=6,
               rope_local_base_freq=rope["sliding_attention"]["rope_theta"],
               rope_scaling={"rope_type": "linear", "factor": rope["full_attention"]["factor"]})
    (old_dir / "config.json").write_text(json.dumps(cfg))
    old = kv(convert(old_dir, tmp_path / "old.gguf"))
    assert {k: v for k, v in old.items() if k not in ("lmconv.hf_config", "general.name")} == \
        {k: v for k, v in new.items() if k not in ("lmconv.hf_config", "general.name")}

    untied = gemma("gemma3_text", {**GEMMA3, "tie_word_embeddings": False}, "gemma3-untied")
    gguf = convert(untied, tmp_path / "untied.gguf")
    assert "output.weight" in {t.name for t in GGUFReader(gguf).tensors}
    got, want = llamacpp_logits(gguf, IDS), hf_logits(untied, IDS)
    assert rel(got, half_gelu_forward(untied, IDS, monkeypatch)) <= GELU_TOL
    assert np.array_equal(got.argmax(-1), want.argmax(-1))
    assert rel(hf_logits(convert(gguf, f"{tmp_path / 'untied'}/"), IDS), want) <= 1e-5


# ============================================================================ llama.cpp's converter
@pytest.mark.parametrize("family", ["gemma", "gemma2", "gemma3"])
def test_gguf_from_llama_cpp_converter_reads_back_into_transformers(family: str, tmp_path: Path) -> None:
    """llama.cpp's convert_hf_to_gguf.py (SentencePiece vocabulary from tokenizer.model) writes no
    config of ours: soft-caps, window, layer pattern, rotary bases and scaling, query scale and the
    norms' − 1 come from its keys and tensors alone."""
    model_type, config, ids = {"gemma": ("gemma", SMALL, IDS), "gemma2": ("gemma2", GEMMA2, IDS),
                               "gemma3": ("gemma3_text", GEMMA3_REF, LONG)}[family]
    name = family if family != "gemma3" else "gemma3-ref"
    src = gemma(model_type, config, name)
    ref = reference_gguf(src, tmp_path / "ref.gguf")
    back = convert(ref, f"{tmp_path / 'back'}/")
    want = hf_logits(src, ids)
    assert rel(hf_logits(back, ids), want) <= 1e-5
    if family == "gemma3":
        cfg = json.loads((back / "config.json").read_text())
        assert cfg["rope_parameters"]["full_attention"] == {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}
        assert cfg["rope_parameters"]["sliding_attention"]["rope_theta"] == 100.0
        assert cfg["layer_types"] == ["sliding_attention"] * 5 + ["full_attention"]
        assert cfg["tie_word_embeddings"] is False


# ============================================================================ Gemma 3 vision-language
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
          "image_size": 32, "patch_size": 8}


def test_gemma3_vision_language_model_converts_its_language_model(tmp_path: Path) -> None:
    """Gemma3ForConditionalGeneration → a text GGUF (no vision tensors; llama.cpp runs it like the
    text model) → a Gemma3ForCausalLM folder with the same logits. The same checkpoint with its text
    tensors under model.language_model. (the newer spelling) gives the very same GGUF tensors."""
    from gguf import GGUFReader
    from lmconv import read_model
    from lmconv.verify.logits import forward
    from safetensors.numpy import load_file, save_file

    text = {**GEMMA3, "vocab_size": 1024}
    # transformers' AutoModelForCausalLM builds a Gemma3ForConditionalGeneration for model_type gemma3
    src = build("gemma3", tokenizer="spm", name="gemma3-vlm",
                config={"text_config": text, "vision_config": VISION, "mm_tokens_per_image": 4})
    assert json.loads((src / "config.json").read_text())["architectures"] == ["Gemma3ForConditionalGeneration"]
    want = hf_logits(src, IDS)
    assert rel(forward(read_model(src), IDS, dtype=np.float64), want) <= 1e-6
    gguf = convert(src, tmp_path / "m.gguf")
    names = {t.name for t in GGUFReader(gguf).tensors}
    assert not any(n.startswith(("v.", "mm.")) for n in names) and "token_embd.weight" in names
    assert len(names) == 2 + 2 * 13  # embedding, final norm, 13 per layer (tied: no output)
    got = llamacpp_logits(gguf, IDS)
    assert rel(got, want) <= GELU_TOL and np.array_equal(got.argmax(-1), want.argmax(-1))
    back = convert(gguf, f"{tmp_path / 'back'}/")
    cfg = json.loads((back / "config.json").read_text())
    assert cfg["architectures"] == ["Gemma3ForCausalLM"] and cfg["model_type"] == "gemma3_text"
    assert rel(hf_logits(back, IDS), want) <= 1e-5

    renamed = tmp_path / "renamed"
    shutil.copytree(src, renamed)
    weights = load_file(renamed / "model.safetensors")
    new = {("model.language_model." + k[len("language_model.model."):] if k.startswith("language_model.model.")
            else "model." + k if k.startswith(("vision_tower.", "multi_modal_projector.")) else k): v
           for k, v in weights.items()}
    assert new.keys() != weights.keys()
    save_file(new, renamed / "model.safetensors", metadata={"format": "pt"})
    again = {t.name: bytes(t.data) for t in GGUFReader(convert(renamed, tmp_path / "again.gguf")).tensors}
    assert again == {t.name: bytes(t.data) for t in GGUFReader(gguf).tensors}


# ============================================================================ config checks
def test_a_config_llama_cpp_cannot_express_is_warned_about(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """transformers scales Gemma 2 attention by query_pre_attn_scalar, llama.cpp by head_dim: a
    model whose scalar differs converts, with a warning, and llama.cpp computes something else."""
    from lmconv.cli import main

    src = gemma("gemma2", GEMMA2, "gemma2")
    odd = tmp_path / "odd"
    shutil.copytree(src, odd)
    cfg = json.loads((odd / "config.json").read_text())
    cfg["query_pre_attn_scalar"] = 64
    (odd / "config.json").write_text(json.dumps(cfg))
    assert main([str(odd), str(tmp_path / "odd.gguf")]) == 0
    assert "query_pre_attn_scalar is 64" in capsys.readouterr().err
    cfg["layer_types"] = ["sliding_attention"]
    (odd / "config.json").write_text(json.dumps(cfg))
    assert main([str(odd), str(tmp_path / "bad.gguf"), "--quiet"]) == 3
    assert "layer_types must list 2" in capsys.readouterr().err
    assert not (tmp_path / "bad.gguf").exists()


# ============================================================================ a Gemma-sized vocabulary
VOCAB_262K = 262144
TEXT = "Hello world, {last} and 一丁{last}七 here! 123 <start_of_turn>user\nça va?<end_of_turn>"


def _gemma_sized_tokenizer() -> Path:
    """An HF tokenizer folder like Gemma 3's: a SentencePiece BPE with byte fallback and 262144 pieces
    (tokenizer.model), <pad> <eos> <bos> <unk> at 0-3, user-defined markers, unused control pieces, and
    tokenizer.json as transformers' GemmaTokenizer converts it. Training one that size offline is not
    possible on our text, so it is built: a small trained model's pieces, then 512 CJK characters and
    their pairs (each pair has one split, so every tokenizer merges it the same way) down to the
    lowest scores. Built once per test cache (transformers' conversion takes a few seconds)."""
    out = CACHE / "tokenizers" / "gemma-262k-v2"
    if (out / "tokenizer.json").is_file():
        return out
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb
    from transformers import AutoTokenizer

    from fixtures.make_fixtures import TRAIN_TEXT

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TRAIN_TEXT.read_text(encoding="utf-8").splitlines() * 4), model_writer=buf,
        model_type="bpe", vocab_size=1200, byte_fallback=True, character_coverage=1.0, minloglevel=2, num_threads=1,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
        unk_piece="<unk>", add_dummy_prefix=False, remove_extra_whitespaces=False, split_digits=True,
        user_defined_symbols=["<mask>", "<start_of_turn>", "<end_of_turn>"])
    proto = pb.ModelProto()
    proto.ParseFromString(buf.getvalue())
    have = {p.piece for p in proto.pieces}
    proto.pieces[4].type = pb.ModelProto.SentencePiece.CONTROL  # <mask>: transformers calls it special
    score = min(p.score for p in proto.pieces) - 1.0
    for i in range(64):
        proto.pieces.add(piece=f"<unused{i}>", score=0.0, type=pb.ModelProto.SentencePiece.CONTROL)
    alphabet = [chr(c) for c in range(0x4E00, 0x4E00 + 1024) if chr(c) not in have][:512]
    extra = alphabet + [a + b for a in alphabet for b in alphabet]
    for piece in extra[:VOCAB_262K - len(proto.pieces)]:
        proto.pieces.add(piece=piece, score=score, type=pb.ModelProto.SentencePiece.NORMAL)
        score -= 1.0
    assert len(proto.pieces) == VOCAB_262K
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "tokenizer.model").write_bytes(proto.SerializeToString())
    (tmp / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GemmaTokenizer"}))
    AutoTokenizer.from_pretrained(str(tmp)).save_pretrained(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _vocab_model(tok: Path, out: Path) -> Path:
    """A one-layer Gemma 3 text model (width 16) around that tokenizer, written without torch: only
    its vocabulary is under test here."""
    from safetensors.numpy import save_file

    config = {"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "vocab_size": VOCAB_262K,
              "hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 1,
              "num_key_value_heads": 1, "head_dim": 16, "query_pre_attn_scalar": 16, "max_position_embeddings": 128,
              "sliding_window": 4, "layer_types": ["sliding_attention"], "rms_norm_eps": 1e-6,
              "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2, "tie_word_embeddings": True}
    rng = np.random.default_rng(0)
    p = "model.layers.0."
    shapes = {"model.embed_tokens.weight": (VOCAB_262K, 16), "model.norm.weight": (16,),
              **{p + n + ".weight": (16,) for n in ("input_layernorm", "post_attention_layernorm",
                                                    "pre_feedforward_layernorm", "post_feedforward_layernorm",
                                                    "self_attn.q_norm", "self_attn.k_norm")},
              **{p + n + ".weight": (16, 16) for n in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                       "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
                                                       "mlp.down_proj")}}
    out.mkdir(parents=True)
    save_file({k: rng.standard_normal(v).astype(np.float32) * 0.1 for k, v in shapes.items()},
              out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config))
    for f in tok.iterdir():
        shutil.copy(f, out / f.name)
    return out


def test_gemma_sized_sentencepiece_vocabulary_both_ways(tmp_path: Path) -> None:
    """262144 SentencePiece pieces HF → GGUF → HF → GGUF: every piece, type and score of the
    tokenizer.model in the GGUF exactly; after the HF round trip every piece and type at its id and
    the scores' order (what tokenization follows: the rebuilt tokenizer.json has merges, not scores;
    exact scores would need the bridge to write a tokenizer.model back); llama.cpp loads the
    vocabulary and tokenizes as transformers does, before and after."""
    from llama_cpp import Llama
    from lmconv import read_model
    from sentencepiece import sentencepiece_model_pb2 as pb
    from transformers import AutoTokenizer

    tok = _gemma_sized_tokenizer()
    src = _vocab_model(tok, tmp_path / "src")
    proto = pb.ModelProto()
    proto.ParseFromString((tok / "tokenizer.model").read_bytes())
    pieces = [p.piece for p in proto.pieces]
    text = TEXT.format(last=pieces[-1])
    want = AutoTokenizer.from_pretrained(str(src))(text).input_ids
    assert VOCAB_262K - 1 in want and len(want) > 10  # the last piece is used

    def llama_ids(path: Path) -> list[int]:
        llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
        try:
            return list(llm.tokenize(text.encode("utf-8"), add_bos=True, special=True))
        finally:
            llm.close()

    first = convert(src, tmp_path / "a.gguf")
    fa = _fields(read_model(first))
    assert fa["tokens"] == pieces
    assert fa["token_type"] == [int(p.type) for p in proto.pieces]
    # user-defined pieces are added tokens to transformers: -1000, as llama.cpp's converter scores them
    scores = [-1000.0 if p.type == pb.ModelProto.SentencePiece.USER_DEFINED else p.score for p in proto.pieces]
    assert np.array_equal(np.asarray(fa["scores"], dtype=np.float32), np.asarray(scores, dtype=np.float32))
    assert llama_ids(first) == want

    back = convert(first, f"{tmp_path / 'back'}/")
    assert AutoTokenizer.from_pretrained(str(back))(text).input_ids == want
    second = convert(back, tmp_path / "b.gguf")
    fb = _fields(read_model(second))
    assert fb["tokens"] == pieces and fb["token_type"] == fa["token_type"]
    # the folder has a tokenizer.model again (the bridge writes one): every score comes back exactly
    assert (back / "tokenizer.model").is_file()
    assert np.asarray(fb["scores"], np.float32).tobytes() == np.asarray(fa["scores"], np.float32).tobytes()
    assert llama_ids(second) == want


# ============================================================================ a quantised source
Q_CONFIG = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 2,
            "num_key_value_heads": 1, "head_dim": 256, "query_pre_attn_scalar": 256, "sliding_window": 4,
            "max_position_embeddings": 1024, "rms_norm_eps": 1e-6, "initializer_range": 0.05}


def test_q4_k_m_gguf_to_hf_is_as_close_to_llama_cpp_as_transformers_own_loader(tmp_path: Path) -> None:
    """A gemma3 q4_k_m GGUF (a K-quant mixture) as people download them → an HF folder: transformers
    on it is at least as close to llama.cpp on the original file as transformers' own GGUF loader on
    that file. The config keeps to what transformers' loader reads (head size 256 = its default
    query_pre_attn_scalar, default local rotary base, no soft-capping), so both can be right."""
    import torch
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM

    src = gemma("gemma3_text", Q_CONFIG, "gemma3-q")
    (tmp_path / "q").mkdir()  # transformers' loader takes a folder and a file name in it
    gguf = convert(src, tmp_path / "q" / "m.gguf", "--quant", "q4_k_m")
    kinds = {t.tensor_type.name for t in GGUFReader(gguf).tensors}
    assert "Q4_K" in kinds and len(kinds - {"F32"}) >= 2, kinds  # a mixture, as llama.cpp's q4_k_m
    ref = llamacpp_logits(gguf, IDS)
    ours = hf_logits(convert(gguf, f"{tmp_path / 'back'}/"), IDS)
    theirs_model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    with torch.no_grad():
        theirs = theirs_model.eval()(torch.tensor([IDS])).logits[0].double().numpy()
    d_ours, d_theirs = rel(ours, ref), rel(theirs, ref)
    assert d_ours <= d_theirs + 1e-6, (d_ours, d_theirs)
    assert d_ours <= 5e-2
