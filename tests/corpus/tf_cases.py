"""Bad TensorFlow checkpoints: TF2 object-based (as lmconv writes them) and TF1 name-based (tf.compat.v1 Saver).

A checkpoint is ``PREFIX.index`` — a LevelDB-style table (checksummed blocks of prefix-compressed
entries, an index block, a 48-byte footer ending in a magic number) mapping each tensor name to a
BundleEntryProto (dtype, shape, shard, offset, size, CRC-32C) — and ``PREFIX.data-0000i-of-0000n``
shards holding the raw bytes. Entries can lie about every one of those fields; TensorFlow's reader
allocates what an entry's shape claims before it reads, so lmconv checks the index first.
Cases are built from valid checkpoints by editing the index with the small table writer below, or by
re-saving the tensors with ``tf.raw_ops.SaveV2``.
"""

from __future__ import annotations

import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tests.test_tensorflow import openai_gpt2_layout, save_tf1

from . import Case, ValidFiles, convert_quietly, maker

ROOT = Path(__file__).resolve().parents[2]
GPT2 = ROOT / "fixtures" / "tiny-gpt2"
C_ATTN = "model/transformer/h/0/attn/c_attn/weight/.ATTRIBUTES/VARIABLE_VALUE"
WTE = "model/transformer/wte/embeddings/.ATTRIBUTES/VARIABLE_VALUE"
DT_STRING, DT_RESOURCE, DT_VARIANT, DT_COMPLEX64 = 7, 20, 21, 8


def _tf() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import tensorflow as tf

    return tf


# ----------------------------------------------------------------------------- valid inputs
@maker("tf2")
def _valid_tf2(folder: Path) -> Path:
    folder.mkdir()
    convert_quietly(GPT2, folder / "m.ckpt")
    return folder / "m.ckpt.index"


@maker("tf2-sharded")
def _valid_tf2_sharded(folder: Path) -> Path:
    folder.mkdir()
    convert_quietly(GPT2, folder / "m.ckpt", "--max-shard-size", "200KB")
    assert len(list(folder.glob("m.ckpt.data-*"))) > 1
    return folder / "m.ckpt.index"


@maker("tf1")
def _valid_tf1(folder: Path) -> Path:
    """OpenAI's GPT-2 layout saved by tf.compat.v1.train.Saver (with a `checkpoint` state file and .meta)."""
    from safetensors.numpy import load_file

    tf = _tf()
    folder.mkdir()
    variables = openai_gpt2_layout(load_file(str(GPT2 / "model.safetensors")))
    save_tf1(tf, variables, folder / "model.ckpt")
    shutil.copy(GPT2 / "config.json", folder / "config.json")
    return folder / "model.ckpt.index"


# ----------------------------------------------------------------------------- the table format
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _block(entries: list[tuple[bytes, bytes]]) -> bytes:
    """A block with every key written whole (one restart point, at 0)."""
    body = b"".join(_varint(0) + _varint(len(k)) + _varint(len(v)) + k + v for k, v in entries)
    return body + struct.pack("<II", 0, 1)


def write_table(entries: list[tuple[bytes, bytes]]) -> bytes:
    """A TF table (one data block, an empty metaindex block, an index block, the footer)."""
    from lmconv.plugins.formats.tensorflow.index import TABLE_MAGIC, masked_crc32c

    out = bytearray()

    def put(contents: bytes) -> tuple[int, int]:
        off = len(out)
        out.extend(contents + b"\0" + struct.pack("<I", masked_crc32c(contents + b"\0")))
        return off, len(contents)

    data = put(_block(entries))
    meta = put(_block([]))
    last = entries[-1][0] if entries else b""
    index = put(_block([(last + b"\xff", _varint(data[0]) + _varint(data[1]))]))
    footer = _varint(meta[0]) + _varint(meta[1]) + _varint(index[0]) + _varint(index[1])
    out.extend(footer + b"\0" * (40 - len(footer)) + TABLE_MAGIC)
    return bytes(out)


