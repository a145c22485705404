"""A Hugging Face model folder: config.json, tokenizer files and weights.

Weights are read from ``model.safetensors`` (or its sharded index) and, failing
that, from ``pytorch_model.bin`` (or its index). Written folders always hold
safetensors, sharded at ``--max-shard-size`` (default 5GB, as transformers did).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmconv.companions import CONFIG_FILE, attach_companions, companion_files
from lmconv.errors import InputError
from lmconv.formats import Format, ReadOptions, WriteOptions
from lmconv.hookspecs import hookimpl
from lmconv.ir import Model

from lmconv.units import parse_size

from .safetensors_format import read_safetensors, write_sharded

WEIGHT_CANDIDATES = (
    "model.safetensors.index.json", "model.safetensors",
    "pytorch_model.bin.index.json", "pytorch_model.bin",
)
DEFAULT_SHARD = "5GB"


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

    def sniff(self, path: Path) -> bool:
        return path.is_dir() and ((path / CONFIG_FILE).is_file() or _weights_file(path) is not None)

    def read(self, path: Path, options: ReadOptions) -> Model:
        weights = _weights_file(path)
        if weights is None:
            raise InputError("is a folder without model weights (model.safetensors or pytorch_model.bin)", path=path)
        if weights.name.startswith("pytorch_model"):
            from .pytorch_format import read_pytorch

            model = read_pytorch(weights)
        else:
            model = read_safetensors(weights)
        model.source, model.format = str(path), "hf"
        return attach_companions(model, path, config_path=options.config_path)

    def output_paths(self, path: Path, options: WriteOptions) -> list[Path]:
        return [path]

    def write(self, model: Model, path: Path, options: WriteOptions) -> list[Path]:
        path.mkdir()
        for name, data in companion_files(model).items():
            (path / name).write_bytes(data)
        shard = options.extra.get("max_shard_size") or DEFAULT_SHARD
        write_sharded(model, path, "model", parse_size(shard, option='--max-shard-size'), options)
        return [path]


@hookimpl
def register_formats(register: Any) -> None:
    register(HFDirectoryFormat())
