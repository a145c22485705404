"""Bad GGUF inputs: single files, split files, lying headers and lying metadata.

A GGUF file is the magic ``GGUF``, a u32 version, u64 tensor and KV counts, the KV pairs (u64-length
string key, u32 value type, value; arrays are a u32 element type, a u64 count and the elements), the
tensor infos (name, u32 n_dims, u64 dims innermost first, u32 GGML type, u64 offset into the data
section), padding to ``general.alignment`` (32 by default) and the data section. llama.cpp refuses
unknown types, more than 4 dimensions, misaligned offsets, duplicate keys and names, and parts of a
split that do not belong together; so do we. Lying headers must fail before anything the size of the
lie is allocated.

Cases are made from valid GGUFs of the tiny fixtures (see the makers) by parsing them into a
:class:`GGUF` (KV pairs and tensor infos as Python objects), editing that and serialising it again,
or by writing the bytes by hand for headers no writer would produce.
"""

from __future__ import annotations

import math
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import Case, ValidFiles, convert_quietly, file_case, maker, truncations

ROOT = Path(__file__).resolve().parents[2]
FMT = "gguf"

# GGUF value types
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12
_SCALAR = {U8: "B", I8: "b", U16: "H", I16: "h", U32: "I", I32: "i", F32: "f", BOOL: "?", U64: "Q", I64: "q", F64: "d"}
GGML_F32, GGML_Q8_0 = 0, 8


# ----------------------------------------------------------------------------- a tiny GGUF model
@dataclass
class KV:
    key: bytes
    vtype: int
    value: Any  # scalar, bytes/str for STR, (sub, [values]) for ARR; or raw bytes when raw=True
    raw: bool = False


@dataclass
class TI:
    name: bytes
    dims: list[int]
    ggml: int
    offset: int
    n_dims: int | None = None  # written instead of len(dims) when set


@dataclass
class GGUF:
    kvs: list[KV]
    tis: list[TI]
    data: bytes
    version: int = 3
    n_kv: int | None = None  # counts written instead of the real ones when set
    n_tensors: int | None = None
    align: int = 32  # the padding actually written before the data section

    def kv(self, key: str) -> KV:
        return next(k for k in self.kvs if k.key == key.encode())

    def ti(self, name: str) -> TI:
        return next(t for t in self.tis if t.name == name.encode())

    def set(self, key: str, vtype: int, value: Any) -> GGUF:
        for k in self.kvs:
            if k.key == key.encode():
                k.vtype, k.value, k.raw = vtype, value, False
                return self
        self.kvs.append(KV(key.encode(), vtype, value))
        return self

    def drop(self, key: str) -> GGUF:
        self.kvs = [k for k in self.kvs if k.key != key.encode()]
        return self

    def tensor_bytes(self, name: str) -> tuple[int, int]:
        """(start, end) of a tensor's bytes in ``data`` (f32 and q8_0 only)."""
        t = self.ti(name)
        n = math.prod(t.dims)
        size = n * 4 if t.ggml == GGML_F32 else n // 32 * 34
        return t.offset, t.offset + size


def _str(s: bytes | str) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def _value(vtype: int, value: Any) -> bytes:
    if vtype in _SCALAR:
        return struct.pack("<" + _SCALAR[vtype], value)
    if vtype == STR:
        return _str(value)
    if vtype == ARR:
        sub, items = value
        return struct.pack("<IQ", sub, len(items)) + b"".join(_value(sub, v) for v in items)
    raise ValueError(vtype)


def serialise(g: GGUF) -> bytes:
    out = [b"GGUF", struct.pack("<IQQ", g.version, len(g.tis) if g.n_tensors is None else g.n_tensors,
                                len(g.kvs) if g.n_kv is None else g.n_kv)]
    for k in g.kvs:
        out.append(_str(k.key) + struct.pack("<I", k.vtype) + (k.value if k.raw else _value(k.vtype, k.value)))
    for t in g.tis:
        n = len(t.dims) if t.n_dims is None else t.n_dims
        out.append(_str(t.name) + struct.pack(f"<I{len(t.dims)}QIQ", n, *t.dims, t.ggml, t.offset))
    head = b"".join(out)
    return head + b"\0" * (-len(head) % g.align) + g.data


