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
HDF5 has no such types) and restored from the metadata. A model whose family lays itself out for
Keras (:mod:`families`) is written in that layout instead — Keras 2 h5 or, for a ``.weights.h5``
target, Keras 3's — and a file in such a layout is read back through the family that claims it.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from lmconv import dtypes as dt
from lmconv.errors import InputError, MissingDependencyError, UsageError
from lmconv.formats import Format, Plan, ReadOptions, WriteOptions
from lmconv.hookspecs import hookimpl
from lmconv.ir import Model
from lmconv.streaming import iter_loaded

from . import families
from . import names as tn

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
KERAS_WEIGHTS = "model.weights.h5"
HDF5_OBJECT_HEADER_LIMIT = 64512  # Keras splits longer attributes into name0, name1, …
KERAS_VERSION = "2.15.0"  # the layout written is Keras 2's save_weights h5 (as HF's tf_model.h5)


#: what h5py raises for damaged bytes in a dataset (a MemoryError or a bug is something else)
H5_CORRUPT: tuple[type[BaseException], ...] = (OSError, ValueError, KeyError, TypeError, RuntimeError)


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


def _open_keras_zip(path: Path) -> tuple[Any, int]:
    """model.weights.h5 inside a .keras archive as a seekable file, and its size.

    The member must lie inside the archive and match its CRC-32 (checked once, in a streaming pass:
    h5py reads it at random offsets, where zipfile cannot check anything).
    """
    try:
        size = path.stat().st_size
        zf = zipfile.ZipFile(path)
        info = zf.getinfo(KERAS_WEIGHTS)
        with open(path, "rb") as fh:
            fh.seek(info.header_offset)
            local = fh.read(30)
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            raise zipfile.BadZipFile("bad local header of model.weights.h5")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        start = info.header_offset + 30 + name_len + extra_len
        if start + info.compress_size > size:
            raise InputError(f"{KERAS_WEIGHTS} claims {info.compress_size} bytes, past the end of the archive (truncated or corrupt)",
                             path=path)
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            raise InputError(f"{KERAS_WEIGHTS} is stored but its two sizes disagree (corrupt archive)", path=path)
        crc = 0
        with zf.open(info) as member:
            while chunk := member.read(1 << 20):
                crc = zlib.crc32(chunk, crc)
        # (zipfile itself raises on a CRC mismatch at the end of a full read; the check is explicit too)
        if crc != info.CRC:
            raise InputError(f"{KERAS_WEIGHTS} does not match its CRC-32 (corrupt archive)", path=path)
        if info.compress_type == zipfile.ZIP_STORED:
            return _Range(path, start, info.file_size), info.file_size
        return zf.open(info), info.file_size  # compressed: seekable, slower
    except KeyError:
        raise InputError(f"is a .keras archive without {KERAS_WEIGHTS}", path=path) from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise InputError(f"is not a readable .keras archive ({msg})", path=path) from None


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


#: A compressed dataset may read back at most this many times its stored size (a gzip bomb is ~1000x):
#: real weights barely compress. Small datasets (zero-initialised biases) are exempt.
MAX_COMPRESSION_RATIO = 100
SMALL_DATASET = 1 << 20


def _link_kind(link: Any) -> str:
    h5py = _h5py()
    if isinstance(link, h5py.ExternalLink):
        return f"an external link to {link.filename}:{link.path}"
    if isinstance(link, h5py.SoftLink):
        return f"a soft link to {link.path}"
    return f"a {type(link).__name__}"


def _walk(group: Any, rel: str, what: str, path: Path) -> Any:
    """``group[rel]``, refusing to pass through any link but a hard one (a soft or external link
    points somewhere else in the file, or into another file: lmconv reads only what is here)."""
    h5py = _h5py()
    node = group
    for comp in [c for c in rel.split("/") if c]:
        if not isinstance(node, h5py.Group):
            return None
        link = node.get(comp, getlink=True)
        if link is None:
            return None
        if not isinstance(link, h5py.HardLink):
            raise InputError(f"{what} {rel!r} is {_link_kind(link)}; lmconv does not follow links", path=path)
        node = node[comp]
    return node


def _check_links(f: Any, path: Path) -> None:
    """Every name in the file is UTF-8 and every link a hard one (visiting never follows a link).

    Visited through h5py's low-level API, which gives names as bytes: its high-level visit
    decodes them itself and fails with a SystemError on a name that is not UTF-8.
    """
    h5py = _h5py()

    def visit(name: bytes, info: Any) -> Any:
        try:
            name.decode("utf-8")
        except UnicodeDecodeError:
            return ("utf8", name)
        if info.type != h5py.h5l.TYPE_HARD:
            return ("link", name)
        return None

    found = f.id.links.visit(visit, info=True)
    if found is None:
        return
    kind, name = found
    if kind == "utf8":
        raise InputError(f"names an object {name[:80]!r} in bytes that are not UTF-8", path=path)
    text = name.decode("utf-8")
    try:
        what = _link_kind(f.get(text, getlink=True))
    except Exception:  # noqa: BLE001 - only for the message
        what = "a link"
    raise InputError(f"{text!r} is {what}; lmconv does not follow links", path=path)


