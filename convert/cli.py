"""The ``lmconv`` command.

``lmconv SRC DST [options]`` converts; ``lmconv inspect|formats|plugins|verify|roundtrip``
are sub-commands. A first argument that names a sub-command is one; anything
else is a source path. Heavy modules (numpy, torch, the plugins) are imported
inside the commands so that ``lmconv --help`` answers at once.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Annotated, Any, Optional

import typer

try:  # newer typer vendors click; its usage exceptions are the ones raised
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - older typer on real click
    from click.exceptions import ClickException

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


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


@app.command("convert", help="Convert SRC to DST (the default command: `lmconv SRC DST` means `lmconv convert SRC DST`).")
def convert_cmd(
    src: Annotated[str, typer.Argument(help="Source: a file, a sharded index, or a Hugging Face model folder.")],
    dst: Annotated[str, typer.Argument(help="Target: its extension picks the format; a folder (or trailing /) means an HF folder.")],
    to: Annotated[Optional[str], typer.Option("--to", help="Output format name (see `lmconv formats`); overrides the extension.")] = None,
    dtype: Annotated[Optional[str], typer.Option("--dtype", help="Cast floating tensors: f32, f16 or bf16.")] = None,
    quant: Annotated[Optional[str], typer.Option("--quant", help="GGUF only: q8_0, q4_0, q4_k_m … (see `lmconv plugins`).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace DST if it exists.")] = False,
    config: Annotated[Optional[str], typer.Option("--config", help="config.json to use instead of the one beside SRC.")] = None,
    no_companions: Annotated[bool, typer.Option("--no-companions", help="Do not write config/tokenizer files beside a lone weights file.")] = False,
    max_shard_size: Annotated[Optional[str], typer.Option("--max-shard-size", help="Shard safetensors output (e.g. 5GB).")] = None,
    split_max_size: Annotated[Optional[str], typer.Option("--split-max-size", help="Split GGUF output (e.g. 2G, 500M).")] = None,
    pre_tokenizer: Annotated[Optional[str], typer.Option("--pre-tokenizer", help="GGUF: llama.cpp pre-tokenizer name when lmconv cannot identify it.")] = None,
    pure: Annotated[bool, typer.Option("--pure", help="Every quantisable tensor gets exactly the --quant type.")] = False,
    tensor_type: Annotated[Optional[list[str]], typer.Option("--tensor-type", help="REGEX=TYPE per-tensor override (repeatable).")] = None,
    output_tensor_type: Annotated[Optional[str], typer.Option("--output-tensor-type", help="Type of output.weight.")] = None,
    token_embedding_type: Annotated[Optional[str], typer.Option("--token-embedding-type", help="Type of token_embd.weight.")] = None,
    leave_output_tensor: Annotated[bool, typer.Option("--leave-output-tensor", help="Do not quantise output.weight.")] = False,
    verify: Annotated[bool, typer.Option("--verify", help="Read DST back and verify it against SRC.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Refuse NaN/Inf weights instead of warning.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar, no summary.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    from .pipeline import convert

    _state["quiet"] = quiet
    extra = {
        "max_shard_size": max_shard_size, "split_max_size": split_max_size, "pre_tokenizer": pre_tokenizer,
        "pure": pure, "tensor_type_overrides": list(tensor_type or []), "output_tensor_type": output_tensor_type,
        "token_embedding_type": token_embedding_type, "leave_output_tensor": leave_output_tensor, "strict": strict,
    }
    bar: _Progress | None = None

    def on_model(model: Any) -> None:
        nonlocal bar
        bar = _Progress(model.nbytes, f"{os.path.basename(src.rstrip('/')) or src} → {os.path.basename(dst.rstrip('/'))}", not quiet)

    start = time.perf_counter()
    try:
        result = convert(
            src, dst, to=to, dtype=dtype, quant=quant, force=force, config=config, companions=not no_companions,
            extra={k: v for k, v in extra.items() if v not in (None, False, [])},
            progress=lambda n: bar.advance(n) if bar else None, warn=_warn, on_model=on_model,
        )
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - start
    if not quiet:
        size = sum(_path_size(p) for p in result.outputs)
        names = ", ".join(str(p) for p in result.outputs)
        _err(f"lmconv: wrote {names} ({_human(size)}, {len(result.model)} tensors, {result.source_format} → {result.target_format}) in {elapsed:.1f}s")
    if verify:
        from .verify import verify_conversion

        report = verify_conversion(result, quiet=quiet)
        if not report.ok:
            from .errors import VerificationError

            raise VerificationError(f"verification failed: {report.summary()} (the file was kept)", path=result.outputs[0])


def _path_size(path: Any) -> int:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)
    return os.path.getsize(path)


@app.command("inspect", help="Show a model's format, architecture, config, tokenizer and tensors.")
def inspect_cmd(
    path: Annotated[str, typer.Argument(help="A file, sharded index or model folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON (schemas/model-manifest.schema.json).")] = False,
    config: Annotated[Optional[str], typer.Option("--config", help="config.json to use instead of the one beside PATH.")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    import json

    from .manifest import manifest
    from .pipeline import read_model

    model = read_model(path, config=config, warn=_warn)
    man = manifest(model)
    if as_json:
        sys.stdout.write(json.dumps(man, indent=2, ensure_ascii=False) + "\n")
        return
    # Plain text, no rich: importing it costs more than the whole header parse (`inspect` answers in < 0.3 s).
    out = [f"{path}  format: {man['format']}  architecture: {man['architecture'] or 'unknown'}"]
    if man["config"]:
        out.append("config: " + ", ".join(f"{k}={v}" for k, v in man["config"].items()))
    if man["tokenizer"]:
        out.append("tokenizer: " + ", ".join(f"{k}={v}" for k, v in man["tokenizer"].items() if v not in (None, [], "")))
    gguf_kv = man["metadata"].get("gguf")
    if isinstance(gguf_kv, dict):
        out.extend(f"  {k} = {v}" for k, v in gguf_kv.items())
    rows = [("name", "shape", "dtype", "bytes")]
    for t in man["tensors"]:
        alias = f" (= {', '.join(t['aliases'])})" if t["aliases"] else ""
        rows.append((t["name"] + alias, "×".join(map(str, t["shape"])) or "scalar", t["dtype"], f"{t['bytes']:,}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for i, r in enumerate(rows):
        out.append(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]:>{widths[3]}}".rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    tot = man["totals"]
    out.append(f"{tot['tensors']} tensors, {tot['parameters']:,} parameters, {_human(tot['bytes'])}")
    sys.stdout.write("\n".join(out) + "\n")


@app.command("formats", help="List the registered formats.")
def formats_cmd(debug: Annotated[bool, typer.Option("--debug")] = False) -> None:
    from .registry import get_registry

    reg = get_registry()
    # Name the plugin and the package it came from, so that a format a user did not expect can be traced.
    packages = {p.name: f"{p.distribution} {p.version}" for p in reg.plugins}
    for name, fmt in sorted(reg.formats.items()):
        ops = "/".join(x for x, ok in (("read", fmt.can_read), ("write", fmt.can_write)) if ok)
        ext = " ".join(fmt.extensions) or ("<folder>" if fmt.is_directory else "")
        plugin = getattr(fmt, "plugin", "?")
        sys.stdout.write(f"{name:<12} {ops:<10} {ext:<40} {fmt.description} [plugin {plugin} from {packages.get(plugin, '?')}]\n")


@app.command("plugins", help="List loaded plugins, where they come from and what they provide.")
def plugins_cmd(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    debug: Annotated[bool, typer.Option("--debug")] = False,
) -> None:
    import json

    from .registry import get_registry, plugin_source

    reg = get_registry()
    rows = [
        {"name": p.name, "module": p.module, "distribution": p.distribution, "version": p.version,
         "status": p.status, "error": p.error, "provides": p.provides, "source": plugin_source(p) if p.status == "ok" else ""}
        for p in reg.plugins
    ]
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    for r in rows:
        line = f"{r['name']:<14} {r['status']:<8} {r['distribution']} {r['version']}  {r['module']}"
        if r["status"] == "broken":
            line += f"  — {r['error']}"
        sys.stdout.write(line + "\n")
        if r["provides"]:
            sys.stdout.write("    " + ", ".join(r["provides"]) + "\n")


# ----------------------------------------------------------------------------- verify / roundtrip
def _print_report(report: Any, title: str) -> None:
    """A rich table of the per-tensor comparison, then config, tokenizer and logits findings."""
    from rich.console import Console
    from rich.table import Table

    from .verify import _fmt

    con = Console(width=None if sys.stdout.isatty() else 180)
    con.print(f"[bold]{title}[/bold]")
    table = Table("tensor", "shape", "dtype", "steps", "max|diff|", "rel err", "rel bound", "cosine", "SNR dB", "status")
    for t in report.tensors:
        name = t.name + (f" (= {', '.join(t.aliases)})" if t.aliases else "")
        shape = "×".join(map(str, t.shape_a if t.shape_a is not None else t.shape_b or [])) or "scalar"
        if t.shape_a is not None and t.shape_b is not None and t.shape_a != t.shape_b:
            shape = f"{'×'.join(map(str, t.shape_a))} → {'×'.join(map(str, t.shape_b))}"
        dtype = t.dtype_a if t.dtype_a == t.dtype_b else f"{t.dtype_a or '-'} → {t.dtype_b or '-'}"
        snr = "inf" if t.exact else _fmt(t.snr_db)
        cos = "-" if t.cosine is None else f"{t.cosine:.6f}"
        style = "green" if t.ok else "red"
        table.add_row(name, shape, dtype, "+".join(t.steps) or "-", _fmt(t.max_abs_diff), _fmt(t.rel_err),
                      _fmt(t.rel_bound), cos, snr, f"[{style}]{t.status}[/{style}]")
    con.print(table)
    if report.skipped:
        con.print("skipped (buffers, not weights): " + ", ".join(report.skipped))
    cfg = report.config
    if cfg.changed:
        for k, v in cfg.changed.items():
            con.print(f"[red]config {k}[/red]: {v['a']!r} → {v['b']!r}")
    if cfg.only_in_a or cfg.only_in_b:
        con.print(f"config keys only in A: {', '.join(cfg.only_in_a) or '-'}; only in B: {', '.join(cfg.only_in_b) or '-'}")
    tok = report.tokenizer
    con.print(f"tokenizer: compared {tok.compared}" + ("" if tok.ok else " — differs"))
    for d in tok.differences:
        con.print(f"  [red]{d['field']}[/red]: {d['detail']}")
    for note in [*cfg.notes, *tok.notes, *report.notes]:
        con.print(f"note: {note}")
    if report.logits:
        lg = report.logits
        con.print(f"logits ({lg['runtime_a']} vs {lg['runtime_b']}, {lg['n_tokens']} tokens): max|diff| {_fmt(lg['max_abs_diff'])}, "
                  f"max|diff|/max|logit| {_fmt(lg['rel_max_diff'])}, KL mean {_fmt(lg['kl_mean'])} max {_fmt(lg['kl_max'])}, "
                  f"top-1 agreement {100 * lg['top1_agreement']:.1f}%")


@app.command("verify", help="Compare model B against model A: every tensor (bit-exact, or within the bound of the cast/quantisation "
                            "it went through), config and tokenizer; optionally the logits. Exit 6 when outside the bounds.")
def verify_cmd(
    a: Annotated[str, typer.Argument(help="The reference model (file, sharded index or folder).")],
    b: Annotated[str, typer.Argument(help="The model to check against it.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON (schemas/verify-report.schema.json).")] = False,
    atol: Annotated[Optional[float], typer.Option("--atol", help="Absolute tolerance: replaces the derived bounds by atol + rtol·|a|.")] = None,
    rtol: Annotated[Optional[float], typer.Option("--rtol", help="Relative tolerance (see --atol).")] = None,
    policy: Annotated[Optional[str], typer.Option("--policy", help="What B went through, for every tensor: lossless, f16, bf16, q8_0, q4_K … (default: read from B).")] = None,
    logits: Annotated[bool, typer.Option("--logits", help="Also run both models and compare their logits.")] = False,
    text: Annotated[Optional[str], typer.Option("--text", help="Text to tokenise for --logits (default: fixed token ids).")] = None,
    runtime: Annotated[str, typer.Option("--runtime", help="numpy (reference forward) or llama.cpp (for GGUF files).")] = "numpy",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the one-line summary.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    from .errors import VerificationError
    from .pipeline import read_model
    from .verify import verify_models

    _state["quiet"] = quiet
    model_a = read_model(a, warn=_warn)
    model_b = read_model(b, warn=_warn)
    report = verify_models(model_a, model_b, policy=policy, atol=atol, rtol=rtol, logits=logits or text is not None,
                           text=text, runtime=runtime)
    if as_json:
        sys.stdout.write(report.to_json() + "\n")
    elif not quiet:
        _print_report(report, f"{b}  vs  {a}")
    if not report.ok:
        raise VerificationError(f"does not match {a}: {report.failure_line()}", path=b)
    if not as_json:
        sys.stdout.write(f"lmconv: verify: {report.summary()}\n")


@app.command("roundtrip", help="Convert FILE to --via FORMAT and back in a temporary folder, and verify both hops against FILE.")
def roundtrip_cmd(
    file: Annotated[str, typer.Argument(help="A model file, sharded index or folder.")],
    via: Annotated[str, typer.Option("--via", help="The format to go through (see `lmconv formats`).")],
    dtype: Annotated[Optional[str], typer.Option("--dtype", help="Cast on the way out: f32, f16 or bf16.")] = None,
    quant: Annotated[Optional[str], typer.Option("--quant", help="Quantise on the way out (GGUF): q8_0, q4_K …")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print both reports as JSON.")] = False,
    atol: Annotated[Optional[float], typer.Option("--atol", help="Absolute tolerance (replaces the derived bounds).")] = None,
    rtol: Annotated[Optional[float], typer.Option("--rtol", help="Relative tolerance (replaces the derived bounds).")] = None,
    keep: Annotated[Optional[str], typer.Option("--keep", help="Keep the intermediate and final files in this (new) folder.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the summary.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    import json
    import shutil
    import tempfile
    from pathlib import Path

    from .errors import OutputError, UsageError, VerificationError
    from .pipeline import convert, detect_format, read_model
    from .registry import get_registry
    from .verify import verify_models

    _state["quiet"] = quiet
    src = Path(file)
    src_fmt = detect_format(src)
    via_fmt = get_registry().format(via)
    if not (via_fmt.can_write and via_fmt.can_read):
        raise UsageError(f"format {via_fmt.name} cannot be both written and read back")
    if not src_fmt.can_write:
        raise UsageError(f"{src}: format {src_fmt.name} can be read but not written, so there is no way back")
    if keep:
        work = Path(keep)
        if work.exists() and any(work.iterdir()):
            raise OutputError("exists and is not empty", path=work)
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="lmconv-roundtrip-"))
    try:
        (work / "via").mkdir()
        (work / "back").mkdir()
        stem = src.name.rstrip("/") or "model"
        for ext in src_fmt.extensions:
            if stem.lower().endswith(ext):
                stem = stem[: -len(ext)]
                break
        mid = work / "via" / (stem if via_fmt.is_directory else stem + via_fmt.extensions[0])
        back = work / "back" / (src.name if not src_fmt.is_directory else stem)
        convert(src, f"{mid}/" if via_fmt.is_directory else mid, to=via_fmt.name, dtype=dtype, quant=quant, warn=_warn)
        convert(mid, f"{back}/" if src_fmt.is_directory else back, to=src_fmt.name, warn=_warn)
        model_a = read_model(src, warn=_warn)
        out_report = verify_models(model_a, read_model(mid, warn=_warn), atol=atol, rtol=rtol)
        # The way back is lossless; the lossy steps of the way out are what the final copy may show.
        policy = {n: t.steps for t in out_report.tensors for n in (t.name, *t.aliases) if t.status in ("exact", "within")}
        back_report = verify_models(model_a, read_model(back, warn=_warn), policy=policy, atol=atol, rtol=rtol)
        if as_json:
            doc = {"ok": out_report.ok and back_report.ok, "via": via_fmt.name, "intermediate": out_report.to_dict(),
                   "final": back_report.to_dict()}
            sys.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
        elif not quiet:
            _print_report(out_report, f"{src} → {via_fmt.name}")
            _print_report(back_report, f"{src} → {via_fmt.name} → {src_fmt.name}")
        for label, rep in (("via " + via_fmt.name, out_report), ("back", back_report)):
            if not rep.ok:
                raise VerificationError(f"round trip through {via_fmt.name} failed ({label}): {rep.failure_line()}", path=src)
        if not as_json:
            sys.stdout.write(f"lmconv: roundtrip via {via_fmt.name}: out {out_report.summary()}\n")
            sys.stdout.write(f"lmconv: roundtrip via {via_fmt.name}: back {back_report.summary()}\n")
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


COMMANDS = {"convert", "inspect", "formats", "plugins", "verify", "roundtrip"}


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
    from .errors import EXIT_INTERRUPTED, LmconvError

    code = 0
    try:
        fast = _plain_inspect_args(norm)
        if fast is not None:  # the common `inspect PATH [--json]` skips typer's per-parameter pydantic set-up
            inspect_cmd(**fast)
            return 0
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


if __name__ == "__main__":
    entry()