def parse(data: bytes) -> tuple[GGUF, dict[str, int]]:
    """A valid GGUF as a :class:`GGUF`, and its structural offsets (for truncation marks)."""
    magic, version, n_tensors, n_kv = struct.unpack_from("<4sIQQ", data, 0)
    assert magic == b"GGUF"
    pos = 24

    def string() -> bytes:
        nonlocal pos
        (n,) = struct.unpack_from("<Q", data, pos)
        pos += 8 + n
        return data[pos - n:pos]

    def value(vtype: int) -> Any:
        nonlocal pos
        if vtype in _SCALAR:
            fmt = "<" + _SCALAR[vtype]
            (v,) = struct.unpack_from(fmt, data, pos)
            pos += struct.calcsize(fmt)
            return v
        if vtype == STR:
            return string()
        sub, count = struct.unpack_from("<IQ", data, pos)
        pos += 12
        return sub, [value(sub) for _ in range(count)]

    kvs = []
    for _ in range(n_kv):
        key = string()
        (vtype,) = struct.unpack_from("<I", data, pos)
        pos += 4
        kvs.append(KV(key, vtype, value(vtype)))
    end_kv = pos
    tis = []
    for _ in range(n_tensors):
        name = string()
        (n_dims,) = struct.unpack_from("<I", data, pos)
        dims = list(struct.unpack_from(f"<{n_dims}Q", data, pos + 4))
        ggml, offset = struct.unpack_from("<IQ", data, pos + 4 + 8 * n_dims)
        pos += 4 + 8 * n_dims + 12
        tis.append(TI(name, dims, ggml, offset))
    end_ti = pos
    align = next((k.value for k in kvs if k.key == b"general.alignment"), 32)
    start = pos + (-pos % align)
    g = GGUF(kvs, tis, data[start:], version=version, align=align)
    return g, {"header": 24, "kv": end_kv, "infos": end_ti, "data": start}


# ----------------------------------------------------------------------------- valid inputs
@maker("gguf")
def _valid_gguf(path: Path) -> Path:
    path.mkdir()
    convert_quietly(ROOT / "fixtures" / "tiny-llama", path / "tiny.gguf")
    return path / "tiny.gguf"


@maker("gguf-q8_0")
def _valid_q8(path: Path) -> Path:
    path.mkdir()
    convert_quietly(ROOT / "fixtures" / "tiny-llama", path / "tiny-q8_0.gguf", "--quant", "q8_0")
    return path / "tiny-q8_0.gguf"


@maker("gguf-gpt2")
def _valid_gpt2(path: Path) -> Path:
    path.mkdir()
    convert_quietly(ROOT / "fixtures" / "tiny-gpt2", path / "tiny-gpt2.gguf")
    return path / "tiny-gpt2.gguf"


@maker("gguf-split")
def _valid_split(path: Path) -> Path:
    """The f32 tiny-llama split in several parts; the path returned is the first part."""
    path.mkdir()
    convert_quietly(ROOT / "fixtures" / "tiny-llama", path / "split.gguf", "--split-max-size", "150K")
    parts = sorted(path.glob("split-*-of-*.gguf"))
    assert len(parts) >= 3, parts
    return parts[0]


def _model(valid: ValidFiles, kind: str = "gguf", hf_config: bool = True) -> GGUF:
    """A valid file parsed; without ``lmconv.hf_config`` it is what llama.cpp's converter writes:
    the HF config is then derived from the architecture's metadata."""
    g, _ = parse(valid.bytes(kind))
    return g if hf_config else g.drop("lmconv.hf_config")


# ----------------------------------------------------------------------------- builders
Build = Callable[[Path, ValidFiles], Path]


def _file(data: bytes | Callable[[ValidFiles], bytes], name: str = "bad.gguf") -> Callable[[Path, ValidFiles], Path]:
    return file_case(data, name)


def _edit(fn: Callable[[GGUF], GGUF | None], kind: str = "gguf", hf_config: bool = True, name: str = "bad.gguf") -> Build:
    """A valid file of ``kind`` parsed, edited by ``fn`` (in place or returning a new GGUF) and written back."""

    def make(valid: ValidFiles) -> bytes:
        g = _model(valid, kind, hf_config)
        return serialise(fn(g) or g)

    return _file(make, name)


def _raw(n_tensors: int = 0, kvs: bytes = b"", n_kv: int = 0, tail: bytes = b"", version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv) + kvs + tail


def _claimed_string(s: bytes, claimed: int) -> bytes:
    return struct.pack("<Q", claimed) + s


