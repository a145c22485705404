"""Checks a PyTorch checkpoint's structure before torch.load touches it.

torch.load trusts the file: it allocates the storages a pickle declares, grows a legacy storage to
fit a lying shape, and zipfile allocates what a central directory claims. So every checkpoint is
first read by a dry-run unpickler that resolves no global and calls nothing, and what the pickle
declares (storages, their sizes, each tensor's view) is checked against the bytes in the file. Only
then does :func:`load_checked` call ``torch.load(weights_only=True)``; its failures are sorted into
corrupt (exit 3) and hostile (exit 4). Memory-mapped tensor bytes are checked against their zip
record's CRC-32 when they are loaded (:func:`crc_checked`), since nothing else reads them through zip.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import re
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any, ClassVar

from lmconv.errors import InputError, MissingDependencyError, UnsafeInputError

# The legacy (pre-1.6) format starts with a pickled magic number.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_HEAD = pickle.dumps(_LEGACY_MAGIC, protocol=2)
# A legacy file holds pickles in a row: magic number, protocol version, sys info, the object.
_LEGACY_PICKLES = 4


#: what our pickle dry run raises on damaged bytes (truncated opcodes, wrong argument types, …)
CORRUPT_PICKLE: tuple[type[BaseException], ...] = (
    pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError, struct.error,
    OverflowError, RecursionError,
)
#: what torch.load raises on damaged bytes, beyond those: its zip reader's RuntimeError
CORRUPT_TORCH_LOAD: tuple[type[BaseException], ...] = CORRUPT_PICKLE + (RuntimeError, zipfile.BadZipFile, OSError)


def torch_module() -> Any:
    try:
        import torch
    except ImportError:
        raise MissingDependencyError("reading or writing PyTorch checkpoints needs torch: pip install 'lmconv[torch]'") from None
    return torch


def is_zip_checkpoint(path: Path) -> bool:
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("data.pkl") for n in zf.namelist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def is_legacy_checkpoint(path: Path) -> bool:
    """Compare raw bytes with the pickled magic number: sniffing never unpickles anything."""
    try:
        with open(path, "rb") as fh:
            return fh.read(len(_LEGACY_HEAD)) == _LEGACY_HEAD
    except OSError:
        return False


def _pickles_complete(path: Path) -> bool:
    """Whether the checkpoint's pickles all run to their STOP opcode.

    Parsed with ``pickletools.genops``, which only decodes opcodes and never builds
    or calls anything. The restricted unpickler stops at the first global it does
    not allow, and a file cut inside a GLOBAL opcode names a global that does not
    exist (``collections.OrderedD``): without this check a truncated file would be
    reported as hostile instead of as truncated.
    """
    try:
        if is_zip_checkpoint(path):
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


class _Stub:
    """What the dry run builds instead of any object: it takes any arguments and state and does nothing."""

    _lmconv_global = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Stub:  # noqa: PYI034 - every stub is a plain _Stub
        return object.__new__(_Stub)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass


class _StorageRef(_Stub):
    """A storage as the dry run sees it: its key and the element count and size its pickle declares."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _StorageRef:  # noqa: PYI034
        return object.__new__(cls)

    def __init__(self, key: str, numel: Any, elsize: int | None) -> None:
        self.key, self.numel, self.elsize = key, numel, elsize


_REBUILDS = {"_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_qtensor", "_rebuild_parameter"}


class _DryRun(pickle._Unpickler):  # type: ignore[name-defined,misc]
    """Reads a pickle without resolving a single global or calling anything.

    Python's pure unpickler keeps its memo in a dict (the C one sizes an array by the largest memo
    index a file names), every global becomes an inert :class:`_Stub` subclass, and BYTEARRAY8 (which
    allocates the length it reads) is refused. What it records is the persistent ids (the storages,
    with the sizes the pickle claims) and every tensor's view of its storage (offset, shape, stride),
    which are checked against the file before torch allocates anything.
    """

    dispatch: ClassVar[dict[int, Any]] = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, file: Any) -> None:
        super().__init__(file)
        self.pids: list[Any] = []
        self.views: list[tuple[Any, ...]] = []
        self._globals: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> type:
        key = (str(module), str(name))
        if key not in self._globals:
            attrs: dict[str, Any] = {"_lmconv_global": f"{key[0]}.{key[1]}"}
            if key[0] == "torch._utils" and key[1] in _REBUILDS:
                views = self.views

                def record(cls: type, *args: Any, **kwargs: Any) -> _Stub:
                    views.append(args)
                    return object.__new__(_Stub)

                attrs["__new__"] = record
            self._globals[key] = type("_G", (_Stub,), attrs)
        return self._globals[key]

    def persistent_load(self, pid: Any) -> Any:
        self.pids.append(pid)
        if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage":
            return _StorageRef(str(pid[2]), pid[4], _element_size(pid[1]))
        return _Stub()

    def _no_bytearray(self) -> None:
        raise pickle.UnpicklingError("BYTEARRAY8 has no place in a checkpoint")

    dispatch[pickle.BYTEARRAY8[0]] = _no_bytearray


