"""PyTorch checkpoints: ``.pt``/``.pth``/``.bin``, zip or legacy, single or sharded.

Loading always goes through ``torch.load(weights_only=True)``: the restricted
unpickler refuses any global that is not a tensor building block, so a checkpoint
that tries to run code is refused before anything runs. Zip checkpoints are also
memory-mapped (``mmap=True``), so a tensor's bytes are read only when it is
loaded. torch is imported only when a PyTorch file is actually read or written.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from lmconv import dtypes as dt
from lmconv.errors import (
    InputError,
    UsageError,
)
from lmconv.formats import Format, ReadOptions, WriteOptions
from lmconv.hookspecs import hookimpl
from lmconv.ir import Model, Tensor, group_ties
from lmconv.sharding import DEFAULT_MAX_SHARD, MAX_SHARD_SIZE, read_shard_index, shard_name, shard_tensors, write_index
from lmconv.units import parse_size

from .scan import (
    crc_checked,
    is_legacy_checkpoint,
    is_zip_checkpoint,
    load_checked,
    torch_module,
)

INDEX_SUFFIX = ".bin.index.json"
# torch's name (``str(t.dtype)`` without ``torch.``) of each lmconv dtype
TORCH_OF_DTYPE = {"f64": "float64", "f32": "float32", "f16": "float16", "bf16": "bfloat16", "f8_e4m3": "float8_e4m3fn",
                  "f8_e5m2": "float8_e5m2", "i64": "int64", "i32": "int32", "i16": "int16", "i8": "int8",
                  "u64": "uint64", "u32": "uint32", "u16": "uint16", "u8": "uint8", "bool": "bool"}
DTYPE_OF_TORCH = {v: k for k, v in TORCH_OF_DTYPE.items()}
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "params", "weights")
CONFIG_KEYS = ("config", "model_config", "hf_config")


def _to_numpy(t: Any) -> np.ndarray:
    """A CPU torch tensor as numpy without a copy when possible; bf16/fp8 via ml_dtypes views."""
    torch = torch_module()
    t = t.detach()
    if not t.is_contiguous():
        t = t.contiguous()
    name = str(t.dtype).removeprefix("torch.")
    d = dt.get(DTYPE_OF_TORCH[name])
    if t.dtype in (torch.bfloat16,):
        return t.view(torch.int16).numpy().view(d.numpy)
    if name.startswith("float8"):
        return t.view(torch.uint8).numpy().view(d.numpy)
    return t.numpy()


def _flatten(obj: Mapping[Any, Any], path: Path) -> dict[str, Any]:
    """Tensors of a (nested) state dict under dotted names; nested mappings with non-string keys
    (an optimiser's per-parameter state) are not weights and are left out. Iterative: a pickle can
    nest dicts deeper than Python's recursion limit."""
    torch = torch_module()
    out: dict[str, Any] = {}
    stack: list[tuple[str, Any]] = [("", iter(obj.items()))]  # depth first, in the file's order
    while stack:
        prefix, items = stack[-1]
        step = next(items, None)
        if step is None:
            stack.pop()
            continue
        k, v = step
        if isinstance(v, torch.Tensor):
            if not isinstance(k, str):
                raise InputError(f"state dict key {k!r} (of a tensor) is {'an' if type(k).__name__[0] in 'aeiou' else 'a'} "
                                 f"{type(k).__name__}, not a string", path=path)
            key = f"{prefix}{k}"
            try:
                key.encode("utf-8")
            except UnicodeEncodeError:
                raise InputError(f"tensor name {key[:80]!r} is not valid UTF-8", path=path) from None
            if key in out:
                raise InputError(f"tensor name {key[:200]!r} appears twice (after joining nested names with '.')", path=path)
            out[key] = v
        elif isinstance(k, str) and isinstance(v, Mapping) and v and all(isinstance(x, str) for x in v):
            stack.append((f"{prefix}{k}.", iter(v.items())))
    return out


def _unwrap(obj: Any, path: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Find the state dict in the usual wrappers; return it and an embedded config if any."""
    torch = torch_module()
    if not isinstance(obj, Mapping):
        kind = "None" if obj is None else type(obj).__name__
        article = "an" if kind[0] in "aeiouAEIOU" else "a"
        raise InputError(f"holds {article} {kind}, not a state dict (a mapping of names to tensors)", path=path)
    config = None
    for key in CONFIG_KEYS:
        if isinstance(obj.get(key), Mapping):
            config = dict(obj[key])
    for key in WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
            state = _flatten(inner, path)
            break
    else:
        state = _flatten(obj, path)
    if not state:
        raise InputError("holds no tensors (not a state dict?)", path=path)
    return state, config


def _add_state_dict(model: Model, state: dict[str, Any], path: Path, crcs: dict[int, set[int]] | None = None) -> None:
    torch = torch_module()
    keys = []
    for name, t in state.items():
        if t.layout != torch.strided:
            raise InputError(f"tensor {name!r} is a {str(t.layout).removeprefix('torch.')} tensor; lmconv reads dense tensors only", path=path)
        if t.device.type == "meta" or getattr(t, "is_nested", False) or type(t) not in (torch.Tensor, torch.nn.Parameter):
            raise InputError(f"tensor {name!r} is a {type(t).__name__} on {t.device.type} without plain data; lmconv reads dense tensors only",
                             path=path)
        if t.device.type != "cpu":
            t = t.cpu()
        try:
            storage_key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        except RuntimeError:
            storage_key = id(t)
        keys.append((name, storage_key))
        state[name] = t
    done: set[tuple[int, int]] = set()
    for first, others in group_ties(keys).items():
        t = state[first]
        name = str(t.dtype).removeprefix("torch.")
        try:
            d = dt.get(DTYPE_OF_TORCH[name])
        except KeyError:
            raise InputError(f"tensor {first!r} has dtype {name}, which lmconv does not support", path=path) from None
        if crcs:
            loader = lambda t=t: _to_numpy(crc_checked(t, crcs, path, done))
        else:
            loader = lambda t=t: _to_numpy(t)
        model.add(Tensor(first, tuple(t.shape), d, loader, aliases=tuple(others), origin=str(path)))


def read_pytorch(path: Path) -> Model:
    model = Model(source=str(path), format="pytorch")
    if path.name.endswith(INDEX_SUFFIX):
        weight_map = read_shard_index(path, "PyTorch")
        held: dict[str, str] = {}  # tensor (or tie) name → the shard holding it
        for shard in dict.fromkeys(weight_map.values()):
            spath = path.parent / shard
            obj, crcs = load_checked(spath)
            state, _ = _unwrap(obj, spath)
            for name in state:
                if name in held:
                    raise InputError(f"tensor {name!r} appears twice: in {held[name]} and in {shard}", path=spath)
                held[name] = shard
            _add_state_dict(model, state, spath, crcs)
        for name, shard in weight_map.items():
            if held.get(name) != shard:
                raise InputError(f"index maps {name!r} to {shard} but that shard has no such tensor", path=path)
        return model
    obj, crcs = load_checked(path)
    state, config = _unwrap(obj, path)
    if config:
        model.config = config
    _add_state_dict(model, state, path, crcs)
    return model


def _save_state(tensors: list[Tensor], path: Path) -> None:
    """``torch.save`` a plain state dict of ``tensors``; an alias is the same torch tensor (shared storage)."""
    torch = torch_module()
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
            tt = torch.from_numpy(arr.view(np.uint8)).view(getattr(torch, TORCH_OF_DTYPE[t.dtype.name]))
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
    groups = shard_tensors(list(model), max_bytes)
    names = [shard_name(stem, i, len(groups), ".bin") for i in range(1, len(groups) + 1)]
    for group, name in zip(groups, names):
        _save_state(group, folder / name)
        options.progress(sum(t.nbytes for t in group))
    return [folder / n for n in names] + [write_index(folder / f"{stem}{INDEX_SUFFIX}", groups, names)]


class PyTorchFormat(Format):
    name = "pytorch"
    extensions = (".pt", ".pth", ".bin", INDEX_SUFFIX)
    description = "PyTorch checkpoints (zip or legacy, sharded with an index); loaded with weights_only=True"

    def sniff(self, path: Path) -> bool:
        if path.name.endswith(INDEX_SUFFIX):
            return path.is_file()
        return path.is_file() and (is_zip_checkpoint(path) or is_legacy_checkpoint(path))

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


@hookimpl
def register_options(register: Any) -> None:
    register(MAX_SHARD_SIZE)