# ----------------------------------------------------------------------------- truncations
def _truncation_cases() -> list[Case]:
    """Cut points come from parsing a GGUF made exactly as the "gguf" maker makes it."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        data = _valid_gguf(Path(tmp) / "gguf").read_bytes()
    g, at = parse(data)
    first = at["data"] + g.tis[0].offset
    last_ti = max(g.tis, key=lambda t: t.offset)
    last = at["data"] + last_ti.offset
    # the 2nd KV's key, the middle of the vocabulary array, the 1st tensor name
    marks = [at["header"], 24 + 8 + len(g.kvs[0].key) + 4, at["kv"] // 2, at["kv"], at["kv"] + 9, at["infos"],
             at["data"], first, first + 100, last, last + 4, len(data) - 4]
    return [Case(FMT, f"cut-at-{n}", _file(lambda v, n=n: v.bytes("gguf")[:n], "cut.gguf"))
            for n in truncations(len(data), marks)]


# ----------------------------------------------------------------------------- edits
def _alignment(vtype: int, value: Any) -> Callable[[GGUF], GGUF]:
    def edit(g: GGUF) -> GGUF:
        return g.set("general.alignment", vtype, value)

    return edit


def _misaligned_offset(g: GGUF) -> None:
    """The second tensor starts 4 bytes late: inside the file, but not on a 32-byte boundary."""
    g.tis[1].offset += 4
    g.data += b"\0" * 32


def _overlap(g: GGUF) -> None:
    """The second tensor starts where the first does: two tensors share bytes."""
    g.tis[1].offset = g.tis[0].offset


def _overlap_partly(g: GGUF) -> None:
    """The tensor after ``blk.0.ffn_down.weight`` starts 32 bytes early (still aligned): they share 32 bytes."""
    start, end = g.tensor_bytes("blk.0.ffn_down.weight")
    nxt = min((t for t in g.tis if t.offset >= end), key=lambda t: t.offset)
    nxt.offset -= 32


def _duplicate_tensor(g: GGUF) -> None:
    g.tis[2].name = g.tis[3].name


def _duplicate_key(g: GGUF) -> None:
    g.kvs.append(KV(b"llama.block_count", U32, 3))


def _key_bytes(key: bytes) -> Callable[[GGUF], None]:
    def edit(g: GGUF) -> None:
        g.kvs.append(KV(key, U32, 1))

    return edit


def _name_bytes(g: GGUF) -> None:
    g.tis[0].name = b"token_embd\xff\xfe.weight"


def _value_bytes(g: GGUF) -> None:
    g.set("general.name", STR, b"tiny \xc3\x28 llama")


def _token_bytes(g: GGUF) -> None:
    sub, tokens = g.kv("tokenizer.ggml.tokens").value
    tokens[5] = b"\xed\xa0\x80"  # a UTF-16 surrogate spelled in UTF-8: not valid UTF-8
    g.set("tokenizer.ggml.tokens", ARR, (sub, tokens))


def _ggml_type(t: int, which: int = 1) -> Callable[[GGUF], None]:
    def edit(g: GGUF) -> None:
        g.tis[which].ggml = t

    return edit


def _n_dims(n: int, dims: list[int] | None = None) -> Callable[[GGUF], None]:
    def edit(g: GGUF) -> None:
        t = g.ti("blk.0.attn_norm.weight")
        t.dims = dims if dims is not None else [64] + [1] * (n - 1)

    return edit


def _dims(name: str, dims: list[int]) -> Callable[[GGUF], None]:
    def edit(g: GGUF) -> None:
        g.ti(name).dims = dims

    return edit


def _transposed(name: str) -> Callable[[GGUF], None]:
    """The tensor's two dims swapped: the same bytes, in a shape the config contradicts."""

    def edit(g: GGUF) -> None:
        t = g.ti(name)
        t.dims = t.dims[::-1]

    return edit


def _nested_array(depth: int) -> Callable[[GGUF], None]:
    def edit(g: GGUF) -> None:
        raw = struct.pack("<IQ", U32, 1) + struct.pack("<I", 7)
        for _ in range(depth - 1):
            raw = struct.pack("<IQ", ARR, 1) + raw
        g.kvs.append(KV(b"general.tags", ARR, raw, raw=True))

    return edit


def _array_of(sub: int, count: int, payload: bytes = b"") -> Callable[[GGUF], None]:
    def edit(g: GGUF) -> None:
        g.kvs.append(KV(b"general.tags", ARR, struct.pack("<IQ", sub, count) + payload, raw=True))

    return edit