def _dtype_size(stub: Any) -> int | None:
    """Bytes per element of a pickled ``torch.<dtype>`` global (looked up, never imported), or None."""
    name = getattr(stub, "_lmconv_global", "")
    module, _, attr = name.rpartition(".")
    if module != "torch":
        return None
    torch = torch_module()
    d = getattr(torch, attr, None)
    return int(d.itemsize) if isinstance(d, torch.dtype) else None


def _check_views(views: list[tuple[Any, ...]], path: Path) -> None:
    """Every tensor must lie inside its storage: torch would grow a legacy storage to fit a lying shape."""
    for args in views:
        if len(args) < 4 or not isinstance(args[0], _StorageRef):
            continue
        ref, offset, size, stride = args[:4]
        if ref.elsize is None:
            continue
        # _rebuild_tensor_v3 names the tensor's dtype (its storage is then untyped, counted in bytes)
        tsize = _dtype_size(args[6]) if len(args) >= 7 else None
        tsize = tsize or ref.elsize
        if not (isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)
                and all(type(x) is int for x in (offset, *size, *stride)) and offset >= 0
                and all(x >= 0 for x in (*size, *stride))):
            raise InputError(f"a tensor of storage {ref.key} has a malformed shape or stride ({size!r}, {stride!r})", path=path)
        if type(ref.numel) is not int:
            continue
        if 0 in size:
            continue
        last = offset + sum((n - 1) * st for n, st in zip(size, stride))
        if (last + 1) * tsize > ref.numel * ref.elsize:
            shape = "×".join(map(str, size)) or "scalar"
            raise InputError(f"a tensor of shape {shape} runs past the end of its storage {ref.key} of {ref.numel * ref.elsize} bytes "
                             "(corrupt or hostile)", path=path)


class _Bounded(io.RawIOBase):
    """A file whose ``read(n)`` never asks for more than what is left (a lying length allocates nothing)."""

    def __init__(self, fh: Any, size: int) -> None:
        self._fh, self._size = fh, size

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        left = max(0, self._size - self._fh.tell())
        return self._fh.read(left if n is None or n < 0 else min(n, left))

    def readline(self, limit: int = -1) -> bytes:
        return self._fh.readline(limit)

    def readinto(self, b: Any) -> int:
        return self._fh.readinto(b)

    def tell(self) -> int:
        return self._fh.tell()


def _dry_run(stream: Any, path: Path | None = None) -> tuple[Any, list[Any]]:
    u = _DryRun(stream)
    obj = u.load()
    if path is not None:
        _check_views(u.views, path)
    return obj, u.pids


_STORAGE_SIZES = {
    "UntypedStorage": 1, "ByteStorage": 1, "CharStorage": 1, "BoolStorage": 1, "ShortStorage": 2, "HalfStorage": 2,
    "BFloat16Storage": 2, "IntStorage": 4, "FloatStorage": 4, "LongStorage": 8, "DoubleStorage": 8,
    "ComplexFloatStorage": 8, "ComplexDoubleStorage": 16, "QUInt8Storage": 1, "QInt8Storage": 1, "QInt32Storage": 4,
}


def _element_size(storage_type: Any) -> int | None:
    """Bytes per element of a pickled storage type (``torch.FloatStorage`` → 4), None if unknown."""
    name = getattr(storage_type, "_lmconv_global", "")
    if name in ("torch.UntypedStorage", "torch.storage.UntypedStorage"):
        return 1  # (numel counts bytes: torch >= 2.x pickles new dtypes' storages untyped)
    module, _, attr = name.rpartition(".")
    if module != "torch" or not re.fullmatch(r"[A-Za-z0-9_]*Storage", attr):
        return None
    if attr in _STORAGE_SIZES:
        return _STORAGE_SIZES[attr]
    import warnings

    torch = torch_module()
    with warnings.catch_warnings():  # typed storages are deprecated, and say so on stderr
        warnings.simplefilter("ignore")
        dtype = getattr(getattr(torch, attr, None), "dtype", None)
        if not isinstance(dtype, torch.dtype):
            return None
        return int(torch._utils._element_size(dtype))


