"""Keras h5 weights: HF's ``tf_model.h5`` (Keras 2 layout), Keras 3 ``.weights.h5`` and ``.keras``.

Read with h5py only — never TensorFlow. Three layouts are understood:

* Keras 2 / HF (``model.save_weights`` / ``save_pretrained``): a ``layer_names`` attribute at the root
  (or in ``model_weights/`` for a whole saved model), each layer group with ``weight_names``
  (``tfgp_t2lm_head_model/transformer/h_._0/attn/c_attn/weight:0``), datasets at those paths;
* Keras 3 ``.weights.h5``: ``layers/<layer>/vars/<i>`` datasets, kept verbatim;
* ``.keras``: a zip holding ``model.weights.h5`` (and Keras' own config.json, which is not HF's).

Names become HF names by the rules in :mod:`tf_names`. Datasets are read when a tensor is
loaded, not before. Writing produces the Keras 2 / HF layout (``tf_model.h5``), which
transformers' TF models and ``keras.Model.load_weights`` read, plus a ``_lmconv_metadata``
dataset (ignored by Keras) with the exact HF names. bf16 and fp8 are stored as f32 (exactly:
HDF5 has no such types) and restored from the metadata.
"""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from lmconv import dtypes as dt
from lmconv.errors import InputError, MissingDependencyError, UsageError
from lmconv.formats import Format, ReadOptions, WriteOptions
from lmconv.hookspecs import hookimpl
from lmconv.ir import Model

from . import tf_names as tn

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
KERAS_WEIGHTS = "model.weights.h5"
HDF5_OBJECT_HEADER_LIMIT = 64512  # Keras splits longer attributes into name0, name1, …
KERAS_VERSION = "2.15.0"  # the layout written is Keras 2's save_weights h5 (as HF's tf_model.h5)


def _h5py() -> Any:
    try:
        import h5py
    except ImportError:
        raise MissingDependencyError("reading or writing Keras h5 files needs h5py: pip install 'lmconv[h5]'") from None
    return h5py


def _is_hdf5(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            for offset in (0, 512, 1024, 2048):
                fh.seek(offset)
                if fh.read(8) == HDF5_MAGIC:
                    return True
    except OSError:
        pass
    return False


def _is_keras_zip(path: Path) -> bool:
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as zf:
            return KERAS_WEIGHTS in zf.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


class _Range(io.RawIOBase):
    """A read-only file view of ``size`` bytes at ``start`` (an uncompressed zip member)."""

    def __init__(self, path: Path, start: int, size: int) -> None:
        self._fh = open(path, "rb")
        self._start, self._size, self._pos = start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, b: Any) -> int:
        n = max(0, min(len(b), self._size - self._pos))
        self._fh.seek(self._start + self._pos)
        got = self._fh.readinto(memoryview(b)[:n])
        self._pos += got or 0
        return got or 0


def _open_keras_zip(path: Path) -> Any:
    try:
        zf = zipfile.ZipFile(path)
        info = zf.getinfo(KERAS_WEIGHTS)
        if info.compress_type == zipfile.ZIP_STORED:
            with open(path, "rb") as fh:
                fh.seek(info.header_offset)
                local = fh.read(30)
            if len(local) < 30 or local[:4] != b"PK\x03\x04":
                raise zipfile.BadZipFile("bad local header")
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            return _Range(path, info.header_offset + 30 + name_len + extra_len, info.file_size)
        return zf.open(info)  # compressed: seekable, slower
    except (KeyError, zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"is not a readable .keras archive ({exc})", path=path) from None


def _decode(x: Any) -> str:
    return x.decode("utf-8") if isinstance(x, (bytes, np.bytes_)) else str(x)


def _attr_list(group: Any, name: str) -> list[str] | None:
    """A Keras list attribute, also when it was split into ``name0``, ``name1``, …"""
    if name in group.attrs:
        return [_decode(x) for x in np.atleast_1d(group.attrs[name])]
    if f"{name}0" not in group.attrs:
        return None
    out, i = [], 0
    while f"{name}{i}" in group.attrs:
        out += [_decode(x) for x in np.atleast_1d(group.attrs[f"{name}{i}"])]
        i += 1
    return out


def _save_attr_list(group: Any, name: str, values: list[str]) -> None:
    data = np.array([v.encode("utf-8") for v in values]) if values else np.array([], dtype="S1")
    chunks = 1
    parts = np.array_split(data, chunks)
    while any(p.nbytes > HDF5_OBJECT_HEADER_LIMIT for p in parts) and chunks < len(data):
        chunks += 1
        parts = np.array_split(data, chunks)
    if chunks == 1:
        group.attrs[name] = data
    else:
        for i, p in enumerate(parts):
            group.attrs[f"{name}{i}"] = p