def _nan(value: float, tensor: str = "blk.0.ffn_up.weight", index: int = 7) -> Callable[[GGUF], None]:
    def edit(g: GGUF) -> None:
        start, _ = g.tensor_bytes(tensor)
        at = start + 4 * index
        g.data = g.data[:at] + struct.pack("<f", value) + g.data[at + 4:]

    return edit


def _nan_scale(g: GGUF) -> None:
    """A q8_0 block whose f16 scale is NaN: every weight of the block dequantises to NaN."""
    start, _ = g.tensor_bytes("blk.0.ffn_up.weight")
    g.data = g.data[:start] + b"\x00\x7e" + g.data[start + 2:]


def _q8_row(g: GGUF) -> None:
    """Rows of 48 values in a q8_0 tensor whose blocks hold 32."""
    t = g.ti("blk.0.ffn_up.weight")
    t.dims = [48, t.dims[1]]


# ----------------------------------------------------------------------------- tokenizer lies
def _tokens(g: GGUF) -> list[bytes]:
    return g.kv("tokenizer.ggml.tokens").value[1]


def _scores_short(g: GGUF) -> None:
    g.set("tokenizer.ggml.scores", ARR, (F32, [0.0] * (len(_tokens(g)) - 3)))


def _types_long(g: GGUF) -> None:
    g.set("tokenizer.ggml.token_type", ARR, (I32, [1] * (len(_tokens(g)) + 5)))


def _special_id(key: str, value: int, vtype: int = U32) -> Callable[[GGUF], None]:
    def edit(g: GGUF) -> None:
        g.set(key, vtype, value)

    return edit


def _token_type(value: int) -> Callable[[GGUF], None]:
    def edit(g: GGUF) -> None:
        types = list(g.kv("tokenizer.ggml.token_type").value[1])
        types[9] = value
        g.set("tokenizer.ggml.token_type", ARR, (I32, types))

    return edit


def _tokens_not_strings(g: GGUF) -> None:
    g.set("tokenizer.ggml.tokens", ARR, (U32, list(range(len(_tokens(g))))))


def _merge_without_space(g: GGUF) -> None:
    merges = list(g.kv("tokenizer.ggml.merges").value[1])
    merges[3] = b"nospace"
    g.set("tokenizer.ggml.merges", ARR, (STR, merges))


# ----------------------------------------------------------------------------- architecture lies
def _arch(key: str, vtype: int, value: Any) -> Callable[[GGUF], None]:
    def edit(g: GGUF) -> None:
        g.set(key, vtype, value)

    return edit


# ----------------------------------------------------------------------------- split files
def _split(edit: Callable[[list[Path]], Path | None], name_index: int = 0) -> Build:
    """A copy of the valid split model, broken by ``edit(parts)``; SRC is part ``name_index`` (or what edit returns)."""

    def build(folder: Path, valid: ValidFiles) -> Path:
        src = valid.get("gguf-split").parent
        for p in sorted(src.glob("split-*-of-*.gguf")):
            shutil.copyfile(p, folder / p.name)
        parts = sorted(folder.glob("split-*-of-*.gguf"))
        chosen = edit(parts)
        return chosen or parts[name_index]

    return build


def _edit_part(i: int, fn: Callable[[GGUF], None]) -> Callable[[list[Path]], None]:
    def edit(parts: list[Path]) -> None:
        g, _ = parse(parts[i].read_bytes())
        fn(g)
        parts[i].write_bytes(serialise(g))

    return edit


def _swap_parts(parts: list[Path]) -> None:
    a, b = parts[1], parts[2]
    tmp = a.with_name("tmp")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)


def _part_from_other_split(parts: list[Path]) -> None:
    """Part 2 replaced by part 2 of the same model split more finely (same count written into it)."""
    other = parts[0].parent / "other"
    other.mkdir()
    convert_quietly(ROOT / "fixtures" / "tiny-llama", other / "o.gguf", "--split-max-size", "100K")
    g, _ = parse(sorted(other.glob("o-*.gguf"))[1].read_bytes())
    g.set("split.count", U16, len(parts))
    parts[1].write_bytes(serialise(g))
    shutil.rmtree(other)


def _truncate_part(i: int) -> Callable[[list[Path]], None]:
    def edit(parts: list[Path]) -> None:
        parts[i].write_bytes(parts[i].read_bytes()[:-100])

    return edit


# ----------------------------------------------------------------------------- the cases
def C(name: str, build: Build, **kw: Any) -> Case:
    return Case(FMT, name, build, **kw)


