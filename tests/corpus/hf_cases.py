"""Bad Hugging Face model folders: broken config.json and tokenizer files, configs that contradict the weights.

The weights themselves are covered by the safetensors and pytorch cases; here the folder's other files
are what is wrong, so the error must name that file (config.json, tokenizer.json) rather than the folder.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from . import Case, ValidFiles

ROOT = Path(__file__).resolve().parents[2]


def _folder(edit: Callable[[Path], None], fixture: str = "tiny-llama") -> Callable[[Path, ValidFiles], Path]:
    """A copy of a fixture folder, broken by ``edit(folder)``; SRC is the folder."""

    def build(folder: Path, valid: ValidFiles) -> Path:
        model = folder / "model"
        model.mkdir()
        for p in (ROOT / "fixtures" / fixture).iterdir():
            (model / p.name).write_bytes(p.read_bytes())
        edit(model)
        return model

    return build


def _write(name: str, text: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_text(text)


def _config(**changes: object) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        cfg = json.loads((folder / "config.json").read_text())
        cfg.update(changes)
        (folder / "config.json").write_text(json.dumps(cfg))

    return edit


def _tokenizer(fn: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        tok = json.loads((folder / "tokenizer.json").read_text())
        fn(tok)
        (folder / "tokenizer.json").write_text(json.dumps(tok))

    return edit


def _transpose_weight(name: str) -> Callable[[Path], None]:
    """One matrix of model.safetensors stored transposed (same bytes, shape the config contradicts)."""

    def edit(folder: Path) -> None:
        from safetensors.numpy import load_file, save_file

        weights = load_file(str(folder / "model.safetensors"))
        weights[name] = weights[name].T.copy()
        save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})

    return edit


def _unlink_weights(folder: Path) -> None:
    (folder / "model.safetensors").unlink()


CASES: list[Case] = [
    Case("hf", "no-weights", _folder(_unlink_weights), mentions=("without model weights",)),
    Case("hf", "config-not-json", _folder(_write("config.json", '{"architectures": [')), names="config.json"),
    Case("hf", "config-a-list", _folder(_write("config.json", "[1, 2]")), names="config.json"),
    Case("hf", "config-non-utf8", _folder(lambda f: (f / "config.json").write_bytes(b'{"a": "\xff"}')), names="config.json"),
    # what a GGUF writer reads from config.json: each must be checked before it is used
    Case("hf", "heads-a-string-to-gguf", _folder(_config(num_attention_heads="eight")), names="config.json",
         target="old.gguf", inspect=False),  # inspect shows the config; only a layout change uses it
    Case("hf", "zero-heads-to-gguf", _folder(_config(num_attention_heads=0)), names="config.json", target="old.gguf",
         inspect=False),
    Case("hf", "heads-not-dividing-hidden-to-gguf", _folder(_config(num_attention_heads=7)), names="config.json",
         target="old.gguf", inspect=False),
    Case("hf", "kv-heads-not-dividing-heads-to-gguf", _folder(_config(num_key_value_heads=3)), names="config.json",
         target="old.gguf", inspect=False),
    Case("hf", "config-heads-disagree-with-weights-to-gguf",
         _folder(lambda f: _config(num_attention_heads=2 * json.loads((f / "config.json").read_text())["num_attention_heads"])(f)),
         names="config.json", mentions=("disagree",), target="old.gguf", inspect=False),
    Case("hf", "down-proj-transposed-to-gguf", _folder(_transpose_weight("model.layers.1.mlp.down_proj.weight")),
         names="config.json", mentions=("down_proj", "disagree"), target="old.gguf", inspect=False),
    Case("hf", "gpt2-c-fc-transposed-to-gguf", _folder(_transpose_weight("transformer.h.0.mlp.c_fc.weight"), "tiny-gpt2"),
         names="config.json", mentions=("c_fc", "disagree"), target="old.gguf", inspect=False),
    Case("hf", "negative-layers-to-gguf", _folder(_config(num_hidden_layers=-1)), names="config.json", target="old.gguf",
         inspect=False),
    Case("hf", "gpt2-heads-zero-to-gguf", _folder(_config(n_head=0), "tiny-gpt2"), names="config.json",
         target="old.gguf", inspect=False),
    # the tokenizer is parsed only when it is translated (into GGUF)
    Case("hf", "tokenizer-json-not-json-to-gguf", _folder(_write("tokenizer.json", "{\"model\": ")),
         names="tokenizer.json", target="old.gguf", inspect=False),
    Case("hf", "tokenizer-json-unknown-model-to-gguf", _folder(_tokenizer(lambda t: t["model"].update(type="Telepathy"))), code=2,
         names="tokenizer.json", target="old.gguf", inspect=False),
    Case("hf", "tokenizer-json-vocab-a-list-to-gguf", _folder(_tokenizer(lambda t: t["model"].update(vocab=[1, 2]))),
         names="tokenizer.json", target="old.gguf", inspect=False),
    Case("hf", "tokenizer-config-not-json-to-gguf", _folder(_write("tokenizer_config.json", "{")),
         names="tokenizer_config.json", target="old.gguf", inspect=False),
]
