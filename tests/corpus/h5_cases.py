"""Bad Keras/HDF5 inputs: HF's tf_model.h5 (Keras 2 layout), Keras 3 .weights.h5 and .keras archives.

An HDF5 file is a superblock (magic ``\\x89HDF\\r\\n\\x1a\\n``), object headers (groups, datasets,
attributes such as Keras' ``layer_names``/``weight_names``) and raw data, all addressed by offsets the
library follows. lmconv reads them with h5py only. Besides broken bytes, the file format itself can
point elsewhere (external links, soft links, external raw storage, virtual datasets), declare datasets
far larger than the file (storage is allocated lazily), or hold datasets that are no tensors at all.
"""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import Case, ValidFiles, convert_quietly, cut, file_case, maker, truncations

ROOT = Path(__file__).resolve().parents[2]
GPT2 = ROOT / "fixtures" / "tiny-gpt2"
SCOPE = "tfgp_t2lm_head_model"
C_ATTN = f"{SCOPE}/transformer/h_._0/attn/c_attn/weight:0"
WTE = f"{SCOPE}/transformer/wte/embeddings:0"


# ----------------------------------------------------------------------------- valid inputs
def _weights() -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(GPT2 / "model.safetensors"))


def _hf_names(w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """HF GPT-2 weights under TFGPT2LMHeadModel's variable names (as tests/test_tensorflow.py spells them)."""
    out = {}
    for name, a in w.items():
        if name == "lm_head.weight":
            continue  # tied to wte: HF's TF model holds it once
        comps = name.split(".")
        if comps[-2] in ("ln_1", "ln_2", "ln_f"):
            comps[-1] = {"weight": "gamma", "bias": "beta"}[comps[-1]]
        if comps[1] in ("wte", "wpe"):
            comps[-1] = "embeddings"
        path = "/".join(comps).replace("h/", "h_._", 1) if comps[1] == "h" else "/".join(comps)
        out[f"{SCOPE}/{path}:0"] = a
    return out


def write_keras2(path: Path, named: dict[str, Any], *, whole_model: bool = False,
                 extra: Callable[[Any], None] | None = None) -> None:
    """Keras 2's save_weights layout (HF's tf_model.h5): layer groups with weight_names attributes.
    A value may be a callable ``(group, name)`` that makes the dataset (or link) itself."""
    import h5py

    layers: dict[str, list[str]] = {}
    for wn in named:
        layers.setdefault(wn.split("/")[1], []).append(wn)
    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if whole_model else f
        root.attrs["backend"] = b"tensorflow"
        root.attrs["keras_version"] = b"2.10.0"
        root.attrs["layer_names"] = [n.encode() for n in layers]
        for layer, names in layers.items():
            g = root.create_group(layer)
            g.attrs["weight_names"] = [n.encode() for n in names]
            for n in names:
                if callable(named[n]):
                    named[n](g, n)
                else:
                    g.create_dataset(n, data=named[n])
        if extra:
            extra(f)


@maker("h5-hf")
def _valid_hf(folder: Path) -> Path:
    folder.mkdir()
    write_keras2(folder / "tf_model.h5", _hf_names(_weights()))
    shutil.copy(GPT2 / "config.json", folder / "config.json")
    return folder / "tf_model.h5"


@maker("h5-lmconv")
def _valid_lmconv(folder: Path) -> Path:
    folder.mkdir()
    convert_quietly(GPT2, folder / "tf_model.h5")
    return folder / "tf_model.h5"


KERAS3 = {"layers/dense/vars/0": np.arange(12, dtype=np.float32).reshape(4, 3),
          "layers/dense/vars/1": np.ones(3, np.float32),
          "layers/embedding/vars/0": np.full((10, 4), 0.5, np.float32)}


def write_keras3(path: Path, arrays: dict[str, Any] | None = None, extra: Callable[[Any], None] | None = None) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        f.create_group("vars")
        for k, a in (KERAS3 if arrays is None else arrays).items():
            if callable(a):
                a(f, k)
            else:
                f.create_dataset(k, data=a)
        if extra:
            extra(f)


@maker("keras3")
def _valid_keras3(folder: Path) -> Path:
    folder.mkdir()
    write_keras3(folder / "model.weights.h5")
    return folder / "model.weights.h5"


def _keras_zip(weights: bytes | None, compress: int = zipfile.ZIP_STORED, name: str = "model.weights.h5") -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compress) as zf:
        zf.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
        zf.writestr("config.json", json.dumps({"class_name": "Sequential"}))
        if weights is not None:
            zf.writestr(name, weights)
    return out.getvalue()


