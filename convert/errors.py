"""One family of user-facing errors.

Every problem a user can cause or meet (a missing file, a corrupt header, a flag
that makes no sense, a target that exists) is an :class:`LmconvError`. The CLI
prints ``lmconv: error: <message>`` on one line and exits with the subclass's
``exit_code``; anything else is a bug and gets a traceback only with ``--debug``.
Messages name the file first, then the problem, so that a log line is enough.
"""

from __future__ import annotations

import os


class LmconvError(Exception):
    """Base of every error lmconv reports to a user without a traceback."""

    exit_code: int = 1

    def __init__(self, message: str, *, path: str | os.PathLike[str] | None = None) -> None:
        self.path = os.fspath(path) if path is not None else None
        message = " ".join(str(message).split())  # always one line
        super().__init__(f"{self.path}: {message}" if self.path else message)


class UsageError(LmconvError):
    """A flag, format name or option combination that cannot work."""

    exit_code = 2


class PluginClashError(UsageError):
    """Two plugins registered the same name (format, quantiser, architecture, option)."""


class InputError(LmconvError):
    """The source is missing, unreadable, of an unknown kind, or corrupt."""

    exit_code = 3


class UnsafeInputError(InputError):
    """The source tries to do more than hold weights (e.g. a pickle that runs code)."""

    exit_code = 4


class OutputError(LmconvError):
    """The target cannot be written: it exists, its folder is read-only, the disk is full."""

    exit_code = 5


class VerificationError(LmconvError):
    """A conversion or comparison is outside its tolerance."""

    exit_code = 6


class MissingDependencyError(LmconvError):
    """A format needs an optional package (an extra) that is not installed."""

    exit_code = 7


EXIT_INTERRUPTED = 130