def read_h5(path: Path, options: ReadOptions) -> Model:
    h5py = _h5py()
    source: Any = path
    if _is_keras_zip(path):
        source = _open_keras_zip(path)
    try:
        f = h5py.File(source, "r")
    except (OSError, ValueError) as exc:
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise InputError(f"is not a readable HDF5 file (truncated or corrupt: {msg})", path=path) from None
    origin = str(path)
    datasets: dict[str, Any] = {}  # key → h5py dataset
    keep_order = False
    try:
        mw = f.get("model_weights")
        root = mw if isinstance(mw, h5py.Group) else f
        layers = _attr_list(root, "layer_names")
        if layers is not None:
            keep_order = True
            for layer in layers:
                group = root.get(layer)
                if not isinstance(group, h5py.Group):
                    raise InputError(f"layer_names lists {layer!r} but the file has no such group", path=path)
                for wn in _attr_list(group, "weight_names") or []:
                    ds = group.get(wn)
                    if not isinstance(ds, h5py.Dataset):
                        raise InputError(f"layer {layer!r} lists weight {wn!r} but the file has no such dataset", path=path)
                    if wn in datasets:
                        raise InputError(f"weight {wn!r} is listed twice", path=path)
                    datasets[wn] = ds
        else:
            def visit(name: str, obj: Any) -> None:
                if isinstance(obj, h5py.Dataset) and name != tn.META_KEY:
                    datasets[name] = obj

            f.visititems(visit)
        meta_raw = None
        if isinstance(f.get(tn.META_KEY), h5py.Dataset):
            meta_raw = f[tn.META_KEY][()]
            meta_raw = meta_raw.tobytes() if isinstance(meta_raw, np.ndarray) else meta_raw
    except InputError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise InputError(f"is not a readable HDF5 file (truncated or corrupt: {msg})", path=path) from None
    meta = tn.parse_meta(meta_raw, path)

    variables = []
    for key, ds in datasets.items():
        try:
            d = dt.from_numpy(ds.dtype)
        except (KeyError, TypeError):
            if not tn.is_bookkeeping(tn.strip_var(key)):
                options.warn(f"{path}: dataset {key!r} has dtype {ds.dtype}, which lmconv does not convert; left out")
            continue
        variables.append(tn.Var(key, tuple(int(s) for s in ds.shape), d))

    def raw(key: str, _file: Any = f) -> np.ndarray:  # the default keeps the file open while tensors may load
        return np.asarray(datasets[key][()])

    model = Model(source=str(path), format="h5")
    tn.attach_tf_companions(model, path.parent, options.config_path, [v.var for v in variables])
    entries, scheme = tn.plan_read(variables, config=model.config, meta=meta, path=path, warn=options.warn, keep_order=keep_order)
    for t in tn.build_tensors(entries, tn.safe_loader(raw, origin), origin):
        model.add(t)
    model.metadata["tensorflow"] = {"naming": scheme, "layout": "keras2" if keep_order else "h5-paths"}
    return model


def _layer_of(weight_name: str) -> str:
    """The layer group a Keras 2 file keeps a weight in: the component after the model scope
    (``tfgp_t2lm_head_model/transformer/…`` → ``transformer``, ``sequential/d1/kernel`` → ``d1``),
    or the first one for a short name (``dense/kernel:0`` → ``dense``)."""
    parts = weight_name.split("/")
    return parts[1] if len(parts) > 2 else parts[0]


def write_h5(model: Model, path: Path, options: WriteOptions) -> list[Path]:
    from lmconv.streaming import iter_loaded

    name = path.name.lower()
    if name.endswith((".keras", ".weights.h5")):
        raise UsageError(
            f"{path.name}: Keras 3 .keras/.weights.h5 files need the model's Keras layer graph, which a weights "
            "file does not have; lmconv writes the Keras 2 / Hugging Face layout: use a name ending in .h5 (e.g. tf_model.h5)"
        )
    h5py = _h5py()
    plan = tn.plan_write(model)
    for o in plan.outs:
        o.stored_dtype = dt.F32 if o.tensor.dtype.name == "bf16" or o.tensor.dtype.name.startswith("f8_") else o.tensor.dtype
    groups: dict[str, list[tn.Out]] = {}
    for o in plan.outs:
        groups.setdefault(_layer_of(o.h5_name), []).append(o)
    by_tensor = {id(o.tensor): o for o in plan.outs}
    with h5py.File(path, "w") as f:
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = KERAS_VERSION.encode()
        _save_attr_list(f, "layer_names", list(groups))
        for g, outs in groups.items():
            _save_attr_list(f.create_group(g), "weight_names", [o.h5_name for o in outs])
        for t, arr in iter_loaded([o.tensor for o in plan.outs]):
            o = by_tensor[id(t)]
            f[_layer_of(o.h5_name)].create_dataset(o.h5_name, data=tn.tf_array(o, arr))
            options.progress(t.nbytes)
            del arr
            t.release()
        f.create_dataset(tn.META_KEY, data=tn.meta_record(plan, lambda o: o.h5_name).decode("utf-8"), dtype=h5py.string_dtype())
    return [path]


class KerasH5Format(Format):
    name = "h5"
    extensions = (".h5", ".keras", ".weights.h5")
    description = "Keras h5 weights (HF tf_model.h5 / Keras 2 layout; reads Keras 3 .weights.h5 and .keras); h5py only"
    stores_dtypes = frozenset(d.name for d in dt.PLAIN_DTYPES)

    def sniff(self, path: Path) -> bool:
        return path.is_file() and (_is_hdf5(path) or (path.name.lower().endswith(".keras") and _is_keras_zip(path)))

    def read(self, path: Path, options: ReadOptions) -> Model:
        return read_h5(path, options)

    def write(self, model: Model, path: Path, options: WriteOptions) -> list[Path]:
        return write_h5(model, path, options)


@hookimpl
def register_formats(register: Any) -> None:
    register(KerasH5Format())