def _storages(pids: list[Any], path: Path) -> dict[str, int]:
    """key → bytes, for every storage a pickle's persistent ids declare."""
    out: dict[str, int] = {}
    for pid in pids:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            continue  # not a storage: torch's own loader decides
        _, stype, key, _location, numel = pid[:5]
        size = _element_size(stype)
        if size is None or not isinstance(numel, int):
            continue  # torch refuses what it does not know (as hostile or corrupt)
        if numel < 0:
            raise InputError(f"storage {key} claims a negative size ({numel})", path=path)
        out[str(key)] = max(out.get(str(key), 0), numel * size)
    return out


def _short(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160] or type(exc).__name__


def _record_starts(path: Path, infos: list[zipfile.ZipInfo], size: int) -> dict[str, int]:
    """Where each record's bytes start; every record must lie inside the file (a size in the central
    directory is a claim: zipfile and torch both allocate what it says before reading)."""
    starts: dict[str, int] = {}
    with open(path, "rb") as fh:
        for info in infos:
            fh.seek(info.header_offset)
            local = fh.read(30)
            if len(local) < 30 or local[:4] != b"PK\x03\x04":
                raise InputError(f"record {info.filename} has no valid local header (truncated or corrupt zip)", path=path)
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            start = info.header_offset + 30 + name_len + extra_len
            if start + info.compress_size > size:
                raise InputError(f"record {info.filename} claims {info.compress_size} bytes, past the end of the file "
                                 "(truncated or corrupt)", path=path)
            starts[info.filename] = start
    return starts


def _scan_zip(path: Path) -> dict[str, int]:
    """Check a zip checkpoint's structure against its pickle before torch touches it.

    data.pkl is read through zipfile, which checks its CRC; every storage the pickle declares must
    have its own uncompressed record, inside the file, at least as long as the storage. Returns
    record size → the CRCs of the records of that size (for checking tensor bytes when loaded).
    """
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            pkls = [i for i in infos if i.filename.endswith("/data.pkl") or i.filename == "data.pkl"]
            if len(pkls) != 1:
                raise InputError(f"holds {len(pkls)} data.pkl records; a checkpoint has one", path=path)
            prefix = pkls[0].filename[: -len("data.pkl")]
            _record_starts(path, infos, size)
            pkl = pkls[0]
            if pkl.compress_type != zipfile.ZIP_STORED or pkl.file_size != pkl.compress_size:
                raise InputError("its data.pkl record is compressed or its sizes disagree (corrupt)", path=path)
            raw = zf.read(pkl)  # (its size was checked against the file: no lying allocation)
            records = {i.filename[len(prefix) + len("data/"):]: i for i in infos if i.filename.startswith(prefix + "data/")}
    except InputError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
        raise InputError(f"is not a readable PyTorch checkpoint (truncated or corrupt zip: {_short(exc)})", path=path) from None
    try:
        _, pids = _dry_run(io.BytesIO(raw), path)
    except InputError:
        raise
    except CORRUPT_PICKLE as exc:
        raise InputError(f"is not a readable PyTorch checkpoint (data.pkl is corrupt: {_short(exc)})", path=path) from None
    crcs: dict[int, set[int]] = {}
    for key, nbytes in _storages(pids, path).items():
        info = records.get(key)
        if info is None:
            raise InputError(f"record data/{key}, a storage the pickle names, is missing", path=path)
        if info.compress_type != zipfile.ZIP_STORED:
            raise InputError(f"record data/{key} is compressed; PyTorch stores tensor data uncompressed", path=path)
        if info.file_size < nbytes:
            raise InputError(f"record data/{key} holds {info.file_size} bytes but the pickle declares a storage of {nbytes} bytes "
                             "(truncated or corrupt)", path=path)
    for info in records.values():
        crcs.setdefault(info.file_size, set()).add(info.CRC)
    return crcs