def _check_dataset(key: str, ds: Any, file_size: int, path: Path) -> dt.DType | None:
    """The dataset's dtype, after refusing what is no tensor held in this file; None for bookkeeping."""
    h5py = _h5py()
    if ds.is_virtual:
        raise InputError(f"dataset {key!r} is a virtual dataset (its data lives in other files); refused", path=path)
    if ds.external:
        raise InputError(f"dataset {key!r} keeps its raw data in an external file ({ds.external[0][0]}); refused", path=path)
    bookkeeping = key == tn.META_KEY or tn.is_bookkeeping(tn.strip_var(key))
    dtype = ds.dtype
    try:
        if dtype.names or h5py.check_enum_dtype(dtype) is not None or dtype.metadata:
            raise KeyError(str(dtype))
        d = dt.from_numpy(dtype.newbyteorder("=") if dtype.byteorder in "<>" else dtype)
    except (KeyError, TypeError, ValueError):
        if bookkeeping:
            return None
        kind = {"O": "objects (strings or references)", "S": "strings", "U": "strings", "V": "compound records",
                "c": "complex numbers"}.get(dtype.kind, str(dtype))
        if h5py.check_enum_dtype(dtype) is not None:
            kind = "enum values"
        elif dtype.names:
            kind = "compound records"
        raise InputError(f"dataset {key!r} holds {kind}, not a tensor of numbers", path=path) from None
    if ds.shape is None:
        raise InputError(f"dataset {key!r} has a null dataspace (no shape, no data), not a tensor", path=path)
    nbytes = int(np.prod(ds.shape, dtype=object)) * dtype.itemsize
    stored = int(ds.id.get_storage_size())
    compressed = ds.id.get_create_plist().get_nfilters() > 0
    if not compressed and nbytes > file_size:
        raise InputError(f"dataset {key!r} declares {nbytes} bytes but the file holds only {file_size} "
                         "(its data was never written, or the file is truncated)", path=path)
    if compressed and nbytes > SMALL_DATASET and nbytes > stored * MAX_COMPRESSION_RATIO:
        raise InputError(f"dataset {key!r} declares {nbytes} bytes from {stored} compressed bytes "
                         f"(over {MAX_COMPRESSION_RATIO}x: a compression bomb or unwritten data); refused", path=path)
    return d


def _one_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200] or type(exc).__name__


