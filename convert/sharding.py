"""Sharded models as transformers lays them out: ``NAME-0000i-of-0000n.EXT`` files and an index
JSON whose ``weight_map`` names the shard of every tensor. Shared by every format that shards
(safetensors, PyTorch, TensorFlow), so that none of them imports another.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from .errors import InputError
from .ir import Tensor
from .options import Option
from .units import parse_size

#: what transformers used for years; the shard size of a target named like an index
DEFAULT_MAX_SHARD = "5GB"


def read_shard_index(path: Path, kind: str) -> dict[str, str]:
    """The ``weight_map`` of a sharded model's index: tensor name → shard file, each shard inside
    the index's folder and present. ``kind`` names the format in messages."""
    try:
        index = json.loads(path.read_text("utf-8"))
        weight_map = index["weight_map"]
        assert isinstance(weight_map, dict) and all(isinstance(v, str) for v in weight_map.values())
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        raise InputError(f"is not a valid {kind} index (needs a 'weight_map' object of tensor name → shard file)",
                         path=path) from None
    for shard in dict.fromkeys(weight_map.values()):
        if "/" in shard or "\\" in shard or shard in ("", ".", ".."):
            raise InputError(f"index names a shard outside its folder: {shard!r}", path=path)
        if not (path.parent / shard).is_file():
            raise InputError(f"index names shard {shard} which does not exist", path=path)
    return weight_map


def shard_tensors(tensors: Sequence[Tensor], max_bytes: int) -> list[list[Tensor]]:
    """Greedy, order-keeping split into shards of at most ``max_bytes`` (a bigger tensor gets its own)."""
    shards: list[list[Tensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def shard_name(stem: str, i: int, n: int, ext: str) -> str:
    """transformers' shard file name: ``model-00001-of-00003.safetensors`` (``i`` counts from 1)."""
    return f"{stem}-{i:05d}-of-{n:05d}{ext}"


def write_index(path: Path, groups: Sequence[Sequence[Tensor]], names: Sequence[str]) -> Path:
    """The index JSON of shards ``names`` holding ``groups``; a tie maps to the shard of its tensor."""
    weight_map: dict[str, str] = {}
    for group, name in zip(groups, names):
        for t in group:
            weight_map[t.name] = name
            for a in t.aliases:
                weight_map.setdefault(a, name)
    total = sum(t.nbytes for g in groups for t in g)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    path.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return path


def _parse_max_shard(value: str) -> int:
    return parse_size(value, option="--max-shard-size")


#: ``--max-shard-size``: every format that shards registers this one option (identical declarations merge)
MAX_SHARD_SIZE = Option("--max-shard-size", str, "Shard safetensors, PyTorch and TensorFlow output at this size (e.g. 5GB).",
                        metavar="SIZE", parse=_parse_max_shard)
