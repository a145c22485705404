"""PyTorch checkpoints: ``.pt``/``.pth``/``.bin``, zip or legacy, single or sharded.

Loading always goes through ``torch.load(weights_only=True)``: the restricted
unpickler refuses any global that is not a tensor building block, so a checkpoint
that tries to run code is refused before anything runs. Zip checkpoints are also
memory-mapped (``mmap=True``), so a tensor's bytes are read only when it is
loaded. torch is imported only when a PyTorch file is actually read or written.
"""

from __future__ import annotations

import io
import json
import pickle
import pickletools
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lmconv import dtypes as dt
from lmconv.errors import InputError, MissingDependencyError, UnsafeInputError, UsageError
from lmconv.formats import Format, ReadOptions, WriteOptions
from lmconv.hookspecs import hookimpl
from lmconv.ir import Model, Tensor, group_ties
from lmconv.units import parse_size

from .safetensors_format import DEFAULT_MAX_SHARD, shard_tensors

INDEX_SUFFIX = ".bin.index.json"
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "params", "weights")
CONFIG_KEYS = ("config", "model_config", "hf_config")
# The legacy (pre-1.6) format starts with a pickled magic number.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_HEAD = pickle.dumps(_LEGACY_MAGIC, protocol=2)
# A legacy file holds pickles in a row: magic number, protocol version, sys info, the object.
_LEGACY_PICKLES = 4


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise MissingDependencyError("reading or writing PyTorch checkpoints needs torch: pip install 'lmconv[torch]'") from None
    return torch


def _is_zip_checkpoint(path: Path) -> bool:
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("data.pkl") for n in zf.namelist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def _is_legacy_checkpoint(path: Path) -> bool:
    """Compare raw bytes with the pickled magic number: sniffing never unpickles anything."""
    try:
        with open(path, "rb") as fh:
            return fh.read(len(_LEGACY_HEAD)) == _LEGACY_HEAD
    except OSError:
        return False


def _to_numpy(t: Any) -> np.ndarray:
    """A CPU torch tensor as numpy without a copy when possible; bf16/fp8 via ml_dtypes views."""
    torch = _torch()
    t = t.detach()
    if not t.is_contiguous():
        t = t.contiguous()
    name = str(t.dtype).removeprefix("torch.")
    d = dt.from_torch(name)
    if t.dtype in (torch.bfloat16,):
        return t.view(torch.int16).numpy().view(d.numpy)
    if name.startswith("float8"):
        return t.view(torch.uint8).numpy().view(d.numpy)
    return t.numpy()


def _flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    torch = _torch()
    out: dict[str, Any] = {}
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, torch.Tensor):
            out[key] = v
        elif isinstance(v, Mapping) and v and all(isinstance(x, str) for x in v):
            out.update(_flatten(v, key + "."))
    return out


