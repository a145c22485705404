"""Importance matrices (``--imatrix FILE``), read and applied as llama-quantize reads and applies them.

An importance matrix holds, for every weight matrix a model multiplies activations with, the mean
of the squared activations each input column saw on some calibration text (llama-imatrix). The
quantisers weight each element's error by it, so the columns that matter keep their precision.

Two file formats, told apart as llama.cpp tells them (a GGUF that parses, else the legacy layout):

* GGUF (llama-imatrix's default): per tensor ``NAME.in_sum2`` (f32, summed squares, one row per
  expert) and ``NAME.counts`` (f32, how many activations each row saw), plus the keys
  ``imatrix.datasets``, ``imatrix.chunk_count`` and ``imatrix.chunk_size`` (llama-quantize refuses a
  GGUF without them). The weights are ``in_sum2 / count`` per row, and 1 for a row that saw nothing.
* legacy ``.dat``: ``int32 n``, then per entry ``int32 len, name, int32 ncall, int32 nval, f32[nval]``
  (values already means times ``ncall``), then optionally ``int32 chunks, int32 len, dataset``.
  The weights are ``values / ncall`` (the values themselves when ``ncall`` is not positive).

Applied per tensor by name; a 3-D tensor of stacked experts takes one row of ``ne0`` weights per
expert, so an entry must hold ``ne0 · n_expert`` values. A tensor the matrix lacks is quantised
without one (the low-bit types that need one refuse: :mod:`.presets`), a size mismatch is an error
except for ``token_embd.weight`` (llama-quantize's rule). The file also yields the
``quantize.imatrix.*`` keys llama-quantize writes.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from lmconv.errors import InputError, UsageError

__all__ = ["ImportanceMatrix", "load_imatrix"]

_f32 = np.float32
KEY_FILE = "quantize.imatrix.file"
KEY_DATASET = "quantize.imatrix.dataset"
KEY_ENTRIES = "quantize.imatrix.entries_count"
KEY_CHUNKS = "quantize.imatrix.chunks_count"


@dataclass
class ImportanceMatrix:
    """The normalised weights of every entry (float32, ``n_rows · ne0`` values), where they came from,
    and what llama-quantize records about them."""

    path: str
    entries: dict[str, np.ndarray]
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    legacy: bool = False

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def weights_for(self, name: str, shape: tuple[int, ...]) -> np.ndarray | None:
        """The weights for tensor ``name`` of ``shape`` (numpy order, experts first) as
        ``(n_expert, ne0)``, or None when the matrix has no entry for it (or, for
        ``token_embd.weight`` only, an entry of the wrong size). Raises UsageError on a size mismatch."""
        w = self.entries.get(name)
        if w is None:
            return None
        ne0 = int(shape[-1]) if shape else 1
        n_exp = int(shape[-3]) if len(shape) >= 3 else 1
        if w.size != ne0 * n_exp:
            if name in ("token_embd.weight", "per_layer_token_embd.weight"):
                return None
            raise UsageError(f"the importance matrix has {w.size} values for {name}, which needs {ne0 * n_exp} "
                             f"({n_exp} × {ne0}): it was made for another model", path=self.path)
        return w.reshape(n_exp, ne0)

    def metadata(self) -> dict[str, Any]:
        """The ``quantize.imatrix.*`` keys llama-quantize writes (strings cut to 127 bytes, as it does)."""
        out: dict[str, Any] = {KEY_FILE: _cut(self.path)}
        if self.datasets:
            out[KEY_DATASET] = _cut(self.datasets[0])
        out[KEY_ENTRIES] = len(self.entries)
        if self.chunk_count > 0:
            out[KEY_CHUNKS] = int(self.chunk_count)
        return out


def _cut(text: str) -> str:
    return text.encode()[:127].decode(errors="ignore")


def load_imatrix(value: str | os.PathLike[str]) -> ImportanceMatrix:
    """Read ``--imatrix FILE`` (GGUF or legacy .dat). A file that cannot be used is one line naming it
    (InputError, exit 3)."""
    path = Path(value)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise InputError(f"cannot read the importance matrix: {exc.strerror}", path=path) from None
    if data[:4] == b"GGUF":
        im = _read_gguf(path, data)
    else:
        im = _read_legacy(path, data)
    im.path = str(value)
    for name, w in im.entries.items():
        if not np.isfinite(w).all():
            raise InputError(f"the importance matrix holds non-finite values for {name}", path=path)
    return im


def _read_legacy(path: Path, data: bytes) -> ImportanceMatrix:
    pos = 0

    def take(fmt: str) -> tuple[Any, ...]:
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise InputError(f"is not an importance matrix (truncated at byte {pos}: neither GGUF nor legacy .dat)",
                             path=path)
        out = struct.unpack_from(fmt, data, pos)
        pos += size
        return out

    (n_entries,) = take("<i")
    if n_entries < 1:
        raise InputError("is not an importance matrix (no entries)", path=path)
    entries: dict[str, np.ndarray] = {}
    for i in range(n_entries):
        (length,) = take("<i")
        if length < 0 or pos + length > len(data):
            raise InputError(f"is not an importance matrix (entry {i + 1}: a name of {length} bytes)", path=path)
        raw = data[pos:pos + length]
        pos += length
        name = raw.split(b"\0", 1)[0].decode("utf-8", errors="replace")
        ncall, nval = take("<ii")
        if nval < 1 or pos + 4 * nval > len(data):
            raise InputError(f"is not an importance matrix (entry {name!r}: {nval} values)", path=path)
        sums = np.frombuffer(data, "<f4", nval, pos).astype(_f32)
        pos += 4 * nval
        if ncall > 0:
            entries[name] = sums / _f32(ncall)
        else:
            entries[name] = sums.copy()
    chunks = 0
    datasets: list[str] = []
    if pos + 4 <= len(data):  # optional trailer: chunk count and the dataset's name
        (chunks,) = struct.unpack_from("<i", data, pos)
        pos += 4
        if pos + 4 <= len(data):
            (length,) = struct.unpack_from("<i", data, pos)
            pos += 4
            if 0 < length and pos + length <= len(data):
                datasets.append(data[pos:pos + length].split(b"\0", 1)[0].decode("utf-8", errors="replace"))
    return ImportanceMatrix(str(path), entries, datasets, chunks, legacy=True)


def _read_gguf(path: Path, data: bytes) -> ImportanceMatrix:
    from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType

    try:
        reader = GGUFReader(path)
    except (ValueError, KeyError, IndexError, TypeError, OverflowError, OSError, struct.error) as exc:
        # gguf-py's reader fails in many ways on a damaged file
        raise InputError(f"is not a readable GGUF importance matrix ({' '.join(str(exc).split())[:120]})",
                         path=path) from None
    fields = reader.fields
    missing = [k for k in ("imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size") if k not in fields]
    if missing:
        raise InputError(f"is a GGUF without importance-matrix metadata ({', '.join(missing)} missing); "
                         f"llama-quantize refuses it too", path=path)

    def scalar(key: str) -> int:
        f = fields[key]
        if f.types[:1] != [GGUFValueType.UINT32]:
            raise InputError(f"{key} is not a uint32", path=path)
        return int(f.parts[f.data[0]][0])

    datasets: list[str] = []
    ds = fields["imatrix.datasets"]
    if ds.types[:2] == [GGUFValueType.ARRAY, GGUFValueType.STRING]:
        datasets = [bytes(ds.parts[i]).decode("utf-8", errors="replace") for i in ds.data]
    chunk_count = scalar("imatrix.chunk_count")
    scalar("imatrix.chunk_size")
    sums: dict[str, Any] = {}
    counts: dict[str, Any] = {}
    for t in reader.tensors:
        name = str(t.name)
        for suffix, into in ((".in_sum2", sums), (".counts", counts)):
            if name.endswith(suffix) and len(name) > len(suffix):
                if t.tensor_type != GGMLQuantizationType.F32:
                    raise InputError(f"{name} is {t.tensor_type.name}, not F32", path=path)
                into[name[: -len(suffix)]] = np.asarray(t.data, dtype=_f32).reshape(-1)
    if not sums and not counts:
        raise InputError("is a GGUF with no importance-matrix entries", path=path)
    entries: dict[str, np.ndarray] = {}
    for name in sorted(set(sums) | set(counts)):
        if name not in sums or name not in counts:
            raise InputError(f"has sums without counts (or counts without sums) for {name}", path=path)
        s, c = sums[name], counts[name]
        if c.size == 0 or s.size % c.size:
            raise InputError(f"{name}: {s.size} sums do not divide into {c.size} rows", path=path)
        ne0 = s.size // c.size
        c64 = c.astype(np.float64)
        cnt = (np.sign(c64) * np.floor(np.abs(c64) + 0.5)).astype(_f32)  # lround (halves away from 0), then (float)
        rows = s.reshape(c.size, ne0)
        with np.errstate(all="ignore"):
            w = np.where(cnt[:, None] > 0, rows / np.where(cnt > 0, cnt, _f32(1))[:, None], _f32(1))
        entries[name] = w.astype(_f32).reshape(-1)
    return ImportanceMatrix(str(path), entries, datasets, chunk_count, legacy=False)