def _scan_legacy(path: Path) -> None:
    """The legacy layout: five pickles, then each storage as an int64 count and its bytes. The storages
    the pickle declares must fit in what follows the pickles (torch allocates them before reading)."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            stream = _Bounded(fh, size)
            magic, _ = _dry_run(stream)
            if magic != _LEGACY_MAGIC:
                raise InputError("is not a PyTorch checkpoint (bad magic number)", path=path)
            _dry_run(stream)  # protocol version
            _dry_run(stream)  # sys info
            _, pids = _dry_run(stream, path)
            keys, _ = _dry_run(stream)
            after = fh.tell()
    except InputError:
        raise
    except CORRUPT_PICKLE as exc:
        raise InputError(f"is not a readable PyTorch checkpoint (truncated or corrupt pickle: {_short(exc)})", path=path) from None
    storages = _storages(pids, path)
    if not isinstance(keys, list):
        raise InputError("is not a readable PyTorch checkpoint (corrupt storage list)", path=path)
    elsizes = {str(p[2]): _element_size(p[1]) for p in pids if isinstance(p, tuple) and len(p) >= 5 and p[0] == "storage"}
    need = sum(8 + storages[str(k)] for k in keys if str(k) in storages)
    if need > size - after:
        raise InputError(f"its storages need {need} bytes but {size - after} follow the pickles (truncated or corrupt)", path=path)
    with open(path, "rb") as fh:
        pos = after
        for key in keys:
            if str(key) not in storages:
                return  # torch decides about a storage of a kind we do not know
            fh.seek(pos)
            (count,) = struct.unpack("<q", fh.read(8))
            if count * (elsizes[str(key)] or 1) != storages[str(key)]:
                raise InputError(f"storage {key} says it holds {count} elements but the pickle declares "
                                 f"{storages[str(key)] // (elsizes[str(key)] or 1)} (corrupt)", path=path)
            pos += 8 + storages[str(key)]


def _scan(path: Path) -> dict[int, set[int]]:
    if is_zip_checkpoint(path):
        return _scan_zip(path)
    if is_legacy_checkpoint(path):
        _scan_legacy(path)
        return {}
    with open(path, "rb") as fh:
        head = fh.read(len(_LEGACY_HEAD))
    if not head:
        raise InputError("is empty, not a PyTorch checkpoint", path=path)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        try:
            zipfile.ZipFile(path).close()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
            raise InputError(f"is not a readable PyTorch checkpoint (truncated or corrupt zip: {_short(exc)})", path=path) from None
        raise InputError("is a zip archive without data.pkl, not a PyTorch checkpoint", path=path)
    if _LEGACY_HEAD.startswith(head):
        raise InputError("is not a readable PyTorch checkpoint (truncated inside its magic number)", path=path)
    raise InputError("is not a PyTorch checkpoint (neither a zip with data.pkl nor a legacy pickle)", path=path)


def _missing_torch_global(message: str) -> str | None:
    """A refused global of torch's own namespace that does not exist (``torch.FloatStorX12``): a
    damaged name, not a hostile one. Only modules already imported are looked at; nothing is imported."""
    import sys

    match = re.search(r"GLOBAL ([\w.]+)", message)
    if not match:
        return None
    module, _, attr = match.group(1).rpartition(".")
    if not (module == "torch" or module.startswith("torch.")) or module not in sys.modules:
        return None
    return None if hasattr(sys.modules[module], attr) else match.group(1)


def load_checked(path: Path) -> tuple[Any, dict[int, set[int]]]:
    """torch.load(weights_only=True) after the checks of :func:`_scan`; also returns its record CRCs."""
    torch = torch_module()
    crcs = _scan(path)
    zipped = is_zip_checkpoint(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipped), crcs
    except pickle.UnpicklingError as exc:
        if not _pickles_complete(path):
            raise InputError("is not a readable PyTorch checkpoint (truncated or corrupt: the pickle stops early)", path=path) from None
        missing = _missing_torch_global(str(exc))
        if missing:
            raise InputError(f"is not a readable PyTorch checkpoint (corrupt: the pickle names {missing}, which does not exist)", path=path) from None
        raise UnsafeInputError(f"refused: the pickle wants to run code ({_refused_global(str(exc))}); lmconv never runs code from a checkpoint", path=path) from None
    except CORRUPT_TORCH_LOAD as exc:
        # torch.load on damaged bytes fails in many ways (EOFError, IndexError from a legacy file cut
        # after its magic number, RuntimeError from the zip reader, struct.error …): all of them mean
        # the same to a user, a checkpoint that cannot be read. A MemoryError or a bug is not one.
        msg = str(exc).split("\n")[0][:200] or type(exc).__name__
        raise InputError(f"is not a readable PyTorch checkpoint (truncated or corrupt: {msg})", path=path) from None


def crc_checked(t: Any, crcs: dict[int, set[int]], path: Path, done: set[tuple[int, int]]) -> Any:
    """``t`` after checking its storage's bytes against the CRC its zip record declares.

    A memory-mapped storage is never read through the zip reader, so nothing else checks it and a
    flipped bit would pass into the converted file. Done once per storage, when a tensor is loaded
    (its bytes are read then anyway; zlib's CRC-32 runs at GB/s).
    """
    st = t.untyped_storage()
    key = (st.data_ptr(), st.nbytes())
    if key in done or st.nbytes() not in crcs:
        return t
    torch = torch_module()
    view = torch.empty(0, dtype=torch.uint8).set_(st, 0, (st.nbytes(),), (1,))
    if zlib.crc32(view.numpy()) not in crcs[st.nbytes()]:
        raise InputError("tensor data does not match its zip record's CRC-32 (corrupt)", path=path)
    done.add(key)
    return t