def _read_entries(index: Path) -> list[tuple[bytes, bytes]]:
    from lmconv.plugins.formats.tensorflow.index import read_index_table

    return read_index_table(index.read_bytes())


def _copy(kind: str, folder: Path, valid: ValidFiles) -> Path:
    """The valid checkpoint of ``kind`` (and its companions) copied into ``folder``; returns its index."""
    src = valid.get(kind)
    for p in src.parent.iterdir():
        if p.is_file():
            shutil.copy(p, folder / p.name)
    return folder / src.name


def _ckpt(edit: Callable[[Path], None] | None = None, kind: str = "tf2", src: str | None = None) -> Callable[[Path, ValidFiles], Path]:
    """A copy of a valid checkpoint broken by ``edit(index)``; SRC is the index (or ``src`` in the folder)."""

    def build(folder: Path, valid: ValidFiles) -> Path:
        index = _copy(kind, folder, valid)
        if edit:
            edit(index)
        return folder / src if src else index

    return build


def _entries(fn: Callable[[list[tuple[bytes, bytes]]], list[tuple[bytes, bytes]]]) -> Callable[[Path], None]:
    """Rewrite the index table after ``fn`` changed its (key, value) list."""

    def edit(index: Path) -> None:
        index.write_bytes(write_table(fn(_read_entries(index))))

    return edit


