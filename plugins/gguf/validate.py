"""Checks a GGUF header before gguf-py parses it, so that a lying count or length fails fast.

gguf-py trusts the counts in the header; a hostile file claiming 2^62 tensors or a
2^40-byte string would make it loop or allocate. Here the header is walked with
cheap bounds checks first (no allocation proportional to any claimed size).
"""

from __future__ import annotations

import struct
from pathlib import Path

from lmconv.errors import InputError

_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
STRING, ARRAY = 8, 9
MAX_DIMS = 4  # GGML_MAX_DIMS


def check_gguf_header(path: Path) -> None:
    """Raise InputError when the header cannot be what it claims; return quietly otherwise."""
    try:
        size = path.stat().st_size
        fh = open(path, "rb")
    except OSError as exc:
        raise InputError(f"cannot open: {exc.strerror}", path=path) from None
    with fh:
        head = fh.read(24)
        if len(head) < 24:
            raise InputError(f"is truncated: {size} bytes is less than a GGUF header", path=path)
        magic, version, n_tensors, n_kv = struct.unpack("<4sIQQ", head)
        if magic != b"GGUF":
            raise InputError("bad magic: not a GGUF file", path=path)
        if version not in (2, 3):
            raise InputError(f"GGUF version {version} is not supported (2 and 3 are)", path=path)
        # Every KV needs at least 8+1+4 bytes and every tensor info at least 8+1+4+8+8.
        if n_kv * 13 > size or n_tensors * 29 > size:
            raise InputError(f"header claims {n_kv} metadata keys and {n_tensors} tensors, more than the file can hold", path=path)
        pos = 24

        def need(n: int) -> None:
            if n < 0 or pos + n > size:
                raise InputError("is truncated inside the metadata", path=path)

        def read(n: int) -> bytes:
            nonlocal pos
            need(n)
            fh.seek(pos)
            pos += n
            return fh.read(n)

        def skip_string() -> None:
            nonlocal pos
            (n,) = struct.unpack("<Q", read(8))
            need(n)
            pos += n

        def skip_value(vtype: int, depth: int = 0) -> None:
            nonlocal pos
            if vtype in _SCALAR:
                need(_SCALAR[vtype])
                pos += _SCALAR[vtype]
            elif vtype == STRING:
                skip_string()
            elif vtype == ARRAY and depth == 0:
                (sub,) = struct.unpack("<I", read(4))
                (count,) = struct.unpack("<Q", read(8))
                if sub in _SCALAR:
                    need(count * _SCALAR[sub])
                    pos += count * _SCALAR[sub]
                elif sub == STRING:
                    if count * 8 > size:
                        raise InputError(f"an array claims {count} strings, more than the file can hold", path=path)
                    for _ in range(count):
                        skip_string()
                elif sub == ARRAY:
                    raise InputError("nested arrays are not supported (llama.cpp reads none)", path=path)
                else:
                    raise InputError(f"array of unknown value type {sub}", path=path)
            else:
                raise InputError(f"unknown metadata value type {vtype}", path=path)

        for _ in range(n_kv):
            skip_string()
            (vtype,) = struct.unpack("<I", read(4))
            skip_value(vtype)
        for _ in range(n_tensors):
            skip_string()
            (n_dims,) = struct.unpack("<I", read(4))
            if n_dims > MAX_DIMS:
                raise InputError(f"a tensor has {n_dims} dimensions; GGUF allows at most {MAX_DIMS}", path=path)
            read(8 * n_dims + 4 + 8)