HOSTILE = [  # from tests/test_hostile_headers.py, hand-written bytes
    C("n_tensors-2^62", _file(_raw(n_tensors=2**62)), lying=True),
    C("n_kv-2^62", _file(_raw(n_kv=2**62)), lying=True),
    C("string-2^40", _file(_raw(n_kv=1, kvs=_str(b"general.name") + struct.pack("<I", STR) + _claimed_string(b"abc", 2**40))),
      lying=True, mentions=("past the end",)),
    C("key-length-2^63", _file(_raw(n_kv=1, kvs=_claimed_string(b"general.name", 2**63) + b"\0" * 64)), lying=True),
    C("unknown-value-type", _file(_raw(n_kv=1, kvs=_str(b"k") + struct.pack("<I", 99) + b"\0" * 16)), mentions=("type",)),
    C("array-of-2^50", _file(_raw(n_kv=1, kvs=_str(b"k") + struct.pack("<IIQ", ARR, F32, 2**50))), lying=True),
    C("array-of-2^60-strings", _file(_raw(n_kv=1, kvs=_str(b"k") + struct.pack("<IIQ", ARR, STR, 2**60) + b"\0" * 64)),
      lying=True),
    C("bad-version", _file(b"GGUF" + struct.pack("<IQQ", 99, 0, 0)), mentions=("version",)),
    C("version-1", _file(b"GGUF" + struct.pack("<IQQ", 1, 0, 0) + b"\0" * 32), mentions=("version",)),
    C("big-endian", _file(b"GGUF" + struct.pack(">IQQ", 3, 0, 0) + b"\0" * 32), mentions=("big-endian",)),
    C("tensor-past-end", _file(_raw(n_tensors=1, tail=_str(b"t") + struct.pack("<IQQIQ", 2, 1024, 1024, 0, 0) + b"\0" * 64)),
      mentions=("past the end",)),
    C("absurd-dims", _file(_raw(n_tensors=1, tail=_str(b"t") + struct.pack("<I", 2**31) + b"\0" * 64)), lying=True,
      mentions=("dimensions",)),
    C("tensor-claims-2^60-bytes", _file(_raw(n_tensors=1, tail=_str(b"t") + struct.pack("<IQQIQ", 2, 2**30, 2**28, 0, 0)
                                             + b"\0" * 64)), lying=True),
]

BASICS = [
    C("empty", _file(b""), mentions=("empty",)),
    C("bad-magic", _file(lambda v: b"GGUX" + v.bytes("gguf")[4:]), mentions=("magic",)),
    C("magic-only", _file(b"GGUF"), mentions=("truncated",)),
    C("header-only", _file(lambda v: v.bytes("gguf")[:24]), mentions=("truncated",)),
    C("zeros-after-magic", _file(b"GGUF" + b"\0" * 4096), mentions=("version",)),
    C("n_kv-one-too-many", _edit(lambda g: setattr(g, "n_kv", len(g.kvs) + 1))),
    C("n_tensors-one-too-many", _edit(lambda g: setattr(g, "n_tensors", len(g.tis) + 1))),
    C("n_tensors-one-too-few", _edit(lambda g: setattr(g, "n_tensors", len(g.tis) - 1))),
]

