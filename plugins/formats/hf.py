"""A Hugging Face model folder: config.json, tokenizer files and weights.

Weights are read from ``model.safetensors`` (or its sharded index) and, failing
that, from ``pytorch_model.bin`` (or its index). Written folders always hold
safetensors, sharded at ``--max-shard-size`` (default 5GB, as transformers did).
The weights files themselves are the safetensors and pytorch formats' business: this
plugin asks the registry for them, so disabling one of those plugins disables them here too.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

from lmconv.companions import CONFIG_FILE, attach_companions, companion_files
from lmconv.errors import InputError, MissingDependencyError, UsageError
from lmconv.formats import Format, ReadOptions, WriteOptions
from lmconv.hookspecs import hookimpl
from lmconv.ir import Model
from lmconv.options import GENERIC
from lmconv.registry import get_registry
from lmconv.sharding import DEFAULT_MAX_SHARD, MAX_SHARD_SIZE
from lmconv.units import parse_size

#: ``org/name`` or ``org/name@revision``: a Hugging Face hub id
HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<rev>[\w./-]+))?$")
WEIGHT_CANDIDATES = (
    "model.safetensors.index.json", "model.safetensors",
    "pytorch_model.bin.index.json", "pytorch_model.bin",
)


def _weights_file(folder: Path) -> Path | None:
    for name in WEIGHT_CANDIDATES:
        if (folder / name).is_file():
            return folder / name
    singles = sorted(folder.glob("*.safetensors"))
    return singles[0] if len(singles) == 1 else None


class HFDirectoryFormat(Format):
    name = "hf"
    extensions = ()
    description = "Hugging Face model folder (config.json, tokenizer files, safetensors weights)"
    is_directory = True
    self_describing = True
    sniff_order = 100  # any folder with a config.json: after the formats whose folders say more (TF checkpoints)

    def sniff(self, path: Path) -> bool:
        return path.is_dir() and ((path / CONFIG_FILE).is_file() or _weights_file(path) is not None)

    def read(self, path: Path, options: ReadOptions) -> Model:
        weights = _weights_file(path)
        if weights is None:
            raise InputError("is a folder without model weights (model.safetensors or pytorch_model.bin)", path=path)
        fmt = _weights_format("pytorch" if weights.name.startswith("pytorch_model") else "safetensors", path)
        model = fmt.read(weights, dataclasses.replace(options, config_path=None))
        model.source, model.format = str(path), "hf"
        return attach_companions(model, path, config_path=options.config_path)

    def resolve(self, spec: str) -> Path | None:
        """A hub id through huggingface_hub: its cache (``HF_HOME``/``HF_HUB_CACHE``, revisions,
        ``HF_HUB_OFFLINE``), downloading as huggingface_hub does when it may."""
        m = HUB_ID.match(spec)
        if m is None:
            return None
        try:
            from huggingface_hub import snapshot_download  # optional: lmconv[hub]
        except ImportError:
            raise MissingDependencyError("a model given by its hub id needs huggingface_hub: pip install 'lmconv[hub]'",
                                         path=spec) from None
        from huggingface_hub import constants

        try:
            return Path(snapshot_download(m["repo"], revision=m["rev"]))
        except (OSError, ValueError) as exc:  # huggingface_hub's not-found, offline and HTTP errors are OSErrors
            cache = constants.HF_HUB_CACHE
            if constants.HF_HUB_OFFLINE:
                raise InputError(f"is not in the Hugging Face cache at {cache} (HF_HUB_OFFLINE is set)", path=spec) from None
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise InputError(f"is neither in the Hugging Face cache at {cache} nor to be had from the hub ({first})",
                             path=spec) from None

    def output_paths(self, path: Path, options: WriteOptions) -> list[Path]:
        return [path]

    def write(self, model: Model, path: Path, options: WriteOptions) -> list[Path]:
        unknown = model.metadata.get("unknown_architecture")
        if isinstance(unknown, dict) and not model.config and not options.extra.get("generic"):
            # A model read from a format with its own names (GGUF) that no family could translate: its
            # tensors carry that format's names, so transformers could not load the folder.
            raise InputError(f"is a {unknown.get('format')} model of architecture {unknown.get('name')!r}, which no "
                             f"installed family knows (known: {', '.join(unknown.get('known') or []) or 'none'}); "
                             "transformers could not load the folder: pass --generic to write its tensors as "
                             "they are named", path=model.source or None)
        path.mkdir()
        for name, data in companion_files(model).items():
            (path / name).write_bytes(data)
        shard = parse_size(options.extra.get("max_shard_size") or DEFAULT_MAX_SHARD, option="--max-shard-size")
        weights = dataclasses.replace(options, extra={**options.extra, "max_shard_size": shard})
        _weights_format("safetensors", path).write(model, path / "model.safetensors", weights)
        return [path]


def _weights_format(name: str, path: Path) -> Format:
    fmt = get_registry().formats.get(name)
    if fmt is None:
        raise UsageError(f"reading and writing the weights of a model folder needs the {name} plugin, which is disabled",
                         path=path)
    return fmt


@hookimpl
def register_formats(register: Any) -> None:
    register(HFDirectoryFormat())


@hookimpl
def register_options(register: Any) -> None:
    register(MAX_SHARD_SIZE)
    register(GENERIC)
