"""Output that is all or nothing.

Writers write into a staging folder beside the target (same filesystem, so the
final rename is atomic); only when every file is complete and fsynced are they
renamed into place. A failed or interrupted run leaves the target as it was.
A run killed with SIGKILL can leave its staging folder behind: it is named
``.lmconv-tmp-<pid>-<random>`` and the next run in that folder removes it once
that pid is gone.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from pathlib import Path
from types import TracebackType

from .errors import OutputError

STAGING_PREFIX = ".lmconv-tmp-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_staging(folder: Path) -> list[Path]:
    """Remove staging folders left by lmconv runs that no longer exist."""
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(STAGING_PREFIX):
            continue
        try:
            pid = int(entry.name[len(STAGING_PREFIX):].split("-")[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _fsync_tree(path: Path) -> None:
    if path.is_dir():
        for child in path.iterdir():
            _fsync_tree(child)
        fd = os.open(path, os.O_RDONLY)
    else:
        fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def describe_os_error(exc: OSError) -> str:
    """A short, human phrase for the OS errors a writer meets."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on the device"
    if exc.errno == errno.EFBIG:
        return "file too large for this system's limits (RLIMIT_FSIZE or filesystem)"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "permission denied (the folder is not writable)"
    return exc.strerror or str(exc)


class Staging:
    """Context manager: a private folder to write into, then :meth:`commit` moves results into place."""

    def __init__(self, target: Path, *, force: bool = False) -> None:
        self.target = Path(target)
        self.parent = self.target.parent if str(self.target.parent) else Path(".")
        self.force = force
        self.dir: Path | None = None

    def __enter__(self) -> Staging:
        if not self.parent.is_dir():
            raise OutputError("the folder to write into does not exist", path=self.parent)
        clean_stale_staging(self.parent)
        name = f"{STAGING_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        try:
            self.dir = self.parent / name
            self.dir.mkdir()
        except OSError as exc:
            raise OutputError(f"cannot write here: {describe_os_error(exc)}", path=self.parent) from None
        return self

    def path_for(self, target: Path) -> Path:
        assert self.dir is not None
        return self.dir / Path(target).name

    def commit(self, produced: list[Path]) -> list[Path]:
        """fsync everything, then rename each produced path to the same name beside the target."""
        assert self.dir is not None
        finals = [self.parent / p.name for p in produced]
        if not self.force:
            clash = [f for f in finals if f.exists()]
            if clash:
                raise OutputError("already exists; pass --force to replace it", path=clash[0])
        for p in produced:
            _fsync_tree(p)
        for p, final in zip(produced, finals):
            if final.is_dir() and not final.is_symlink():
                # A folder cannot be replaced by rename(2): move the old one into staging first.
                old = self.dir / (final.name + ".old")
                os.replace(final, old)
                os.replace(p, final)
            else:
                os.replace(p, final)
        fd = os.open(self.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return finals

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