@maker("keras-archive")
def _valid_keras_archive(folder: Path) -> Path:
    folder.mkdir()
    write_keras3(folder / "w.h5")
    (folder / "m.keras").write_bytes(_keras_zip((folder / "w.h5").read_bytes()))
    return folder / "m.keras"


# ----------------------------------------------------------------------------- building blocks
def _file(data: bytes | Callable[[ValidFiles], bytes], name: str = "x.h5") -> Callable[[Path, ValidFiles], Path]:
    return file_case(data, name)


def _hf(edit: Callable[[dict[str, Any]], None] | None = None, *, extra: Callable[[Any], None] | None = None,
        config: bool = True, name: str = "tf_model.h5", whole_model: bool = False) -> Callable[[Path, ValidFiles], Path]:
    """An HF tf_model.h5 of tiny-gpt2 (config.json beside it), its datasets changed by ``edit(named)``."""

    def build(folder: Path, valid: ValidFiles) -> Path:
        named = _hf_names(_weights())
        if edit:
            edit(named)
        write_keras2(folder / name, named, whole_model=whole_model, extra=extra)
        if config:
            shutil.copy(GPT2 / "config.json", folder / "config.json")
        return folder / name

    return build


def _k3(edit: Callable[[dict[str, Any]], None] | None = None, *, extra: Callable[[Any], None] | None = None,
        name: str = "model.weights.h5") -> Callable[[Path, ValidFiles], Path]:
    def build(folder: Path, valid: ValidFiles) -> Path:
        arrays = dict(KERAS3)
        if edit:
            edit(arrays)
        write_keras3(folder / name, arrays, extra)
        return folder / name

    return build


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda named: named.__setitem__(key, value)


