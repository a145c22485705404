"""docs/writing-a-plugin.md documents every hook, the plugin API, and its examples run.

Like datasette's documentation tests: the hook specifications are introspected, so a
hook added to ``lmconv.hookspecs`` (or a parameter added to one) fails here until the
guide has a heading ``### hook_name(param, ...)`` for it with when / what / raise.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from lmconv import errors, hookspecs, registry
from lmconv.formats import Format, ReadOptions, WriteOptions

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "writing-a-plugin.md"
TEXT = DOC.read_text(encoding="utf-8")

BLOCK_RE = re.compile(
    r"<!-- (?P<kind>tutorial-file|tutorial-shell|example-file)(?::\s*(?P<name>\S+))?\s*-->\s*\n"
    r"```[\w-]*\n(?P<body>.*?)^```",
    re.DOTALL | re.MULTILINE,
)


def doc_blocks(text: str = TEXT) -> list[tuple[str, str | None, str]]:
    """The marked code blocks of the guide, in order: (kind, file name or None, content)."""
    return [(m["kind"], m["name"], m["body"]) for m in BLOCK_RE.finditer(text)]


def doc_files(kind: str, text: str = TEXT) -> dict[str, str]:
    """File name → content; several blocks for one file are its consecutive parts (joined by a blank line pair)."""
    parts: dict[str, list[str]] = {}
    for k, name, body in doc_blocks(text):
        if k == kind and name:
            parts.setdefault(name, []).append(body)
    return {name: "\n\n".join(bodies) for name, bodies in parts.items()}


def hookspecs_() -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(fn)
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(fn, "lmconv_spec")
    }


def section(heading: str) -> str:
    """The text under a markdown heading, up to the next heading of the same or a higher level."""
    m = re.search(rf"^(#+) {re.escape(heading)}\s*$", TEXT, re.MULTILINE)
    assert m, f"no heading {heading!r}"
    level = len(m[1])
    rest = TEXT[m.end():]
    nxt = re.search(rf"^#{{1,{level}}} ", rest, re.MULTILINE)
    return rest[: nxt.start()] if nxt else rest


def test_there_are_hooks() -> None:
    assert set(hookspecs_()) >= {"register_formats", "register_quantizers", "register_architectures"}


@pytest.mark.parametrize("hook", sorted(hookspecs_()))
def test_every_hook_is_documented_with_its_signature(hook: str) -> None:
    params = ", ".join(hookspecs_()[hook].parameters)
    heading = f"{hook}({params})"
    assert re.search(rf"^### {re.escape(heading)}\s*$", TEXT, re.MULTILINE), (
        f"docs/writing-a-plugin.md needs a heading '### {heading}'"
    )
    body = section(heading)
    for part in ("**When:**", "**What:**", "**Raise:**"):
        assert part in body, f"the section on {hook} must say {part}"


def _public(cls: type) -> set[str]:
    return {n for n in vars(cls) if not n.startswith("_")}


def test_the_format_api_is_documented() -> None:
    names = _public(Format) | {"self_describing"}
    names |= {f.name for f in dataclasses.fields(ReadOptions)} | {f.name for f in dataclasses.fields(WriteOptions)}
    missing = sorted(n for n in names if f"`{n}" not in TEXT)
    assert not missing, f"docs/writing-a-plugin.md does not mention {missing}"


def test_every_error_class_is_documented() -> None:
    classes = [c.__name__ for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.LmconvError)]
    table = section("Errors: what to raise")
    missing = [c for c in classes if f"`{c}`" not in table]
    assert not missing, f"the errors table lacks {missing}"


def test_plugin_loading_and_the_kit_are_documented() -> None:
    from lmconv import testing

    for needle in ("LMCONV_DISABLE_PLUGINS", "broken", "lmconv plugins", "lmconv.testing", "FormatConformance"):
        assert needle in TEXT, needle
    kit = section("The conformance kit: `lmconv.testing`")
    checks = [n for n in dir(testing.FormatConformance) if n.startswith("test_")]
    missing = [n for n in checks + list(testing.__all__) if f"`{n}" not in kit]
    assert not missing, f"the conformance kit section does not mention {missing}"


def test_tutorial_blocks_are_marked() -> None:
    kinds = [k for k, _, _ in doc_blocks()]
    assert kinds.count("tutorial-shell") >= 4 and kinds.count("tutorial-file") >= 6
    assert set(doc_files("tutorial-file")) == {"pyproject.toml", "lmconv_npz.py", "tests/test_npz.py"}
    assert set(doc_files("example-file")) == {"lmconv_mxfp4.py", "lmconv_opt.py"}


# --- the quantiser and architecture examples run -------------------------------------------------
EXAMPLES = ("lmconv_mxfp4", "lmconv_opt")


def _load_example(name: str, tmp_path: Path) -> ModuleType:
    path = tmp_path / name
    path.write_text(doc_files("example-file")[name], encoding="utf-8")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def with_plugin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """Install a module from the guide as if it were an entry point of a distribution named 'docs'."""

    def install(name: str) -> ModuleType:
        module = _load_example(name, tmp_path)
        real = registry._entry_points
        entry = (module.__name__, lambda: module, module.__name__, "docs", "0")
        monkeypatch.setattr(registry, "_entry_points", lambda: real() + [entry])
        registry.reset_registry()
        return module

    yield install
    registry.reset_registry()
    for name in EXAMPLES:
        sys.modules.pop(name, None)


def _hostile_rows() -> list[np.ndarray]:
    """Data that finds the corners of a block quantiser (as tests/test_verify.py uses for the built-ins)."""
    rng = np.random.default_rng(1)
    rows = [
        rng.standard_normal((8, 1024)),
        rng.laplace(size=(8, 1024)),
        rng.uniform(0, 1, (8, 1024)),  # all positive: the largest weight is the top of each block
        -rng.uniform(0, 1, (8, 1024)),  # all negative
        (rng.standard_normal((8, 32, 32)) * 10 ** rng.uniform(-30, 30, (8, 32, 1))).reshape(8, 1024),  # block scales
        np.where(rng.random((8, 1024)) < 0.01, 50, 1) * rng.standard_normal((8, 1024)),  # outliers
        rng.standard_normal((8, 1024)) * 1e-6,
        rng.choice([-1.0, 1.0, 0.75, -0.5, 0.0, 0.625, 0.875, 0.1875], (8, 1024)),  # levels and midpoints
        np.tile(np.concatenate([[0.999], np.linspace(0.75, 0.99, 31)]), (8, 32)),  # just under a power of two
        np.zeros((8, 1024)),
    ]
    return [x.astype(np.float32) for x in rows]


def test_quantiser_example(with_plugin: Any, tmp_path: Path, tiny_llama: Path) -> None:
    from gguf import GGMLQuantizationType, quants

    from lmconv import convert, read_model
    from lmconv import dtypes as dt
    from lmconv.verify import SLACK, bound_for, verify_models

    from tests.families.support import llamacpp_logits, rel

    module = with_plugin("lmconv_mxfp4.py")
    reg = registry.get_registry()
    info = next(p for p in reg.plugins if p.name == "lmconv_mxfp4")
    assert info.status == "ok" and info.provides == ["quantizer:mxfp4"], info
    assert next(p for p in reg.plugins if p.name == "quantizers").status == "ok"  # the read-only entry gave way
    q = reg.quantizer("MXFP4")
    assert q.can_quantize and q.dtype is module.MXFP4 is dt.get("mxfp4")
    assert (q.dtype.block_size, q.dtype.type_size) == (32, 17)
    assert "mxfp4" in reg.quant_names()
    x = np.random.default_rng(0).standard_normal((6, 64)).astype(np.float32)
    blocks = q.quantize(x)
    assert blocks.dtype == np.uint8 and blocks.shape == q.dtype.storage_shape(x.shape)
    assert not module.dequantize(module.quantize(np.zeros((1, 32), np.float32))).any()

    # ggml's bytes (gguf-py's port of quantize_row_mxfp4_ref), and the stated bound holds on hostile data
    # and is the real worst case, not a loose guess
    bound = bound_for("quant:mxfp4")
    assert bound is q.bound is module.BOUND
    worst = 0.0
    for x in _hostile_rows():
        got = q.quantize(x)
        assert np.array_equal(got, quants.quantize(x, GGMLQuantizationType.MXFP4))
        y = q.dequantize(got).reshape(x.shape).astype(np.float64)
        a = x.astype(np.float64)
        tol = bound.tolerance(np.abs(a)) * SLACK
        err = np.abs(a - y)
        assert np.all(err <= tol), float(np.max(err - tol))
        worst = max(worst, float(np.max(err[tol > 0] / tol[tol > 0], initial=0.0)))
    assert worst > 0.9, worst

    # lmconv verify checks a GGUF quantised by the plugin against that bound, and llama.cpp runs it
    gguf_path = tmp_path / "tiny-mxfp4.gguf"
    convert(tiny_llama, gguf_path, quant="mxfp4")
    written = read_model(gguf_path)
    report = verify_models(read_model(tiny_llama), written)
    assert report.ok, report.summary()
    quantised = [t for t in report.tensors if t.dtype_b == "mxfp4"]
    assert len(quantised) >= 10  # every matrix of the fixture: rows of 64 are two blocks of 32
    for t in quantised:
        assert t.steps == ["quant:mxfp4"] and t.status == "within", (t.name, t.steps, t.status)
        assert t.bound == module.BOUND.describe()
    assert {t.status for t in report.tensors if t.dtype_b != "mxfp4"} == {"exact"}
    from lmconv.verify.logits import forward

    ids = [3, 17, 42, 99, 120, 7]
    got = llamacpp_logits(gguf_path, ids)
    err = rel(got, forward(written, ids, dtype=np.float64))
    assert err < 5e-2, err  # llama.cpp rounds the activations it multiplies MXFP4 with to q8_0 (measured 1.7e-2)


def _tiny_opt(folder: Path) -> Any:
    """A tiny OPT from transformers, fixed seed, with norms and biases that are not their defaults."""
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    config = OPTConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, ffn_dim=48, num_attention_heads=4,
                       max_position_embeddings=32, word_embed_proj_dim=32)
    model = OPTForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape) * 0.3 + (1.0 if "layer_norm.weight" in name else 0.0))
    model.save_pretrained(folder)
    return model


def test_architecture_example(with_plugin: Any, tmp_path: Path) -> None:
    import torch
    from gguf import GGUFReader
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM

    from lmconv import convert, read_model
    from lmconv.errors import InputError
    from lmconv.verify import verify_models
    from lmconv.verify.logits import forward

    with_plugin("lmconv_opt.py")
    reg = registry.get_registry()
    info = next(p for p in reg.plugins if p.name == "lmconv_opt")
    assert info.status == "ok" and info.provides == ["architecture:opt"], info
    src = tmp_path / "opt"
    hf_model = _tiny_opt(src)
    weights = load_file(str(src / "model.safetensors"))
    assert "lm_head.weight" not in weights  # tied: transformers saves the embedding only
    config = json.loads((src / "config.json").read_text())
    ids = [3, 17, 5, 42, 9, 60, 0, 31, 2, 1]
    with torch.no_grad():
        want = hf_model(torch.tensor([ids])).logits[0].double().numpy()

    # HF → GGUF: llama.cpp-style names, q/k/v fused N → 1, keys under opt.*
    gguf_path = tmp_path / "opt.gguf"
    convert(src, gguf_path, extra={"generic": True})  # the tiny OPT has no tokenizer: llama.cpp could not run it
    reader = GGUFReader(gguf_path)
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    p = "model.decoder.layers."
    assert set(tensors) == {"token_embd.weight", "position_embd.weight", "output_norm.weight", "output_norm.bias"} | {
        f"blk.{i}.{n}.{k}" for i in range(2) for k in ("weight", "bias")
        for n in ("attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up", "ffn_down")}
    assert "output.weight" not in tensors  # tied: the embedding serves as the output
    for i in range(2):
        qkv = tensors[f"blk.{i}.attn_qkv.weight"]
        assert qkv.shape == (96, 32)
        assert qkv.tobytes() == np.concatenate([weights[f"{p}{i}.self_attn.{m}_proj.weight"] for m in "qkv"]).tobytes()
        assert tensors[f"blk.{i}.attn_qkv.bias"].tobytes() == np.concatenate(
            [weights[f"{p}{i}.self_attn.{m}_proj.bias"] for m in "qkv"]).tobytes()
    assert tensors["position_embd.weight"].tobytes() == weights["model.decoder.embed_positions.weight"].tobytes()
    kv = {k: f.contents() for k, f in reader.fields.items()}
    assert kv["general.architecture"] == "opt"
    assert {k: kv[f"opt.{k}"] for k in ("vocab_size", "context_length", "embedding_length", "block_count",
                                         "feed_forward_length", "attention.head_count")} == {
        "vocab_size": 64, "context_length": 32, "embedding_length": 32, "block_count": 2, "feed_forward_length": 48,
        "attention.head_count": 4}
    # a GGUF from another tool has no lmconv.hf_config: the config comes from the keys and config_base
    derived = reg.architectures["opt"].layout("gguf").config_from_meta(kv)
    assert {k: derived[k] for k in ("architectures", "model_type", "hidden_size", "ffn_dim", "num_hidden_layers",
                                    "num_attention_heads", "max_position_embeddings", "vocab_size")} == {
        k: config[k] for k in ("architectures", "model_type", "hidden_size", "ffn_dim", "num_hidden_layers",
                               "num_attention_heads", "max_position_embeddings", "vocab_size")}

    # GGUF → HF: the qkv split 1 → N, every tensor bit-exact, and transformers runs it
    back = tmp_path / "back"
    convert(gguf_path, f"{back}/")
    again = load_file(str(back / "model.safetensors"))
    assert set(again) == set(weights)
    assert all(again[n].dtype == a.dtype and again[n].tobytes() == a.tobytes() for n, a in weights.items())
    assert json.loads((back / "config.json").read_text()) == config
    reloaded = AutoModelForCausalLM.from_pretrained(back).eval()
    with torch.no_grad():
        got = reloaded(torch.tensor([ids])).logits[0].double().numpy()
    assert np.array_equal(got, want)

    # GGUF → HF → GGUF puts the stored tensors back (Derivation)
    gguf_again = tmp_path / "again.gguf"
    convert(back, gguf_again, extra={"generic": True})
    assert {t.name: np.array(t.data).tobytes() for t in GGUFReader(gguf_again).tensors} == {
        n: a.tobytes() for n, a in tensors.items()}

    # verify --logits runs the plugin's forward pass on both sides; in float64 it is transformers' OPT
    report = verify_models(read_model(src), read_model(gguf_path), logits=True)
    assert report.ok, report.summary()
    assert report.logits is not None and report.logits["rel_max_diff"] < 1e-4
    ours = forward(read_model(src), ids, dtype=np.float64)
    assert ours.shape == want.shape
    assert np.max(np.abs(ours - want)) <= 1e-4 * np.max(np.abs(want))

    # what the plugin does not implement is refused in one line
    arch = reg.architecture_for(config)
    with pytest.raises(InputError, match="pre-LayerNorm"):
        arch.check_config({**config, "do_layer_norm_before": False}, "config.json")
    with pytest.raises(InputError, match="word_embed_proj_dim"):
        arch.check_config({**config, "word_embed_proj_dim": 16}, "config.json")