def read_h5(path: Path, options: ReadOptions) -> Model:
    h5py = _h5py()
    source: Any = path
    file_size = path.stat().st_size
    if path.name.lower().endswith(".keras") and zipfile.is_zipfile(path):
        source, file_size = _open_keras_zip(path)
    try:
        f = h5py.File(source, "r")
    except (OSError, ValueError) as exc:
        raise InputError(f"is not a readable HDF5 file (truncated or corrupt: {_one_line(exc)})", path=path) from None
    origin = str(path)
    datasets: dict[str, Any] = {}  # key → h5py dataset
    dtypes: dict[str, dt.DType] = {}
    keep_order = False
    try:
        _check_links(f, path)
        mw = f.get("model_weights")
        root = mw if isinstance(mw, h5py.Group) else f
        layers = _attr_list(root, "layer_names")
        if layers is not None:
            keep_order = True
            for layer in layers:
                group = _walk(root, layer, "layer", path)
                if not isinstance(group, h5py.Group):
                    raise InputError(f"layer_names lists {layer!r} but the file has no such group", path=path)
                for wn in _attr_list(group, "weight_names") or []:
                    ds = _walk(group, wn, "weight", path)
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
        for key, ds in list(datasets.items()):
            d = _check_dataset(key, ds, file_size, path)
            if d is None:
                del datasets[key]
            else:
                dtypes[key] = d
        meta_raw = None
        meta_ds = f.get(tn.META_KEY)
        if isinstance(meta_ds, h5py.Dataset):
            if meta_ds.dtype.kind not in "OSU" or meta_ds.shape != () or (meta_ds.id.get_storage_size() or 0) > 64 << 20:
                raise InputError(f"{tn.META_KEY} is not a JSON string", path=path)
            meta_raw = meta_ds[()]
            meta_raw = meta_raw.tobytes() if isinstance(meta_raw, np.ndarray) else meta_raw
    except InputError:
        raise
    except UnicodeError:
        raise InputError("names a layer or weight in bytes that are not UTF-8 (corrupt layer_names/weight_names)", path=path) from None
    except (OSError, KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise InputError(f"is not a readable HDF5 file (truncated or corrupt: {_one_line(exc)})", path=path) from None
    meta = tn.parse_meta(meta_raw, path)

    variables = [tn.Var(key, tuple(int(s) for s in ds.shape), dtypes[key]) for key, ds in datasets.items()]

    def raw(key: str, _file: Any = f) -> np.ndarray:  # the default keeps the file open while tensors may load
        a = np.asarray(datasets[key][()])
        want = dtypes[key].numpy
        return a if want is None or a.dtype == want else a.astype(want)

    model = Model(source=str(path), format="h5")
    tn.attach_tf_companions(model, path.parent, options.config_path, [v.var for v in variables])
    entries, scheme = tn.plan_read(variables, config=model.config, meta=meta, path=path, warn=options.warn, keep_order=keep_order)
    if not entries:
        raise InputError("holds no weights (no numeric datasets)", path=path)
    for t in tn.build_tensors(entries, tn.safe_loader(raw, origin, H5_CORRUPT), origin):
        model.add(t)
    model.metadata["tensorflow"] = {"naming": scheme, "layout": "keras2" if keep_order else "h5-paths"}
    if scheme == "verbatim" or (scheme == "lmconv" and meta and meta.get("family")):
        key = families.claim(model, "h5", meta=meta, ordered=keep_order, options=options, origin=origin)
        if key is not None:
            model.metadata["tensorflow"]["naming"] = f"{key} layout of {model.architecture or 'a family'}"
    return model


def _layer_of(weight_name: str) -> str:
    """The layer group a Keras 2 file keeps a weight in: the component after the model scope
    (``tfgp_t2lm_head_model/transformer/…`` → ``transformer``, ``sequential/d1/kernel`` → ``d1``),
    or the first one for a short name (``dense/kernel:0`` → ``dense``)."""
    parts = weight_name.split("/")
    return parts[1] if len(parts) > 2 else parts[0]


def write_h5(model: Model, path: Path, options: WriteOptions) -> list[Path]:

    name = path.name.lower()
    family = families.write_layout(model, "h5.weights" if name.endswith(".weights.h5") else "h5")
    if family is not None and not name.endswith(".keras"):
        return write_family_h5(model, path, options, *family)
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


def _stored(d: dt.DType) -> dt.DType:
    return dt.F32 if d.name == "bf16" or d.name.startswith("f8_") else d  # HDF5 has neither: widened, exactly


def write_family_h5(model: Model, path: Path, options: WriteOptions, arch: Any, key: str) -> list[Path]:
    """A family's own Keras layout (:mod:`families`): ``h5`` as Keras 2 ``save_weights`` writes it (a
    group per layer, the first name component, with ``weight_names``), ``h5.weights`` as Keras 3 does
    (datasets at the variables' paths, e.g. ``layers/lstm/cell/vars/0``)."""
    h5py = _h5py()
    tensors = families.target_tensors(model, arch, key, options.warn)
    keras2 = key == "h5"
    plan = families.plan(model, tensors, key_of=lambda n: n, h5_of=lambda n: f"{n}:0")
    for o in plan.outs:
        o.stored_dtype = _stored(o.tensor.dtype)
    by_tensor = {id(o.tensor): o for o in plan.outs}
    with h5py.File(path, "w") as f:
        if keras2:
            groups: dict[str, list[str]] = {}
            for o in plan.outs:
                groups.setdefault(o.tensor.name.split("/")[0], []).append(o.h5_name)
            f.attrs["backend"] = b"tensorflow"
            f.attrs["keras_version"] = KERAS_VERSION.encode()
            _save_attr_list(f, "layer_names", list(groups))
            for g, weight_names in groups.items():
                _save_attr_list(f.create_group(g), "weight_names", weight_names)
        else:
            f.create_group("vars")
        for t, arr in iter_loaded([o.tensor for o in plan.outs]):
            o = by_tensor[id(t)]
            if keras2:
                f[o.tensor.name.split("/")[0]].create_dataset(o.h5_name, data=tn.tf_array(o, arr))
            else:
                f.create_dataset(o.tensor.name, data=tn.tf_array(o, arr))
            options.progress(t.nbytes)
            del arr
            t.release()
        record = tn.meta_record(plan, (lambda o: o.h5_name) if keras2 else (lambda o: o.tensor.name),
                                families.meta_extra(model, arch, key))
        f.create_dataset(tn.META_KEY, data=record.decode("utf-8"), dtype=h5py.string_dtype())
    return [path]


class KerasH5Format(Format):
    name = "h5"
    extensions = (".h5", ".keras", ".weights.h5")
    description = "Keras h5 weights (HF tf_model.h5 / Keras 2 layout; reads Keras 3 .weights.h5 and .keras); h5py only"
    stores_dtypes = frozenset(d.name for d in dt.PLAIN_DTYPES)

    def sniff(self, path: Path) -> bool:
        # any zip named .keras is one (read() says what is missing from it)
        return path.is_file() and (_is_hdf5(path) or (path.name.lower().endswith(".keras") and zipfile.is_zipfile(path)))

    def read(self, path: Path, options: ReadOptions) -> Model:
        return read_h5(path, options)

    def write(self, model: Model, path: Path, options: WriteOptions) -> list[Path]:
        return write_h5(model, path, options)

    def plan(self, model: Model, path: Path, options: WriteOptions) -> Plan:
        name = path.name.lower()
        family = families.write_layout(model, "h5.weights" if name.endswith(".weights.h5") else "h5")
        if family is None or name.endswith(".keras"):
            return super().plan(model, path, options)
        return Plan(self.name, [str(path)], families.planned(model, *family, options.warn))


@hookimpl
def register_formats(register: Any) -> None:
    register(KerasH5Format())