LAYOUT = [
    C("alignment-0", _edit(_alignment(U32, 0)), mentions=("alignment",)),
    C("alignment-3", _edit(_alignment(U32, 3)), mentions=("alignment",)),
    C("alignment-2^31", _edit(_alignment(U32, 2**31)), mentions=("alignment",)),
    C("alignment-2^40", _edit(_alignment(U64, 2**40)), mentions=("alignment",)),
    C("alignment-a-string", _edit(_alignment(STR, b"32")), mentions=("alignment",)),
    C("alignment-an-array", _edit(_alignment(ARR, (U32, [32]))), mentions=("alignment",)),
    C("tensor-offset-misaligned", _edit(_misaligned_offset), mentions=("align",)),
    C("tensor-data-overlaps", _edit(_overlap), mentions=("overlap",)),
    C("tensor-data-overlaps-partly", _edit(_overlap_partly), mentions=("overlap",)),
    C("tensor-offset-2^63", _edit(lambda g: setattr(g.tis[0], "offset", 2**63)), mentions=("past the end",)),
    C("tensor-offset-past-end", _edit(lambda g: setattr(g.tis[-1], "offset", len(g.data) + 64)), mentions=("past the end",)),
    C("duplicate-tensor-name", _edit(_duplicate_tensor), mentions=("twice",)),
    C("duplicate-key", _edit(_duplicate_key), mentions=("twice",)),
    C("key-not-utf8", _edit(_key_bytes(b"general.\xff\xfename")), mentions=("UTF-8",)),
    C("key-overlong-utf8", _edit(_key_bytes(b"general.\xc0\xafname")), mentions=("UTF-8",)),
    C("tensor-name-not-utf8", _edit(_name_bytes), mentions=("UTF-8",)),
    C("string-value-not-utf8", _edit(_value_bytes), mentions=("UTF-8",)),
    C("token-not-utf8", _edit(_token_bytes), mentions=("UTF-8",)),
    C("unknown-ggml-type", _edit(_ggml_type(99)), mentions=("type",)),
    C("ggml-type-2^32-1", _edit(_ggml_type(2**32 - 1)), mentions=("type",)),
    C("ggml-type-4-removed-q4_2", _edit(_ggml_type(4)), mentions=("type",)),
    C("n_dims-0-on-a-vector", _edit(_n_dims(0, [])),),
    C("n_dims-5", _edit(_n_dims(5)), mentions=("dimensions",)),
    C("n_dims-8", _edit(_n_dims(8)), mentions=("dimensions",)),
    C("dims-product-overflows", _edit(_dims("blk.0.attn_norm.weight", [2**32, 2**32, 2**32, 2**32])), lying=True),
    C("dims-product-2^64", _edit(_dims("blk.0.attn_norm.weight", [2**32, 2**32])), lying=True),
    C("dim-2^64-1", _edit(_dims("blk.0.attn_norm.weight", [2**64 - 1])), lying=True),
    C("dim-zero", _edit(_dims("blk.0.attn_norm.weight", [0]))),
    C("dims-shrunk", _edit(_dims("blk.0.ffn_up.weight", [64, 64]))),
    C("q8_0-row-not-a-block-multiple", _edit(_q8_row, kind="gguf-q8_0"), mentions=("block",)),
    C("q8_0-block-copy-truncated", _file(lambda v: v.bytes("gguf-q8_0")[:-1000]), target="old.gguf",
      mentions=("past the end",)),
    C("nested-array-depth-2", _edit(_nested_array(2)), mentions=("nested",)),
    C("nested-array-depth-100000", _edit(_nested_array(100_000)), mentions=("nested",)),
    C("array-unknown-element-type", _edit(_array_of(77, 3, b"\0" * 64)), mentions=("type",)),
    C("array-of-u32-past-end", _edit(_array_of(U32, 2**20)), mentions=("past the end",)),
    C("array-of-2^62-u64", _edit(_array_of(U64, 2**62)), lying=True),
    C("architecture-not-a-string", _edit(_arch("general.architecture", U32, 7)), mentions=("general.architecture",)),
    C("hf-config-not-an-object", _edit(_arch("lmconv.hf_config", STR, b"[1, 2]")), mentions=("lmconv.hf_config",)),
    C("hf-config-a-number", _edit(_arch("lmconv.hf_config", U32, 5)), mentions=("lmconv.hf_config",)),
]

TOKENIZER = [  # the tokenizer is rebuilt as HF files; lying fields must not become a broken tokenizer.json
    C("scores-shorter-than-tokens", _edit(_scores_short), target="hf/", mentions=("scores",)),
    C("token-types-longer-than-tokens", _edit(_types_long), target="hf/", mentions=("token_type",)),
    C("bos-id-beyond-vocab", _edit(_special_id("tokenizer.ggml.bos_token_id", 100_000)), target="hf/",
      mentions=("bos_token_id",)),
    C("eos-id-2^32-1", _edit(_special_id("tokenizer.ggml.eos_token_id", 2**32 - 1)), target="hf/", mentions=("eos_token_id",)),
    C("eos-id-negative", _edit(_special_id("tokenizer.ggml.eos_token_id", -1, I32)), target="hf/", mentions=("eos_token_id",)),
    C("bos-id-a-string", _edit(_special_id("tokenizer.ggml.bos_token_id", b"1", STR)), target="hf/",
      mentions=("bos_token_id",)),
    C("pad-id-beyond-vocab-to-gguf", _edit(_special_id("tokenizer.ggml.padding_token_id", 512)), target="old.gguf",
      mentions=("padding_token_id",)),
    C("token-type-unknown", _edit(_token_type(42)), target="hf/", mentions=("token type",)),
    C("token-type-negative", _edit(_token_type(-3)), target="hf/", mentions=("token type",)),
    C("tokens-not-strings", _edit(_tokens_not_strings), target="hf/", mentions=("tokenizer.ggml.tokens",)),
    C("tokens-a-string", _edit(_arch("tokenizer.ggml.tokens", STR, b"abc")), target="hf/",
      mentions=("tokenizer.ggml.tokens",)),
    C("tokenizer-model-an-int", _edit(_arch("tokenizer.ggml.model", U32, 2)), target="hf/", mentions=("tokenizer.ggml.model",)),
    C("merge-without-space", _edit(_merge_without_space), target="hf/", mentions=("merge",)),
    C("scores-not-numbers", _edit(lambda g: g.set("tokenizer.ggml.scores", ARR, (STR, [b"x"] * len(_tokens(g))))),
      target="hf/", mentions=("scores",)),
]

