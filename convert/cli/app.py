"""The typer app every command hangs on, and what the commands share: stderr lines, progress, sizes.

Heavy modules (numpy, rich, the plugins) are imported inside the commands, not here, so that
``lmconv --help`` and ``lmconv inspect`` answer at once.
"""

from __future__ import annotations

import sys
from typing import Any

import typer

from lmconv.units import format_size as _human  # noqa: F401 - the commands print sizes through it

try:  # newer typer vendors click; its usage exceptions are the ones raised
    from typer._click.exceptions import ClickException  # noqa: F401 - the CLI catches it (cli/__init__.py)
except ImportError:  # pragma: no cover - older typer on real click
    from click.exceptions import ClickException  # noqa: F401

EXIT_CODES_HELP = (
    "Exit codes: 0 ok · 1 other error · 2 usage (bad flag, unknown format or type) · "
    "3 bad input (missing, truncated, corrupt) · 4 unsafe input (a pickle that would run code) · "
    "5 output error (exists without --force, unwritable, disk full) · 6 verification failed · "
    "7 missing optional dependency · 70 internal error (a bug) · 130 interrupted."
)

app = typer.Typer(
    name="lmconv",
    help=(
        "Convert language-model weights between safetensors, PyTorch, TensorFlow and GGUF.\n\n"
        "Usage: lmconv SRC DST [options]   (e.g. lmconv model/ out.gguf --quant q8_0)\n\n"
        "   or: lmconv SRC DIR/ --quant q8_0,q6_k,q4_k_m   (a quant ladder: one read, one file per type)\n\n"
        "   or: lmconv batch JOBS.toml [--engine ray]   (many jobs, here or on a Ray cluster)\n\n"
        "   or: lmconv COMMAND ...\n\n" + EXIT_CODES_HELP
    ),
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)

_state: dict[str, Any] = {"quiet": False}


def _err(msg: str) -> None:
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def _warn(msg: str) -> None:
    if not _state["quiet"]:
        _err(f"lmconv: warning: {msg}")


class _Progress:
    """A byte-count progress bar on stderr, only when stderr is a terminal and not --quiet."""

    def __init__(self, total: int, label: str, enabled: bool) -> None:
        self.bar = None
        if enabled and total > 0 and sys.stderr.isatty():
            from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

            self.bar = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                                TransferSpeedColumn(), TimeRemainingColumn(), transient=True,
                                console=__import__("rich.console").console.Console(stderr=True))
            self.task = self.bar.add_task(label, total=total)
            self.bar.start()

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
