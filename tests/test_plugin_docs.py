"""docs/writing-a-plugin.md documents every hook, the plugin API, and its examples run.

Like datasette's documentation tests: the hook specifications are introspected, so a
hook added to ``lmconv.hookspecs`` (or a parameter added to one) fails here until the
guide has a heading ``### hook_name(param, ...)`` for it with when / what / raise.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
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
    assert kinds.count("tutorial-shell") >= 4 and kinds.count("tutorial-file") >= 5
    assert set(doc_files("tutorial-file")) == {"pyproject.toml", "lmconv_npz.py", "tests/test_npz.py"}
    assert set(doc_files("example-file")) == {"lmconv_iq4nl.py", "lmconv_qwen3.py"}


# --- the quantiser and architecture examples run -------------------------------------------------
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
    for name in ("lmconv_iq4nl", "lmconv_qwen3"):
        sys.modules.pop(name, None)


def test_quantiser_example(with_plugin: Any) -> None:
    module = with_plugin("lmconv_iq4nl.py")
    reg = registry.get_registry()
    info = next(p for p in reg.plugins if p.name == "lmconv_iq4nl")
    assert info.status == "ok" and info.provides == ["quantizer:iq4_nl"], info
    q = reg.quantizer("IQ4_NL")
    x = np.random.default_rng(0).standard_normal((6, 64)).astype(np.float32)
    blocks = q.quantize(x)
    assert blocks.dtype == np.uint8 and blocks.shape == q.dtype.storage_shape(x.shape)
    y = q.dequantize(blocks)
    rel = float(np.sqrt(np.mean((y - x) ** 2) / np.mean(x**2)))
    assert rel < 0.12, f"IQ4_NL relative RMS error {rel:.3f}"
    assert not module.dequantize(module.quantize(np.zeros((1, 32), np.float32))).any()


def _tiny_qwen3() -> Any:
    from lmconv.ir import Model, tensor_from_array

    config = {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 64, "hidden_size": 32,
        "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 16, "max_position_embeddings": 128, "rms_norm_eps": 1e-06, "rope_theta": 1000000,
        "tie_word_embeddings": True, "hidden_act": "silu",
    }
    shapes = {"model.embed_tokens.weight": (64, 32), "model.norm.weight": (32,)}
    for i in range(2):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (32,), p + "post_attention_layernorm.weight": (32,),
            p + "self_attn.q_proj.weight": (64, 32), p + "self_attn.k_proj.weight": (32, 32),
            p + "self_attn.v_proj.weight": (32, 32), p + "self_attn.o_proj.weight": (32, 64),
            p + "self_attn.q_norm.weight": (16,), p + "self_attn.k_norm.weight": (16,),
            p + "mlp.gate_proj.weight": (48, 32), p + "mlp.up_proj.weight": (48, 32),
            p + "mlp.down_proj.weight": (32, 48),
        })
    model = Model(config=config)
    for k, (name, shape) in enumerate(shapes.items()):
        arr = np.random.default_rng(k).standard_normal(shape).astype(np.float32)
        tied = ("lm_head.weight",) if name == "model.embed_tokens.weight" else ()
        model.add(tensor_from_array(name, arr, aliases=tied))
    return model


def test_architecture_example(with_plugin: Any, tmp_path: Path) -> None:
    from gguf import GGUFReader

    from lmconv import convert, read_model
    from lmconv.testing import assert_same, write_model

    with_plugin("lmconv_qwen3.py")
    model = _tiny_qwen3()
    src = tmp_path / "src" / "model.safetensors"
    write_model(model, src, "safetensors")
    gguf_path = tmp_path / "qwen3.gguf"
    convert(src, gguf_path)
    reader = GGUFReader(gguf_path)
    names = {t.name for t in reader.tensors}
    assert {"token_embd.weight", "blk.1.attn_q_norm.weight", "blk.0.ffn_down.weight", "output_norm.weight"} <= names
    assert "output.weight" not in names  # tied: llama.cpp uses token_embd
    kv = {k: f.contents() for k, f in reader.fields.items() if k.startswith("qwen3.")}
    assert kv["qwen3.attention.key_length"] == 16 and kv["qwen3.rope.freq_base"] == 1e6
    back = tmp_path / "back"
    convert(gguf_path, f"{back}/")
    again = read_model(back)
    assert_same(model, again, list(model.tensors), what="HF → GGUF → HF")  # a tied lm_head is implied, as in HF
    assert again.config == model.config