ARCHITECTURE = [  # metadata the HF config is derived from (a GGUF without lmconv's own copy of config.json)
    C("ffn_up-transposed-to-hf", _edit(_transposed("blk.0.ffn_up.weight")), target="hf/", inspect=False,
      mentions=("up_proj", "disagree")),  # inspect lists tensors as they are; only a config-guided layout checks them
    C("ffn_down-transposed-to-hf-without-config", _edit(_transposed("blk.1.ffn_down.weight"), hf_config=False), target="hf/",
      inspect=False, mentions=("down_proj", "disagree")),
    C("block_count-a-string", _edit(_arch("llama.block_count", STR, b"two"), hf_config=False), target="hf/",
      mentions=("llama.block_count",)),
    C("block_count-a-numeric-string", _edit(_arch("llama.block_count", STR, b"2"), hf_config=False), target="hf/",
      mentions=("llama.block_count",)),
    C("block_count-a-float", _edit(_arch("llama.block_count", F32, 2.0), hf_config=False), target="hf/",
      mentions=("llama.block_count",)),
    C("block_count-an-array", _edit(_arch("llama.block_count", ARR, (U32, [2, 2])), hf_config=False), target="hf/",
      mentions=("llama.block_count",)),
    C("block_count-more-than-tensors", _edit(_arch("llama.block_count", U32, 3), hf_config=False), target="hf/",
      mentions=("block",)),
    C("block_count-fewer-than-tensors", _edit(_arch("llama.block_count", U32, 1), hf_config=False), target="hf/",
      mentions=("block",)),
    C("block_count-2^32-1", _edit(_arch("llama.block_count", U32, 2**32 - 1), hf_config=False), target="hf/",
      mentions=("block",)),
    C("head_count-negative", _edit(_arch("llama.attention.head_count", I32, -4), hf_config=False), target="hf/",
      mentions=("llama.attention.head_count",)),
    C("head_count-zero", _edit(_arch("llama.attention.head_count", U32, 0), hf_config=False), target="hf/",
      mentions=("llama.attention.head_count",)),
    C("head_count-not-dividing-width", _edit(_arch("llama.attention.head_count", U32, 3), hf_config=False), target="hf/",
      mentions=("head",)),
    C("head_count_kv-negative", _edit(_arch("llama.attention.head_count_kv", I64, -2), hf_config=False), target="hf/",
      mentions=("llama.attention.head_count_kv",)),
    C("embedding_length-missing", _edit(lambda g: g.drop("llama.embedding_length"), hf_config=False), target="hf/",
      mentions=("llama.embedding_length",)),
    C("embedding_length-disagrees-with-tensors", _edit(_arch("llama.embedding_length", U32, 128), hf_config=False),
      target="hf/"),
    C("rms_epsilon-a-string", _edit(_arch("llama.attention.layer_norm_rms_epsilon", STR, b"1e-5"), hf_config=False),
      target="hf/", mentions=("layer_norm_rms_epsilon",)),
    C("rope_freq_base-nan", _edit(_arch("llama.rope.freq_base", F32, float("nan")), hf_config=False), target="hf/",
      mentions=("llama.rope.freq_base",)),
    C("gpt2-head_count-a-bool", _edit(_arch("gpt2.attention.head_count", BOOL, True), kind="gguf-gpt2", hf_config=False),
      target="hf/", mentions=("gpt2.attention.head_count",)),
    C("gpt2-block_count-negative", _edit(_arch("gpt2.block_count", I32, -1), kind="gguf-gpt2", hf_config=False),
      target="hf/", mentions=("gpt2.block_count",)),
]

