"""The ``.index`` table of a TensorFlow checkpoint, read without TensorFlow.

A LevelDB-style table (TF's lib/io/table): data blocks of prefix-compressed key/value entries, an
index block pointing at them, a 48-byte footer. Keys are tensor names, values BundleEntryProto
(dtype, shape, shard_id, offset, size, crc32c); the key "" holds BundleHeaderProto (num_shards).
Read here so that every entry is checked against the data files BEFORE TensorFlow allocates the
tensor an entry declares (TF's reader allocates shape x dtype, then reads).
"""

from __future__ import annotations

import struct
from pathlib import Path

from lmconv.errors import InputError

TABLE_MAGIC = struct.pack("<Q", 0xDB4775248B80FB57)  # LevelDB/TF table footer magic

_CRC_TABLE: list[int] = []


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C (Castagnoli), as LevelDB tables checksum their blocks."""
    if not _CRC_TABLE:
        for i in range(256):
            c = i
            for _ in range(8):
                c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
            _CRC_TABLE.append(c)
    crc ^= 0xFFFFFFFF
    table = _CRC_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class _Corrupt(Exception):
    pass


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _Corrupt("a varint runs past its block")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def _block(data: bytes, offset: int, size: int) -> bytes:
    """A block's contents, after checking its bounds, compression type and checksum."""
    if offset < 0 or size < 0 or offset + size + 5 > len(data):
        raise _Corrupt(f"a block at {offset} (+{size}) runs past the end of the file")
    contents = data[offset: offset + size]
    kind = data[offset + size]
    (stored,) = struct.unpack("<I", data[offset + size + 1: offset + size + 5])
    if masked_crc32c(contents + bytes([kind])) != stored:
        raise _Corrupt(f"block at {offset} fails its checksum")
    if kind != 0:
        raise _Corrupt(f"block at {offset} is compressed (type {kind}); TensorFlow writes them uncompressed")
    return contents


def _entries(block: bytes) -> list[tuple[bytes, bytes]]:
    if len(block) < 4:
        raise _Corrupt("a block is shorter than its restart count")
    (restarts,) = struct.unpack("<I", block[-4:])
    end = len(block) - 4 - 4 * restarts
    if end < 0:
        raise _Corrupt("a block's restart array is larger than the block")
    out: list[tuple[bytes, bytes]] = []
    pos, key = 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        non_shared, pos = _varint(block, pos)
        vlen, pos = _varint(block, pos)
        if shared > len(key) or pos + non_shared + vlen > end:
            raise _Corrupt("an entry runs past its block")
        key = key[:shared] + block[pos: pos + non_shared]
        pos += non_shared
        out.append((key, block[pos: pos + vlen]))
        pos += vlen
    return out


def read_index_table(data: bytes) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of a TF table, in order; raises _Corrupt with a short reason."""
    if len(data) < 48 or data[-8:] != TABLE_MAGIC:
        raise _Corrupt("no table footer (truncated)")
    footer = data[-48:-8]
    _, pos = _varint(footer, 0)  # metaindex handle: offset,
    _, pos = _varint(footer, pos)  # size
    index_off, pos = _varint(footer, pos)
    index_size, pos = _varint(footer, pos)
    out: list[tuple[bytes, bytes]] = []
    for _, handle in _entries(_block(data, index_off, index_size)):
        off, p = _varint(handle, 0)
        size, _ = _varint(handle, p)
        out.extend(_entries(_block(data, off, size)))
    return out


# TF DataType enum values that hold no numbers lmconv converts (string, resource, variant, ...).
_TF_NUMERIC_SIZES = {1: 4, 2: 8, 3: 4, 4: 1, 5: 2, 6: 1, 9: 8, 10: 1, 14: 2, 17: 2, 19: 2, 22: 4, 23: 8,
                     24: 1, 25: 1, 26: 1, 27: 1, 28: 1}
TF_TYPE_NAMES = {7: "string", 20: "resource", 21: "variant", 8: "complex64", 18: "complex128"}


def check_index(prefix: Path, index: Path) -> dict[str, tuple[int, tuple[int, ...]]]:
    """Parse the index and check every entry against the data files: its shard exists, its bytes lie
    inside it, and a numeric entry's byte count is what its shape and dtype need. Returns key →
    (TF dtype enum, shape)."""
    from google.protobuf.message import DecodeError  # protobuf comes with TensorFlow, an optional dependency
    from tensorflow.core.protobuf import tensor_bundle_pb2 as tb

    try:
        data = index.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", path=index) from None
    try:
        table = read_index_table(data)
    except _Corrupt as exc:
        raise InputError(f"is not a readable TensorFlow checkpoint index ({exc})", path=index) from None
    if not table or table[0][0] != b"":
        raise InputError("is not a readable TensorFlow checkpoint index (no bundle header)", path=index)
    try:
        header = tb.BundleHeaderProto.FromString(table[0][1])
    except (DecodeError, ValueError):
        raise InputError("is not a readable TensorFlow checkpoint index (corrupt bundle header)", path=index) from None
    n = header.num_shards
    if not 1 <= n <= 99999:
        raise InputError(f"its header says the checkpoint has {n} data shards (corrupt)", path=index)
    sizes: dict[int, int] = {}
    for i in range(n):
        shard = Path(f"{prefix}.data-{i:05d}-of-{n:05d}")
        try:
            sizes[i] = shard.stat().st_size
        except OSError:
            raise InputError(f"data shard {shard.name} is missing", path=index) from None
    out: dict[str, tuple[int, tuple[int, ...]]] = {}
    seen: set[bytes] = set()
    for key, value in table[1:]:
        if key in seen:
            raise InputError(f"names tensor {key!r} twice", path=index)
        seen.add(key)
        try:
            name = key.decode("utf-8")
            entry = tb.BundleEntryProto.FromString(value)
        except UnicodeDecodeError:
            raise InputError(f"has a tensor name that is not UTF-8: {key[:60]!r}", path=index) from None
        except (DecodeError, ValueError):
            raise InputError(f"entry {key[:60]!r} is corrupt", path=index) from None
        shape = tuple(d.size for d in entry.shape.dim)
        if any(d < 0 for d in shape):
            raise InputError(f"tensor {name!r} has a negative dimension {list(shape)}", path=index)
        out[name] = (entry.dtype, shape)
        if entry.slices:
            continue  # a partitioned variable: its slices are entries of their own
        if entry.shard_id >= n:
            raise InputError(f"tensor {name!r} is in shard {entry.shard_id}, but the checkpoint has {n}", path=index)
        shard = f"{prefix.name}.data-{entry.shard_id:05d}-of-{n:05d}"
        if entry.offset + entry.size > sizes[entry.shard_id]:
            raise InputError(f"tensor {name!r} runs past the end of {shard} ({entry.offset}+{entry.size} > "
                             f"{sizes[entry.shard_id]} bytes: truncated)", path=index)
        item = _TF_NUMERIC_SIZES.get(entry.dtype)
        numel = 1
        for d in shape:
            numel *= d
        if item is None:
            # strings and the like: every element takes at least a length byte; anything else at least a bit
            if numel > 8 * max(entry.size, 1):
                raise InputError(f"tensor {name!r} of shape {list(shape)} claims more elements than its {entry.size} bytes "
                                 "can hold (corrupt)", path=index)
        else:
            need = item * numel
            if need != entry.size:
                raise InputError(f"tensor {name!r} of shape {list(shape)} needs {need} bytes but its entry holds "
                                 f"{entry.size} (corrupt)", path=index)
    return out
