"""The files that travel with weights: config.json, generation_config.json, tokenizer files.

A lone weights file picks these up from its folder, and a lone weights file we
write gets them written beside it (when they are not there already), so that
reading and writing are symmetric and nothing is lost on the way. Files are kept
verbatim: what a user had is what they get back, byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import InputError, OutputError
from .ir import Model, Tokenizer
from .tokenizer_files import equivalent_tokenizers, tokenizer_files

TOKENIZER_FILES: tuple[str, ...] = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json",
)
EXTRA_FILES: tuple[str, ...] = ("generation_config.json",)
CONFIG_FILE = "config.json"
_MAX_COMPANION = 256 * 1024 * 1024


def _read_small(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > _MAX_COMPANION:
            raise InputError(f"is {size} bytes, too large for a companion file", path=path)
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", path=path) from None


def parse_config(raw: bytes, path: Path) -> dict[str, Any]:
    try:
        config = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"is not valid JSON: {exc}", path=path) from None
    if not isinstance(config, dict):
        raise InputError("is not a JSON object", path=path)
    return config


def attach_companions(model: Model, folder: Path, *, config_path: Path | None = None) -> Model:
    """Fill in what the weights file lacked from ``folder`` (and ``--config``): config, tokenizer, extras."""
    if config_path is not None:
        raw = _read_small(config_path)
        model.config = parse_config(raw, config_path)
        model.config_source = str(config_path)
        model.extra_files[CONFIG_FILE] = raw
    elif not model.config and (folder / CONFIG_FILE).is_file():
        raw = _read_small(folder / CONFIG_FILE)
        model.config = parse_config(raw, folder / CONFIG_FILE)
        model.config_source = str(folder / CONFIG_FILE)
        model.extra_files[CONFIG_FILE] = raw
    if not model.tokenizer:
        files = {n: _read_small(folder / n) for n in TOKENIZER_FILES if (folder / n).is_file()}
        if files:
            model.tokenizer = Tokenizer(files=files)
    for name in EXTRA_FILES:
        if name not in model.extra_files and (folder / name).is_file():
            model.extra_files[name] = _read_small(folder / name)
    return model


def attach_tokenizer(model: Model, path: Path) -> Model:
    """``--tokenizer PATH``: the tokenizer files of a folder, or one tokenizer file, replace the model's."""
    if path.is_dir():
        files = {n: _read_small(path / n) for n in TOKENIZER_FILES if (path / n).is_file()}
        if not files:
            raise InputError(f"holds none of the tokenizer files ({', '.join(TOKENIZER_FILES[:3])} …)", path=path)
    elif path.is_file():
        if path.name not in TOKENIZER_FILES:
            raise InputError(f"is not a tokenizer file lmconv knows ({', '.join(TOKENIZER_FILES)})", path=path)
        files = {path.name: _read_small(path)}
    else:
        raise InputError("no such file or directory", path=path)
    model.tokenizer = Tokenizer(files=files)
    return model


def config_bytes(model: Model) -> bytes | None:
    """config.json as the source had it when unchanged, else freshly serialised."""
    if not model.config:
        return None
    raw = model.extra_files.get(CONFIG_FILE)
    if raw is not None:
        try:
            if json.loads(raw) == model.config:
                return raw
        except ValueError:
            pass
    return (json.dumps(model.config, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def companion_files(model: Model) -> dict[str, bytes]:
    """Every companion file of ``model`` by name (config, tokenizer, extras)."""
    out: dict[str, bytes] = {}
    cfg = config_bytes(model)
    if cfg is not None:
        out[CONFIG_FILE] = cfg
    for name in EXTRA_FILES:
        if name in model.extra_files:
            out[name] = model.extra_files[name]
    out.update(tokenizer_files(model.tokenizer))
    return out


def _same_content(path: Path, data: bytes) -> bool:
    """Byte-equal, or for JSON files equal as JSON (key order and indentation do not matter)."""
    try:
        existing = path.read_bytes()
    except OSError:
        return False
    if existing == data:
        return True
    if path.suffix == ".json":
        try:
            return bool(json.loads(existing) == json.loads(data))
        except ValueError:
            return False
    return False


def write_companions(model: Model, staging_dir: Path, final_dir: Path, *, force: bool) -> list[Path]:
    """Stage the companion files that are missing or different in ``final_dir``.

    An identical file already there is left alone, and so are tokenizer files that describe the
    same tokenizer as ours (a tokenizer rebuilt from GGUF fields spells its regexes its own way);
    a real difference needs ``--force``.
    """
    produced = []
    files = companion_files(model)
    ours = {n: files[n] for n in TOKENIZER_FILES if n in files}
    theirs = {n: _read_small(final_dir / n) for n in TOKENIZER_FILES if (final_dir / n).is_file()}
    if ours and theirs and ours != theirs and equivalent_tokenizers(theirs, ours, model.config):
        files = {n: d for n, d in files.items() if n not in ours}
    for name, data in files.items():
        final = final_dir / name
        if final.is_file():
            if _same_content(final, data):
                continue
            if not force:
                raise OutputError("exists with different content; pass --force to replace it (or --no-companions)", path=final)
        path = staging_dir / name
        path.write_bytes(data)
        produced.append(path)
    return produced