def _transposed(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda named: named.__setitem__(key, np.ascontiguousarray(named[key].T))


def _short_rows(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda named: named.__setitem__(key, np.ascontiguousarray(named[key][:-1]))


def _lazy(shape: tuple[int, ...], **kw: Any) -> Callable[[Any, str], None]:
    """A dataset h5py creates without writing it: HDF5 allocates its storage only when written."""
    return lambda g, n: g.create_dataset(n, shape=shape, dtype="f4", **kw)


def _compressed_zeros(shape: tuple[int, ...]) -> Callable[[Any, str], None]:
    """Zeros written through gzip: a few KB on disk for what reads as a large array (a zip bomb)."""

    def make(g: Any, n: str) -> None:
        ds = g.create_dataset(n, shape=shape, dtype="f4", chunks=(min(shape[0], 256), *shape[1:]), compression="gzip",
                              compression_opts=9)
        ds[0:1] = 0  # one chunk written; the rest are fill values: the declared size is the claim

    return make


def _strings(g: Any, n: str) -> None:
    import h5py

    g.create_dataset(n, data=np.array(["a", "bc"], dtype=object), dtype=h5py.string_dtype())


def _fixed_strings(g: Any, n: str) -> None:
    g.create_dataset(n, data=np.array([b"abc", b"def"], dtype="S3"))


def _compound(g: Any, n: str) -> None:
    g.create_dataset(n, data=np.zeros(4, dtype=[("a", "<f4"), ("b", "<i4")]))


def _object_refs(g: Any, n: str) -> None:
    import h5py

    ds = g.create_dataset(n, shape=(2,), dtype=h5py.ref_dtype)
    ds[0] = g.file.ref


def _enum(g: Any, n: str) -> None:
    import h5py

    g.create_dataset(n, data=np.zeros(4, np.int8), dtype=h5py.enum_dtype({"A": 0, "B": 1}, basetype="i1"))


def _vlen_floats(g: Any, n: str) -> None:
    import h5py

    ds = g.create_dataset(n, shape=(2,), dtype=h5py.vlen_dtype(np.float32))
    ds[0] = np.ones(3, np.float32)
    ds[1] = np.ones(2, np.float32)


def _complex(g: Any, n: str) -> None:
    g.create_dataset(n, data=np.zeros((2, 2), np.complex64))


def _scalar(g: Any, n: str) -> None:
    g.create_dataset(n, data=np.float32(1.5))


def _external_link(target: str, inner: str = "/") -> Callable[[Any, str], None]:
    def make(g: Any, n: str) -> None:
        import h5py

        g[n] = h5py.ExternalLink(target, inner)

    return make


def _external_link_to_h5(g: Any, n: str) -> None:
    """An external link to a real HDF5 file beside it, with a dataset of the right shape in it."""
    import h5py

    other = Path(g.file.filename).parent / "other.h5"
    with h5py.File(other, "w") as o:
        o.create_dataset("w", data=np.zeros((64, 192), np.float32))
    g[n] = h5py.ExternalLink("other.h5", "/w")


def _soft_link(target: str) -> Callable[[Any, str], None]:
    def make(g: Any, n: str) -> None:
        import h5py

        g[n] = h5py.SoftLink(target)

    return make


def _external_storage(g: Any, n: str) -> None:
    """Raw data kept in another file (HDF5's 'external storage'): here /etc/passwd."""
    g.create_dataset(n, shape=(16,), dtype="u1", external=[("/etc/passwd", 0, 16)])


def _virtual(g: Any, n: str) -> None:
    import h5py

    layout = h5py.VirtualLayout(shape=(4,), dtype="f4")
    layout[:] = h5py.VirtualSource("/etc/passwd", "x", shape=(4,))
    g.create_virtual_dataset(n, layout, fillvalue=0)


def _edit_h5(fn: Callable[[Any], None], kind: str = "h5-hf", name: str = "tf_model.h5") -> Callable[[Path, ValidFiles], Path]:
    """A copy of a valid file (and its config.json) changed in place with h5py."""

    def build(folder: Path, valid: ValidFiles) -> Path:
        import h5py

        src = valid.get(kind)
        for p in src.parent.iterdir():
            if p.is_file():
                shutil.copy(p, folder / (name if p == src else p.name))
        with h5py.File(folder / name, "r+") as f:
            fn(f)
        return folder / name

    return build


def _set_attr(path: str, attr: str, value: Any) -> Callable[[Any], None]:
    def fn(f: Any) -> None:
        f[path].attrs[attr] = value

    return fn


def _meta(text: str) -> Callable[[Any], None]:
    def fn(f: Any) -> None:
        import h5py

        del f["_lmconv_metadata"]
        f.create_dataset("_lmconv_metadata", data=text, dtype=h5py.string_dtype())

    return fn


def _duplicate_after_mapping(named: dict[str, Any]) -> None:
    """wte under both Keras spellings: ``embeddings`` and the older ``weight`` map to one HF name."""
    named[f"{SCOPE}/transformer/wte/weight:0"] = named[WTE]


def _duplicate_output_index(named: dict[str, Any]) -> None:
    named[C_ATTN.replace(":0", ":1")] = named[C_ATTN]


def _nan(named: dict[str, Any]) -> None:
    a = named[C_ATTN].copy()
    a[0, 0] = np.nan
    named[C_ATTN] = a


def _truncation_cases() -> list[Case]:
    import tempfile

    import h5py

    with tempfile.TemporaryDirectory() as tmp:
        path = _valid_hf(Path(tmp) / "v")
        data = path.read_bytes()
        marks = [8, 48, 96]
        with h5py.File(path, "r") as f:
            offs = []
            f.visititems(lambda n, o: offs.append(o.id.get_offset()) if isinstance(o, h5py.Dataset) else None)
        offs = sorted(o for o in offs if o)
    marks += [offs[0], offs[len(offs) // 2], offs[-1], len(data) - 8]
    cases = [Case("h5", f"cut-at-{n}", _file(cut("h5-hf", n), "cut.h5")) for n in truncations(len(data), marks)]
    k3 = len(_valid_keras3(Path(tempfile.mkdtemp()) / "k").read_bytes())
    cases += [Case("h5", f"keras3-cut-at-{n}", _file(cut("keras3", n), "cut.weights.h5")) for n in (8, 100, 800, k3 // 2, k3 - 1)]
    return cases


def _keras_with(make: Callable[[ValidFiles], bytes | None], compress: int = zipfile.ZIP_STORED,
                name: str = "model.weights.h5") -> Callable[[ValidFiles], bytes]:
    return lambda valid: _keras_zip(make(valid), compress, name)


def _keras_member_size_lies(valid: ValidFiles) -> bytes:
    """The central directory says model.weights.h5 is 8 GiB long (stored); the archive is a few KB."""
    import struct

    data = bytearray(valid.bytes("keras-archive"))
    pos = 0
    while True:
        pos = data.find(b"PK\x01\x02", pos)
        assert pos >= 0
        n = struct.unpack("<H", data[pos + 28: pos + 30])[0]
        if data[pos + 46: pos + 46 + n] == b"model.weights.h5":
            break
        pos += 4
    data[pos + 20: pos + 28] = struct.pack("<II", 2**32 - 1, 2**32 - 1)  # compressed and uncompressed sizes
    return bytes(data)


def _non_utf8_name(f: Any) -> None:
    """A dataset whose link name is the bytes ff fe (HDF5 stores names as bytes; h5py accepts bytes)."""
    f["layers"].create_dataset(b"\xff\xfe", data=np.zeros(3, np.float32))


def _bad_magic(valid: ValidFiles) -> bytes:
    data = bytearray(valid.bytes("h5-hf"))
    data[1:4] = b"XYZ"
    return bytes(data)


def _superblock_eof_lies(valid: ValidFiles) -> bytes:
    """Superblock v0: the end-of-file address (offset 40, 8 bytes) says the file is 1 TiB."""
    import struct

    data = bytearray(valid.bytes("h5-hf"))
    assert data[8] in (0, 1)  # superblock version 0/1: base, free-space, EOF, driver addresses at 24..56
    data[40:48] = struct.pack("<Q", 2**40)
    return bytes(data)


def _flip_member_byte(data: bytes) -> bytes:
    """One byte of model.weights.h5's last dataset flipped inside the archive; the zip's CRC left as it was."""
    out = bytearray(data)
    start = out.find(b"\x89HDF")
    at = start + KERAS3_LAST_DATA
    out[at] ^= 0x5A
    return bytes(out)


def _k3_bytes(edit: Callable[[dict[str, Any]], None]) -> Callable[[ValidFiles], bytes]:
    def make(valid: ValidFiles) -> bytes:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            return _k3(edit)(Path(tmp), valid).read_bytes()

    return make


def _last_data_offset() -> int:
    import tempfile

    import h5py

    with tempfile.TemporaryDirectory() as tmp:
        path = _valid_keras3(Path(tmp) / "k")
        with h5py.File(path, "r") as f:
            return int(f["layers/embedding/vars/0"].id.get_offset()) + 8


KERAS3_LAST_DATA = _last_data_offset()


CASES: list[Case] = [
    Case("h5", "empty", _file(b"")),
    Case("h5", "empty-keras", _file(b"", "m.keras")),
    Case("h5", "empty-weights-h5", _file(b"", "model.weights.h5")),
    Case("h5", "bad-magic", _file(_bad_magic)),
    Case("h5", "text-file", _file(b"not an hdf5 file\n" * 20)),
    Case("h5", "superblock-eof-1TiB", _file(_superblock_eof_lies)),
    *_truncation_cases(),
    # shapes
    Case("h5", "c_attn-transposed", _hf(_transposed(C_ATTN)), mentions=("c_attn",)),
    Case("h5", "embedding-transposed-to-gguf", _hf(_transposed(WTE)), target="old.gguf", mentions=("wte",)),
    Case("h5", "embedding-short-to-gguf", _hf(_short_rows(WTE)), target="old.gguf", mentions=("wte",)),
    Case("h5", "scalar-for-a-matrix", _hf(_set(C_ATTN, _scalar)), mentions=("c_attn",)),
    Case("h5", "scalar-embedding", _hf(_set(WTE, _scalar)), mentions=("wte",)),
    Case("h5", "vector-kernel", _hf(_set(f"{SCOPE}/lm/dense/kernel:0", np.zeros(3, np.float32))), mentions=("kernel",)),
    Case("h5", "layernorm-gamma-2d", _hf(_set(f"{SCOPE}/transformer/ln_f/gamma:0", np.zeros((2, 32), np.float32))),
         mentions=("gamma",)),
    Case("h5", "lmconv-file-shape-disagrees-with-metadata",
         _edit_h5(lambda f: (f["transformer"].__delitem__(C_ATTN), f["transformer"].create_dataset(C_ATTN, data=np.zeros((2, 2), np.float32))),
                  kind="h5-lmconv"), mentions=("c_attn",)),
    # dtypes
    Case("h5", "strings-for-a-weight", _hf(_set(C_ATTN, _strings)), mentions=("c_attn",)),
    Case("h5", "fixed-strings-for-a-weight", _hf(_set(C_ATTN, _fixed_strings)), mentions=("c_attn",)),
    Case("h5", "compound-for-a-weight", _hf(_set(C_ATTN, _compound)), mentions=("c_attn",)),
    Case("h5", "object-refs-for-a-weight", _hf(_set(C_ATTN, _object_refs)), mentions=("c_attn",)),
    Case("h5", "enum-for-a-weight", _hf(_set(C_ATTN, _enum)), mentions=("c_attn",)),
    Case("h5", "vlen-floats-for-a-weight", _hf(_set(C_ATTN, _vlen_floats)), mentions=("c_attn",)),
    Case("h5", "complex-for-a-weight", _hf(_set(C_ATTN, _complex)), mentions=("c_attn",)),
    Case("h5", "null-dataspace", _hf(_set(C_ATTN, lambda g, n: g.create_dataset(n, data=__import__("h5py").Empty("f4")))),
         mentions=("c_attn",)),
    Case("h5", "keras3-strings", _k3(_set("layers/dense/vars/1", _strings)), mentions=("vars/1",)),
    Case("h5", "keras3-compound", _k3(_set("layers/dense/vars/1", _compound)), mentions=("vars/1",)),
    # sizes that lie
    Case("h5", "lazy-dataset-8GiB", _hf(_set(C_ATTN, _lazy((2**16, 2**15)))), lying=True, mentions=("c_attn",)),
    Case("h5", "keras3-lazy-dataset-8GiB", _k3(_set("layers/dense/vars/0", _lazy((2**16, 2**15)))), lying=True,
         mentions=("vars/0",)),
    Case("h5", "lazy-chunked-dataset-4TiB", _k3(_set("layers/dense/vars/0", _lazy((2**20, 2**20), chunks=(64, 64)))),
         lying=True, mentions=("vars/0",)),
    Case("h5", "gzip-bomb-8GiB", _k3(_set("layers/dense/vars/0", _compressed_zeros((2**16, 2**15)))), lying=True,
         mentions=("vars/0",)),
    Case("h5", "keras-member-size-lies", _file(_keras_member_size_lies, "m.keras"), lying=True),
    # things that point elsewhere: never followed
    Case("h5", "external-link-to-etc-passwd", _hf(_set(C_ATTN, _external_link("/etc/passwd"))), mentions=("link",)),
    Case("h5", "external-link-to-h5-beside", _hf(_set(C_ATTN, _external_link_to_h5)), mentions=("link",)),
    Case("h5", "soft-link-to-another-weight", _hf(_set(C_ATTN, _soft_link(f"/transformer/{SCOPE}/transformer/h_._0/attn/c_proj/weight:0"))),
         mentions=("link",)),
    Case("h5", "soft-link-dangling", _hf(_set(C_ATTN, _soft_link("/nowhere"))), mentions=("link",)),
    Case("h5", "keras3-external-link", _k3(_set("layers/dense/vars/1", _external_link("/etc/passwd"))), mentions=("link",)),
    Case("h5", "keras3-soft-link", _k3(_set("layers/dense/vars/1", _soft_link("/layers/embedding/vars/0"))), mentions=("link",)),
    Case("h5", "keras3-external-link-group", _k3(extra=lambda f: f["layers"].__setitem__("other", __import__("h5py").ExternalLink("/etc/passwd", "/"))),
         mentions=("link",)),
    Case("h5", "external-raw-storage", _k3(_set("layers/dense/vars/1", _external_storage)), mentions=("external",)),
    Case("h5", "virtual-dataset", _k3(_set("layers/dense/vars/1", _virtual)), mentions=("virtual",)),
    Case("h5", "hf-external-raw-storage", _hf(_set(C_ATTN, _external_storage)), mentions=("external",)),
    # names
    Case("h5", "duplicate-after-name-mapping", _hf(_duplicate_after_mapping), mentions=("both map",)),
    Case("h5", "duplicate-output-index", _hf(_duplicate_output_index), mentions=("both map",)),
    Case("h5", "weight-listed-twice", _edit_h5(_set_attr("transformer", "weight_names", [C_ATTN.encode()] * 2)),
         mentions=("twice",)),
    Case("h5", "weight-names-lists-missing", _edit_h5(_set_attr("transformer", "weight_names", [b"nope/x:0"])),
         mentions=("nope/x:0",)),
    Case("h5", "layer-names-lists-missing", _edit_h5(_set_attr("/", "layer_names", [b"transformer", b"ghost"])),
         mentions=("ghost",)),
    Case("h5", "weight-names-non-utf8", _edit_h5(_set_attr("transformer", "weight_names", [b"\xff\xfe/x:0"])),
         mentions=("UTF-8",)),
    Case("h5", "layer-names-numbers", _edit_h5(_set_attr("/", "layer_names", np.arange(3))), mentions=("layer_names",)),
    Case("h5", "weight-names-a-group", _edit_h5(_set_attr("transformer", "weight_names", [b"transformer"])),
         mentions=("transformer",)),
    Case("h5", "lmconv-metadata-not-json", _edit_h5(_meta("{not json"), kind="h5-lmconv"), mentions=("_lmconv_metadata",)),
    Case("h5", "lmconv-metadata-names-missing", _edit_h5(_meta(json.dumps({"version": 1, "tensors": [{"key": "x:0", "name": "x"}]})),
                                                         kind="h5-lmconv"), mentions=("_lmconv_metadata",)),
    Case("h5", "lmconv-metadata-a-number", _edit_h5(lambda f: (f.__delitem__("_lmconv_metadata"), f.create_dataset("_lmconv_metadata", data=7)),
                                                    kind="h5-lmconv"), mentions=("_lmconv_metadata",)),
    Case("h5", "keras3-hard-link-cycle", _k3(_set("layers/dense/vars/1", _strings), extra=lambda f: f["layers"].__setitem__("loop", f["/"])),
         mentions=("vars/1",)),
    Case("h5", "keras3-name-not-utf8", _k3(extra=_non_utf8_name), mentions=("UTF-8",)),
    Case("h5", "no-weights-at-all", _edit_h5(lambda f: [f.__delitem__(k) for k in list(f)] and None,
                                             kind="keras3", name="model.weights.h5"), mentions=("no",)),
    Case("h5", "nan-with-strict", _hf(_nan), args=("--strict",), mentions=("NaN",),
         inspect=False),  # values are only looked at when they are converted
    # .keras archives
    Case("h5", "keras-not-a-zip", _file(b"PK\x03\x04 but not really a zip" * 8, "m.keras")),
    Case("h5", "keras-text", _file(b"{'class_name': 'Sequential'}\n", "m.keras")),
    Case("h5", "keras-without-weights", _file(_keras_with(lambda v: None), "m.keras"), mentions=("model.weights.h5",)),
    Case("h5", "keras-weights-truncated", _file(_keras_with(lambda v: v.bytes("keras3")[:1000]), "m.keras")),
    Case("h5", "keras-weights-truncated-deflated",
         _file(_keras_with(lambda v: v.bytes("keras3")[:1000], zipfile.ZIP_DEFLATED), "m.keras")),
    Case("h5", "keras-weights-not-hdf5", _file(_keras_with(lambda v: b"\0" * 4096), "m.keras")),
    Case("h5", "keras-weights-empty", _file(_keras_with(lambda v: b""), "m.keras")),
    Case("h5", "keras-archive-truncated", _file(lambda v: v.bytes("keras-archive")[:-30], "m.keras")),
    Case("h5", "keras-archive-cut-in-half", _file(lambda v: v.bytes("keras-archive")[: len(v.bytes("keras-archive")) // 2], "m.keras")),
    Case("h5", "keras-weights-crc-wrong", _file(lambda v: _flip_member_byte(v.bytes("keras-archive")), "m.keras")),
    Case("h5", "keras-weights-in-a-folder", _file(_keras_with(lambda v: v.bytes("keras3"), name="sub/model.weights.h5"), "m.keras"),
         mentions=("model.weights.h5",)),
    Case("h5", "keras-weights-hostile-link", _file(_keras_with(_k3_bytes(_set("layers/dense/vars/1", _external_link("/etc/passwd")))),
                                                   "m.keras"), mentions=("link",)),
]
