"""``lmconv inspect``, ``formats``, ``plugins`` and ``families``: what a file holds and what is installed."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from .app import _human, _warn, app


@app.command("inspect", help="Show a model's format, architecture, config, tokenizer and tensors.")
def inspect_cmd(
    path: Annotated[str, typer.Argument(help="A file, sharded index or model folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON (schemas/model-manifest.schema.json).")] = False,
    config: Annotated[Optional[str], typer.Option("--config", help="config.json to use instead of the one beside PATH.")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    import json

    from ..encodings import describe_encodings
    from ..manifest import manifest
    from ..pipeline import read_model

    model = read_model(path, config=config, warn=_warn)
    man = manifest(model)
    if as_json:
        sys.stdout.write(json.dumps(man, indent=2, ensure_ascii=False) + "\n")
        return
    # Plain text, no rich: importing it costs more than the whole header parse (`inspect` answers in < 0.3 s).
    out = [f"{path}  format: {man['format']}  architecture: {man['architecture'] or 'unknown'}  "
           f"family: {man['family'] or 'unknown'}"]
    if man["config"]:
        out.append("config: " + ", ".join(f"{k}={v}" for k, v in man["config"].items()))
    out.extend(f"encoding: {line}" for line in describe_encodings(model))
    if man["tokenizer"]:
        out.append("tokenizer: " + ", ".join(f"{k}={v}" for k, v in man["tokenizer"].items() if v not in (None, [], "")))
    for section, values in man["metadata"].items():  # what the format keeps besides config and tokenizer
        if isinstance(values, dict) and "." not in section:
            out.extend(f"  {k} = {v}" for k, v in values.items())
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
    from ..registry import get_registry

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

    from ..registry import get_registry, plugin_source

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



@app.command("families", help="List the model families of the installed plugins: HF classes, names in other formats, forward pass.")
def families_cmd(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    debug: Annotated[bool, typer.Option("--debug")] = False,
) -> None:
    import json

    from ..registry import get_registry

    reg = get_registry()
    rows = [
        {"name": a.name, "hf_architectures": list(a.hf_architectures), "model_types": list(a.model_types),
         "targets": {t: lay.arch for t, lay in a.layouts().items()}, "forward": a.has_forward,
         "plugin": a.plugin, "description": a.description}
        for a in sorted(reg.architectures.values(), key=lambda a: a.name)
    ]
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    for r in rows:
        targets = ", ".join(f"{t}:{n}" for t, n in r["targets"].items()) or "-"
        fwd = "forward" if r["forward"] else "no forward"
        sys.stdout.write(f"{r['name']:<14} {', '.join(r['hf_architectures']):<44} {targets:<16} {fwd:<10} "
                         f"[plugin {r['plugin']}] {r['description']}\n")