def _unwrap(obj: Any, path: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Find the state dict in the usual wrappers; return it and an embedded config if any."""
    torch = _torch()
    if not isinstance(obj, Mapping):
        raise InputError(f"holds a {type(obj).__name__}, not a state dict", path=path)
    config = None
    for key in CONFIG_KEYS:
        if isinstance(obj.get(key), Mapping):
            config = dict(obj[key])
    for key in WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
            return _flatten(inner), config
    return _flatten(obj), config


def _pickles_complete(path: Path) -> bool:
    """Whether the checkpoint's pickles all run to their STOP opcode.

    Parsed with ``pickletools.genops``, which only decodes opcodes and never builds
    or calls anything. The restricted unpickler stops at the first global it does
    not allow, and a file cut inside a GLOBAL opcode names a global that does not
    exist (``collections.OrderedD``): without this check a truncated file would be
    reported as hostile instead of as truncated.
    """
    try:
        if _is_zip_checkpoint(path):
            with zipfile.ZipFile(path) as zf:
                name = next(n for n in zf.namelist() if n.endswith("data.pkl"))
                stream: Any = io.BytesIO(zf.read(name))
            count = 1
        else:
            stream = open(path, "rb")
            count = _LEGACY_PICKLES
        with stream:
            for _ in range(count):
                for _op in pickletools.genops(stream):
                    pass
    except (ValueError, OSError, EOFError, StopIteration, zipfile.BadZipFile, NotImplementedError):
        return False
    return True


def _refused_global(message: str) -> str:
    """The global a refused pickle asked for, from torch's message, for a short one-line reason."""
    match = re.search(r"GLOBAL ([\w.]+)", message)
    if match:
        return f"it would call {match.group(1)}"
    first = message.strip().split("\n")[0]
    return first.split(". ")[0][:160]


def _load(path: Path) -> Any:
    torch = _torch()
    zipped = _is_zip_checkpoint(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except pickle.UnpicklingError as exc:
        if not _pickles_complete(path):
            raise InputError("is not a readable PyTorch checkpoint (truncated or corrupt: the pickle stops early)", path=path) from None
        raise UnsafeInputError(f"refused: the pickle wants to run code ({_refused_global(str(exc))}); lmconv never runs code from a checkpoint", path=path) from None
    except Exception as exc:
        # torch.load on damaged bytes can fail with almost anything (EOFError, IndexError from a
        # legacy file cut after its magic number, RuntimeError from the zip reader, struct.error …):
        # all of them mean the same to a user, a checkpoint that cannot be read.
        msg = str(exc).split("\n")[0][:200] or type(exc).__name__
        raise InputError(f"is not a readable PyTorch checkpoint (truncated or corrupt: {msg})", path=path) from None


def _add_state_dict(model: Model, state: dict[str, Any], path: Path) -> None:
    torch = _torch()
    keys = []
    for name, t in state.items():
        if t.device.type != "cpu":
            t = t.cpu()
        try:
            storage_key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        except RuntimeError:
            storage_key = id(t)
        keys.append((name, storage_key))
        state[name] = t
    for first, others in group_ties(keys).items():
        t = state[first]
        name = str(t.dtype).removeprefix("torch.")
        try:
            d = dt.from_torch(name)
        except KeyError:
            raise InputError(f"tensor {first!r} has dtype {name}, which lmconv does not support", path=path) from None
        model.add(Tensor(first, tuple(t.shape), d, (lambda t=t: _to_numpy(t)), aliases=tuple(others), origin=str(path)))
    del torch


def read_pytorch(path: Path) -> Model:
    model = Model(source=str(path), format="pytorch")
    if path.name.endswith(INDEX_SUFFIX):
        try:
            weight_map = json.loads(path.read_text("utf-8"))["weight_map"]
            assert isinstance(weight_map, dict)
        except (OSError, ValueError, KeyError, TypeError, AssertionError):
            raise InputError("is not a valid PyTorch index (needs a 'weight_map' object)", path=path) from None
        shards = []
        for shard in weight_map.values():
            if shard not in shards:
                shards.append(shard)
        for shard in shards:
            if "/" in shard or shard in ("", ".", ".."):
                raise InputError(f"index names a shard outside its folder: {shard!r}", path=path)
            spath = path.parent / shard
            if not spath.is_file():
                raise InputError(f"index names shard {shard} which does not exist", path=path)
            state, _ = _unwrap(_load(spath), spath)
            _add_state_dict(model, state, spath)
        return model
    state, config = _unwrap(_load(path), path)
    if config:
        model.config = config
    _add_state_dict(model, state, path)
    return model


def _save_state(tensors: list[Tensor], path: Path) -> None:
    """``torch.save`` a plain state dict of ``tensors``; an alias is the same torch tensor (shared storage)."""
    torch = _torch()
    state: dict[str, Any] = {}
    for t in tensors:
        arr = t.load()
        if not (arr.flags.writeable and arr.flags.c_contiguous):
            # torch.from_numpy shares memory and warns on stderr (past --quiet) about a read-only
            # buffer such as a memory-mapped source, whatever the dtype: copy this one tensor.
            arr = np.array(arr, copy=True, order="C")
        if t.dtype.name == "bf16":
            tt = torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
        elif t.dtype.name.startswith("f8_"):
            tt = torch.from_numpy(arr.view(np.uint8)).view(getattr(torch, t.dtype.torch))
        else:
            tt = torch.from_numpy(arr)
        state[t.name] = tt
        for alias in t.aliases:
            state[alias] = tt
    try:
        with open(path, "wb") as fh:
            torch.save(state, fh)
    except RuntimeError as exc:
        # torch's zip writer reports a failed write (disk full, file-size limit) as a RuntimeError.
        # Through a Python file object the OSError underneath survives as the context: raise that,
        # so that the pipeline reports an output error (exit 5) instead of an internal one.
        if isinstance(exc.__context__, OSError):
            raise exc.__context__ from None
        raise


def write_pytorch(model: Model, path: Path) -> None:
    """A plain state dict (ties saved as shared storage), loadable with ``weights_only=True``."""
    _save_state(list(model), path)


def write_pytorch_sharded(model: Model, folder: Path, stem: str, max_bytes: int, options: WriteOptions) -> list[Path]:
    """``{stem}-0000i-of-0000n.bin`` + ``{stem}.bin.index.json``, as transformers names them.

    Always writes an index (the caller asked for one, by name or by --max-shard-size),
    even when everything fits in one shard. A tie stays inside the shard of its tensor.
    """
    tensors = list(model)
    groups = shard_tensors(tensors, max_bytes)
    produced: list[Path] = []
    weight_map: dict[str, str] = {}
    for i, group in enumerate(groups, 1):
        name = f"{stem}-{i:05d}-of-{len(groups):05d}.bin"
        _save_state(group, folder / name)
        produced.append(folder / name)
        for t in group:
            for n in (t.name, *t.aliases):
                weight_map[n] = name
        options.progress(sum(t.nbytes for t in group))
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors)}, "weight_map": weight_map}
    index_path = folder / f"{stem}{INDEX_SUFFIX}"
    index_path.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return produced + [index_path]


