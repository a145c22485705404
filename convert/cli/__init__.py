"""The ``lmconv`` command.

``lmconv SRC DST [options]`` converts; ``lmconv inspect|formats|plugins|families|verify|roundtrip|merge|batch``
are sub-commands. A first argument that names a sub-command is one; anything else is a source
path. The ``convert`` command carries the options the installed plugins declare
(:mod:`lmconv.options`), so it is built when it runs (:mod:`.convert_command`).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import typer

from . import listing, merge_command, verify_commands  # noqa: F401 - their commands register on the app
from .app import ClickException, _err, app
from .batch_command import install_batch_command
from .convert_command import install_convert_command
from .listing import inspect_cmd

install_batch_command()

COMMANDS = {"convert", "inspect", "formats", "plugins", "families", "verify", "roundtrip", "merge", "batch"}


def _normalise_argv(argv: list[str]) -> list[str]:
    if not argv:
        return ["--help"]
    first = argv[0]
    if first in COMMANDS or first in ("--help", "-h", "--version"):
        return argv
    return ["convert", *argv]


def _plain_inspect_args(argv: list[str]) -> dict[str, Any] | None:
    """``inspect PATH [--json] [--debug] [--config FILE]`` as keyword arguments; None for anything else
    (help, unknown flags, odd spellings), which typer then parses and reports as usual."""
    if not argv or argv[0] != "inspect":
        return None
    kw: dict[str, Any] = {"path": None, "as_json": False, "config": None, "debug": False}
    rest = argv[1:]
    i = 0
    while i < len(rest):
        a = rest[i]
        if a == "--json":
            kw["as_json"] = True
        elif a == "--debug":
            kw["debug"] = True
        elif a == "--config" and i + 1 < len(rest) and not rest[i + 1].startswith("-"):
            kw["config"] = rest[i + 1]
            i += 1
        elif a and not a.startswith("-") and kw["path"] is None:
            kw["path"] = a
        else:
            return None
        i += 1
    return kw if kw["path"] is not None else None


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the app, turns every user error into one line and an exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--version"]:
        from importlib.metadata import version

        sys.stdout.write(f"lmconv {version('lmconv')}\n")
        return 0
    debug = "--debug" in argv or os.environ.get("LMCONV_DEBUG") == "1"
    norm = _normalise_argv(argv)
    if norm[0] in ("inspect", "formats", "plugins") or (norm[0] == "convert" and "--verify" not in argv):
        # No BLAS work happens in these commands (casts and quantisers are element-wise), and OpenBLAS
        # starting a thread pool per core doubles numpy's import time. Only a forward-pass
        # verification multiplies matrices, so it keeps the default. Set before numpy is imported.
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file-size limit becomes EFBIG, not a kill
    from ..errors import EXIT_INTERRUPTED, LmconvError

    code = 0
    try:
        fast = _plain_inspect_args(norm)
        if fast is not None:  # the common `inspect PATH [--json]` skips typer's per-parameter pydantic set-up
            inspect_cmd(**fast)
            return 0
        # The convert command carries the installed plugins' options: only `lmconv convert …` loads them.
        install_convert_command(with_plugin_options=norm[0] == "convert")
        rv = app(args=norm, prog_name="lmconv", standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
        if code == EXIT_INTERRUPTED:  # typer turns Ctrl-C into Exit(130) and returns its code
            _err("lmconv: interrupted; no output was written")
    except LmconvError as exc:
        if debug:
            import traceback

            traceback.print_exc()
        _err(f"lmconv: error: {exc}")
        code = exc.exit_code
    except typer.Exit as exc:
        code = exc.exit_code
        if code == EXIT_INTERRUPTED:
            _err("lmconv: interrupted; no output was written")
    except (KeyboardInterrupt, typer.Abort):
        _err("lmconv: interrupted; no output was written")
        code = EXIT_INTERRUPTED
    except ClickException as exc:
        _err(f"lmconv: error: {' '.join(exc.format_message().split())} (see lmconv --help)")
        code = exc.exit_code
    except MemoryError:
        _err("lmconv: error: out of memory")
        code = 1
    except Exception as exc:  # a bug: one line unless --debug
        if debug:
            import traceback

            traceback.print_exc()
        _err(f"lmconv: internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:300]} (run with --debug for the traceback)")
        code = 70
    return code


def entry() -> None:
    sys.exit(main())