SPLIT = [
    C("split-part-missing", _split(lambda ps: ps[2].unlink()), mentions=("missing",)),
    C("split-last-part-missing", _split(lambda ps: ps[-1].unlink()), mentions=("missing",)),
    C("split-count-disagrees-with-name", _split(_edit_part(0, lambda g: g.set("split.count", U16, 2))),
      mentions=("split.count",)),
    C("split-count-disagrees-between-parts", _split(_edit_part(1, lambda g: g.set("split.count", U16, 9))),
      names="split-00002-of-", mentions=("split.count",)),
    C("split-count-2^40", _split(_edit_part(0, lambda g: g.set("split.count", U64, 2**40))), lying=True,
      mentions=("split.count",)),
    C("split-count-a-string", _split(_edit_part(0, lambda g: g.set("split.count", STR, b"6"))), mentions=("split.count",)),
    C("split-no-disagrees", _split(_edit_part(1, lambda g: g.set("split.no", U16, 3))), names="split-00002-of-",
      mentions=("split.no",)),
    C("split-parts-swapped", _split(_swap_parts), names="split-00002-of-", mentions=("split.no",)),
    C("split-part-from-another-split", _split(_part_from_other_split), names="split-00001-of-",
      mentions=("split.tensors.count",)),
    C("split-tensors-count-disagrees", _split(_edit_part(2, lambda g: g.set("split.tensors.count", U16, 5))),
      names="split-00003-of-", mentions=("split.tensors.count",)),
    C("split-tensors-count-too-big", _split(_edit_part(0, lambda g: g.set("split.tensors.count", U16, 22))),
      names="split-00002-of-", mentions=("split.tensors.count",)),
    C("split-second-part-as-src", _split(lambda ps: None, name_index=1), mentions=("first part",)),
    C("split-last-part-as-src", _split(lambda ps: None, name_index=-1), mentions=("first part",)),
    C("split-part-truncated", _split(_truncate_part(1)), names="split-00002-of-", mentions=("past the end",)),
    C("split-part-truncated-to-gguf", _split(_truncate_part(-1)), names="split-0000", target="old.gguf",
      mentions=("past the end",)),
    C("split-part-empty", _split(lambda ps: ps[1].write_bytes(b"")), names="split-00002-of-"),
    C("split-part-not-gguf", _split(lambda ps: ps[1].write_bytes(b"PK\3\4" + b"\0" * 100) and None), names="split-00002-of-",
      mentions=("magic",)),
    C("split-duplicate-tensor-across-parts", _split(_edit_part(1, lambda g: setattr(g.tis[0], "name", b"output.weight"))),
      names="split-00002-of-", mentions=("twice",)),
    C("split-first-part-renamed", _split(lambda ps: ps[0].rename(ps[0].with_name("model.gguf")) or ps[0].with_name("model.gguf")),
      mentions=("split",)),
]

NON_FINITE = [  # inspect=False: the values are only looked at when they are converted
    C("nan-with-strict", _edit(_nan(float("nan"))), args=("--strict",), inspect=False, mentions=("NaN",)),
    C("nan-with-strict-to-hf", _edit(_nan(float("nan"), "output_norm.weight", 3)), args=("--strict",), inspect=False,
      target="hf/", mentions=("NaN",)),
    C("nan-q8_0-scale-with-strict", _edit(_nan_scale, kind="gguf-q8_0"), args=("--strict",), inspect=False,
      mentions=("NaN",)),
]

# --strict on the paths that skip a float load: GGUF -> GGUF takes the tensors as read (``Tensor.undo``),
# and quantised blocks are copied as blocks (pipeline.guard_non_finite checks both).
STRICT_PATHS = [
    C("inf-with-strict-to-gguf", _edit(_nan(float("inf"))), args=("--strict",), inspect=False, target="old.gguf",
      mentions=("Inf",)),
    C("nan-q8_0-scale-with-strict-to-gguf", _edit(_nan_scale, kind="gguf-q8_0"), args=("--strict",), inspect=False,
      target="old.gguf", mentions=("NaN",)),
]

CASES: list[Case] = [
    *BASICS,
    *_truncation_cases(),
    *HOSTILE,
    *LAYOUT,
    *TOKENIZER,
    *ARCHITECTURE,
    *SPLIT,
    *NON_FINITE,
    *STRICT_PATHS,
]