class PyTorchFormat(Format):
    name = "pytorch"
    extensions = (".pt", ".pth", ".bin", INDEX_SUFFIX)
    description = "PyTorch checkpoints (zip or legacy, sharded with an index); loaded with weights_only=True"

    def sniff(self, path: Path) -> bool:
        if path.name.endswith(INDEX_SUFFIX):
            return path.is_file()
        return path.is_file() and (_is_zip_checkpoint(path) or _is_legacy_checkpoint(path))

    def read(self, path: Path, options: ReadOptions) -> Model:
        return read_pytorch(path)

    def write(self, model: Model, path: Path, options: WriteOptions) -> list[Path]:
        # A target named like an index, or --max-shard-size, means sharded output; writing one
        # pickle under an index name would give a file that no reader (lmconv's own included) accepts.
        max_shard = options.extra.get("max_shard_size")
        if path.name.endswith(INDEX_SUFFIX) or max_shard:
            if path.name.endswith(INDEX_SUFFIX):
                stem = path.name[: -len(INDEX_SUFFIX)]
            elif path.name.endswith(".bin"):
                stem = path.name[: -len(".bin")]
            else:
                raise UsageError(f"{path.name}: sharded PyTorch output is named like pytorch_model.bin (shards NAME-00001-of-0000N.bin and NAME.bin.index.json)")
            size = parse_size(max_shard or DEFAULT_MAX_SHARD, option="--max-shard-size")
            return write_pytorch_sharded(model, path.parent, stem, size, options)
        write_pytorch(model, path)
        options.progress(model.nbytes)
        return [path]


@hookimpl
def register_formats(register: Any) -> None:
    register(PyTorchFormat())