def _entry(key: str, change: Callable[[Any], None]) -> Callable[[Path], None]:
    """Change one BundleEntryProto (``change(entry)``) of the index."""

    def fn(entries: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        _tf()
        from tensorflow.core.protobuf import tensor_bundle_pb2 as tb

        out = []
        for k, v in entries:
            if k == key.encode():
                e = tb.BundleEntryProto.FromString(v)
                change(e)
                v = e.SerializeToString()
            out.append((k, v))
        return out

    return _entries(fn)


def _set_shape(*dims: int, size: bool = False) -> Callable[[Any], None]:
    def change(e: Any) -> None:
        del e.shape.dim[:]
        for d in dims:
            e.shape.dim.add().size = d
        if size:
            n = 4
            for d in dims:
                n *= d
            e.size = n

    return change


def _header(num_shards: int) -> Callable[[Path], None]:
    def fn(entries: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        _tf()
        from tensorflow.core.protobuf import tensor_bundle_pb2 as tb

        h = tb.BundleHeaderProto.FromString(entries[0][1])
        h.num_shards = num_shards
        return [(b"", h.SerializeToString()), *entries[1:]]

    return _entries(fn)


def _flip(offset_from: Callable[[int], int], name: str | None = None) -> Callable[[Path], None]:
    """One byte of the index (or of file ``name`` beside it) flipped; ``offset_from(size)`` says where."""

    def edit(index: Path) -> None:
        p = index.parent / name if name else index
        data = bytearray(p.read_bytes())
        data[offset_from(len(data))] ^= 0x5A
        p.write_bytes(bytes(data))

    return edit


def _data(index: Path, i: int = 0) -> Path:
    return sorted(index.parent.glob(index.name[: -len(".index")] + ".data-*"))[i]


def _resave(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    """Re-save every tensor of the checkpoint with tf.raw_ops.SaveV2 after ``change(tensors)``."""

    def edit(index: Path) -> None:
        tf = _tf()
        prefix = str(index)[: -len(".index")]
        reader = tf.train.load_checkpoint(prefix)
        tensors = {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()}
        for p in index.parent.glob(Path(prefix).name + ".*"):
            p.unlink()
        change(tensors)
        names = sorted(tensors)
        tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                          tensors=[tf.constant(tensors[n]) for n in names])

    return edit


def _transpose(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda t: t.__setitem__(key, np.ascontiguousarray(t[key].T))


def _nan(t: dict[str, Any]) -> None:
    a = t[C_ATTN].copy()
    a[0, 0] = np.nan
    t[C_ATTN] = a


def _footer_handles(index: bytes) -> tuple[int, int]:
    """(where the footer's index-block handle starts, counted from the end; the index block's offset)."""
    from lmconv.plugins.formats.tensorflow.index import _varint as varint

    footer = index[-48:-8]
    _, p = varint(footer, 0)
    _, p = varint(footer, p)
    offset, _ = varint(footer, p)
    return 48 - p, offset


def _cut_index(where: Callable[[bytes], int]) -> Callable[[Path], None]:
    def edit(index: Path) -> None:
        data = index.read_bytes()
        index.write_bytes(data[: where(data)])

    return edit


def _truncation_cases() -> list[Case]:
    """Cuts of the index: every byte of the first 24, a spread through the file, around the index
    block and in the footer (offsets are found when a case is built: no TensorFlow at import)."""
    cuts: dict[str, Callable[[bytes], int]] = {f"cut-at-{n}": (lambda d, n=n: n) for n in range(24)}
    cuts.update({f"cut-at-{i}-of-24ths": (lambda d, i=i: len(d) * i // 24) for i in range(1, 24)})
    cuts.update({f"cut-{k}-before-end": (lambda d, k=k: len(d) - k) for k in (1, 2, 4, 7, 8, 9, 20, 40, 46, 47, 48, 49, 50)})
    cuts.update({f"cut-index-block{k:+d}": (lambda d, k=k: _footer_handles(d)[1] + k) for k in (-2, -1, 0, 1, 2)})
    return [Case("tf", f"index-{name}", _ckpt(_cut_index(where))) for name, where in cuts.items()]


def _data_cut(frac: float) -> Callable[[Path], None]:
    def edit(index: Path) -> None:
        d = _data(index)
        data = d.read_bytes()
        d.write_bytes(data[: int(len(data) * frac)])

    return edit


def _state_file(text: str, drop_index: bool = False) -> Callable[[Path], None]:
    def edit(index: Path) -> None:
        (index.parent / "checkpoint").write_text(text)
        if drop_index:
            index.unlink()

    return edit


def _flip_footer_handle(index: Path) -> None:
    data = bytearray(index.read_bytes())
    data[len(data) - _footer_handles(bytes(data))[0]] ^= 0x5A
    index.write_bytes(bytes(data))


def _duplicate_key(entries: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    i = next(n for n, (k, _) in enumerate(entries) if k == C_ATTN.encode())
    return entries[: i + 1] + [entries[i]] + entries[i + 1:]


def _rename(old: str, new: bytes) -> Callable[[list[tuple[bytes, bytes]]], list[tuple[bytes, bytes]]]:
    def fn(entries: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        return sorted((new if k == old.encode() else k, v) for k, v in entries)

    return fn


def _garbage_entry(entries: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(k, b"\xff\xff\xff\xff\x0f" if k == C_ATTN.encode() else v) for k, v in entries]


def _only_bookkeeping(t: dict[str, Any]) -> None:
    for k in list(t):
        if k != "save_counter/.ATTRIBUTES/VARIABLE_VALUE":
            del t[k]


CASES: list[Case] = [
    # the index file
    Case("tf", "index-empty", _ckpt(lambda i: i.write_bytes(b""))),
    Case("tf", "index-empty-given-prefix", _ckpt(lambda i: i.write_bytes(b""), src="m.ckpt"), names="m.ckpt"),
    *_truncation_cases(),
    Case("tf", "index-magic-corrupt", _ckpt(_flip(lambda n: n - 3))),
    Case("tf", "index-footer-handle-corrupt", _ckpt(_flip_footer_handle), mentions=("index",)),
    Case("tf", "index-data-block-corrupt", _ckpt(_flip(lambda n: 40)), mentions=("checksum",)),
    Case("tf", "index-block-in-the-middle-corrupt", _ckpt(_flip(lambda n: n // 2)), mentions=("checksum",)),
    Case("tf", "index-all-zeros", _ckpt(lambda i: i.write_bytes(bytes(2000)))),
    Case("tf", "index-text", _ckpt(lambda i: i.write_bytes(b"model_checkpoint_path: \"m.ckpt\"\n" * 40))),
    Case("tf", "index-no-header-entry", _ckpt(_entries(lambda e: e[1:])), mentions=("header",)),
    Case("tf", "index-zero-shards", _ckpt(_header(0)), mentions=("shards",)),
    Case("tf", "index-two-shards-claimed", _ckpt(_header(2)), mentions=("missing",)),
    Case("tf", "index-entry-garbage", _ckpt(_entries(_garbage_entry)), mentions=("corrupt",)),
    Case("tf", "index-name-twice", _ckpt(_entries(_duplicate_key)), mentions=("twice",)),
    Case("tf", "index-name-non-utf8", _ckpt(_entries(_rename(C_ATTN, b"model/\xff\xfe/.ATTRIBUTES/VARIABLE_VALUE"))),
         mentions=("UTF-8",)),
    # entries that lie
    Case("tf", "tensor-claims-8GiB-past-its-shard", _ckpt(_entry(C_ATTN, _set_shape(2**16, 2**15, size=True))), lying=True,
         mentions=("past the end",)),
    Case("tf", "tensor-shape-claims-4TiB", _ckpt(_entry(C_ATTN, _set_shape(2**20, 2**20))), lying=True, mentions=("needs",)),
    Case("tf", "tensor-shape-disagrees-with-size", _ckpt(_entry(C_ATTN, _set_shape(3, 3))), mentions=("needs",)),
    Case("tf", "tensor-offset-past-end", _ckpt(_entry(C_ATTN, lambda e: setattr(e, "offset", 2**40))), lying=True,
         mentions=("past the end",)),
    Case("tf", "tensor-in-shard-7-of-1", _ckpt(_entry(C_ATTN, lambda e: setattr(e, "shard_id", 7))), mentions=("shard",)),
    Case("tf", "string-claims-2^40-elements", _ckpt(_entry(C_ATTN, lambda e: (setattr(e, "dtype", DT_STRING),
                                                                              _set_shape(2**20, 2**20)(e)))), lying=True),
    Case("tf", "tensor-negative-dimension", _ckpt(_entry(C_ATTN, _set_shape(-1, 64))), mentions=("dimension",)),
    Case("tf", "tensor-data-crc-wrong", _ckpt(_entry(C_ATTN, lambda e: setattr(e, "crc32c", e.crc32c ^ 1))), mentions=("c_attn",),
         inspect=False),  # the data's checksum is checked when the tensor is read
    Case("tf", "tensor-data-bytes-corrupt", _ckpt(_flip(lambda n: n // 2, "m.ckpt.data-00000-of-00001")), mentions=("corrupt",),
         inspect=False),  # the data's checksum is checked when the tensor is read
    # dtypes that are no numbers
    Case("tf", "tensor-dtype-resource", _ckpt(_entry(C_ATTN, lambda e: setattr(e, "dtype", DT_RESOURCE))), mentions=("resource",)),
    Case("tf", "tensor-dtype-variant", _ckpt(_entry(C_ATTN, lambda e: setattr(e, "dtype", DT_VARIANT))), mentions=("variant",)),
    Case("tf", "tensor-of-strings", _ckpt(_resave(lambda t: t.__setitem__(C_ATTN, np.array([b"a", b"bc"], dtype=object)))),
         mentions=("string",)),
    Case("tf", "tensor-of-complex", _ckpt(_resave(lambda t: t.__setitem__(C_ATTN, np.zeros((64, 192), np.complex64)))),
         mentions=("complex",)),
    Case("tf", "metadata-not-a-string", _ckpt(_resave(lambda t: t.__setitem__("_lmconv_metadata", np.float32(1)))),
         mentions=("_lmconv_metadata",)),
    Case("tf", "metadata-not-json", _ckpt(_resave(lambda t: t.__setitem__("_lmconv_metadata", b"{not json"))),
         mentions=("_lmconv_metadata",)),
    Case("tf", "only-bookkeeping", _ckpt(_resave(_only_bookkeeping)), mentions=("no weights",)),
    # shapes
    Case("tf", "c_attn-transposed", _ckpt(_resave(_transpose(C_ATTN))), mentions=("c_attn",)),
    Case("tf", "embedding-transposed-to-gguf", _ckpt(_resave(_transpose(WTE))), target="old.gguf", mentions=("wte",)),
    Case("tf", "nan-with-strict", _ckpt(_resave(_nan)), args=("--strict",), mentions=("NaN",),
         inspect=False),  # values are only looked at when they are converted
    # data shards
    Case("tf", "data-missing", _ckpt(lambda i: _data(i).unlink()), mentions=("missing",)),
    Case("tf", "data-empty", _ckpt(lambda i: _data(i).write_bytes(b"")), mentions=("truncated",)),
    Case("tf", "data-cut-in-half", _ckpt(_data_cut(0.5)), mentions=("truncated",)),
    Case("tf", "data-last-byte-missing", _ckpt(lambda i: _data(i).write_bytes(_data(i).read_bytes()[:-1])), mentions=("truncated",)),
    Case("tf", "data-given-as-src-missing-index", _ckpt(lambda i: i.unlink(), src="m.ckpt.data-00000-of-00001")),
    Case("tf", "sharded-second-data-missing", _ckpt(lambda i: _data(i, 1).unlink(), kind="tf2-sharded"), mentions=("missing",)),
    Case("tf", "sharded-second-data-truncated", _ckpt(lambda i: _data(i, 1).write_bytes(_data(i, 1).read_bytes()[:100]),
                                                      kind="tf2-sharded"), mentions=("truncated",)),
    # folders and state files
    Case("tf", "folder-without-index", _ckpt(lambda i: (_state_file('model_checkpoint_path: "m.ckpt"\n')(i), i.unlink()),
                                             src="."), names="in", mentions=("m.ckpt.index",)),
    Case("tf", "folder-state-names-missing", _ckpt(_state_file('model_checkpoint_path: "other.ckpt"\n'), src="."), names="in",
         mentions=("other.ckpt",)),
    Case("tf", "prefix-without-index", _ckpt(lambda i: i.unlink(), src="m.ckpt"), names="m.ckpt"),
    # TF1 (tf.compat.v1 Saver, OpenAI's GPT-2 layout)
    Case("tf", "tf1-index-truncated", _ckpt(lambda i: i.write_bytes(i.read_bytes()[:-100]), kind="tf1")),
    Case("tf", "tf1-index-corrupt", _ckpt(_flip(lambda n: 30), kind="tf1"), mentions=("checksum",)),
    Case("tf", "tf1-data-missing", _ckpt(lambda i: _data(i).unlink(), kind="tf1"), mentions=("missing",)),
    Case("tf", "tf1-data-truncated", _ckpt(_data_cut(0.9), kind="tf1"), mentions=("truncated",)),
    Case("tf", "tf1-folder-index-missing", _ckpt(lambda i: i.unlink(), kind="tf1", src="."), names="in",
         mentions=("model.ckpt.index",)),
    Case("tf", "tf1-wte-claims-8GiB", _ckpt(_entry("model/wte", _set_shape(2**16, 2**15, size=True)), kind="tf1"), lying=True,
         mentions=("past the end",)),
    Case("tf", "tf1-c_attn-not-1-in-out", _ckpt(_resave(lambda t: t.__setitem__("model/h0/attn/c_attn/w", t["model/h0/attn/c_attn/w"][0])),
                                                kind="tf1"), mentions=("c_attn",)),
]
