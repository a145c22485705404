"""Loads plugins from the ``lmconv`` entry-point group and collects what they register.

Plugin loading survives mistakes: a plugin that fails to import, or whose hook
raises, is recorded as broken with its reason and the others keep working.
``LMCONV_DISABLE_PLUGINS=name,...`` skips plugins by entry-point name. Two
plugins claiming the same name (a format, a quantiser, an architecture, an option
declared differently) is a :class:`PluginClashError` that names both.
"""

from __future__ import annotations

import importlib
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginClashError, UsageError
from .options import Option
from .quantizers import Preset, Quantizer
from .runtimes import Runtime
from .bridges import TokenizerBridge

ENTRY_POINT_GROUP = "lmconv"

# A source tree that was never installed has no entry points in any dist-info: its built-ins are
# read from the [project.entry-points.lmconv] table of its own pyproject.toml, the one list there is.
_SOURCE_PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def _source_tree_builtins() -> dict[str, str]:
    try:
        with open(_SOURCE_PYPROJECT, "rb") as fh:
            table = tomllib.load(fh)
        return dict(table["project"]["entry-points"][ENTRY_POINT_GROUP])
    except (OSError, KeyError, TypeError, tomllib.TOMLDecodeError):
        return {}


@dataclass
class PluginInfo:
    name: str
    module: str
    distribution: str
    version: str
    status: str = "ok"  # ok | broken | disabled
    error: str = ""
    provides: list[str] = field(default_factory=list)


class Registry:
    """Everything the loaded plugins registered."""

    def __init__(self) -> None:
        self.plugins: list[PluginInfo] = []
        self.formats: dict[str, Any] = {}
        self.quantizers: dict[str, Quantizer] = {}
        self.presets: dict[str, Preset] = {}
        self.architectures: dict[str, Any] = {}  # by family name
        self._by_hf: dict[str, Any] = {}  # HF architecture string → family
        self._by_model_type: dict[str, Any] = {}  # config model_type → family
        self._by_target: dict[tuple[str, str], Any] = {}  # (format, that format's name of the family) → family
        self.options: dict[str, Option] = {}
        self.runtimes: dict[str, Runtime] = {}
        self.tokenizer_bridge: TokenizerBridge | None = None
        self.encodings: dict[str, Any] = {}
        self._owner: dict[tuple[str, str], str] = {}

    # --- lookups -----------------------------------------------------------------
    def format(self, name: str) -> Any:
        try:
            return self.formats[name.lower()]
        except KeyError:
            raise UsageError(f"unknown format {name!r}; known formats: {', '.join(sorted(self.formats))}") from None

    def architecture_for(self, config: dict[str, Any] | str | None) -> Any | None:
        """The family of a model: by ``config["architectures"][0]``, else by ``model_type`` (a bare
        string is taken as an HF architecture name)."""
        if isinstance(config, str):
            return self._by_hf.get(config)
        if not isinstance(config, dict):
            return None
        archs = config.get("architectures")
        if isinstance(archs, list):
            for a in archs:
                if isinstance(a, str) and a in self._by_hf:
                    return self._by_hf[a]
            if any(isinstance(a, str) for a in archs):
                return None  # a class lmconv does not know, even if its model_type looks familiar
        mt = config.get("model_type")
        return self._by_model_type.get(mt) if isinstance(mt, str) else None

    def recognize(self, model: Any) -> list[Any]:
        """The families whose tensors ``model`` (without a config) has, best first: by the families'
        recognition priority, then by how much of each family's layout the model fills."""
        found = [r for a in self.architectures.values() if (r := a.recognize(model)) is not None]
        return sorted(found, key=lambda r: (-r.priority, -r.fit, r.family))

    def architecture_in(self, target: str, name: str) -> Any | None:
        """The family that ``target`` (a format name) calls ``name`` (GGUF's general.architecture)."""
        return self._by_target.get((target, name))

    def target_names(self, target: str) -> list[str]:
        """Every family name a format knows (for messages that list them)."""
        return sorted(n for t, n in self._by_target if t == target)

    def quant_names(self) -> list[str]:
        return sorted({k for k, q in self.quantizers.items() if q.can_quantize} | set(self.presets))

    def quantizer(self, name: str) -> Quantizer:
        """The kernel for one block or float type (q8_0, q4_K, f16 …), case-insensitive."""
        q = self.quantizers.get(name.lower())
        if q is None:
            raise UsageError(f"unknown quantisation type {name!r}; valid: {', '.join(self.quant_names())}")
        return q

    def dequantizer(self, dtype_name: str) -> Quantizer:
        """The plugin that turns ``dtype_name`` blocks back into floats."""
        q = self.quantizers.get(dtype_name.lower())
        if q is None:
            raise UsageError(f"no installed plugin dequantises {dtype_name} blocks")
        return q

    def quant_policy(self, name: str) -> Quantizer | Preset:
        """What ``--quant NAME`` means: a preset (a per-tensor mixture, as llama-quantize's file
        types are) when one has that name, else a single type applied to every quantisable tensor."""
        key = name.lower()
        if key in self.presets:
            return self.presets[key]
        q = self.quantizers.get(key)
        if q is None or not q.can_quantize:
            raise UsageError(f"unknown quantisation type {name!r}; valid: {', '.join(self.quant_names())}")
        return q

    def runtime(self, name: str) -> Runtime:
        try:
            return self.runtimes[name]
        except KeyError:
            raise UsageError(f"unknown runtime {name!r}; known: numpy, {', '.join(sorted(self.runtimes)) or '(none)'}") from None

    # --- registration -----------------------------------------------------------------
    def _claim(self, kind: str, name: str, plugin: str) -> None:
        owner = self._owner.get((kind, name))
        if owner is not None and owner != plugin:
            raise PluginClashError(f"{kind} {name!r} is registered by two plugins: {owner} and {plugin}; "
                                   "disable one with LMCONV_DISABLE_PLUGINS")
        self._owner[(kind, name)] = plugin

    def _register_format(self, plugin: PluginInfo, fmt: Any) -> None:
        name = fmt.name.lower()
        self._claim("format", name, plugin.name)
        self.formats[name] = fmt
        fmt.plugin = plugin.name
        plugin.provides.append(f"format:{name}")

    def _register_quantizer(self, plugin: PluginInfo, q: Quantizer | Preset) -> None:
        if isinstance(q, Preset):
            table: dict[str, Any] = self.presets
            kind = "preset"
        elif isinstance(q, Quantizer):
            table, kind = self.quantizers, "quantizer"
        else:
            raise TypeError(f"register_quantizers takes a Quantizer or a Preset, not {type(q).__name__}")
        key = q.name.lower()
        known = table.get(key)
        if isinstance(q, Quantizer) and known is not None and known.can_quantize != q.can_quantize:
            # A read-only registration (a type some plugin can only dequantise) gives way to a plugin
            # that can produce the type, whichever registers first: that is not a clash.
            if known.can_quantize:
                return
            reader = self._owner.get((kind, key))
            for info in self.plugins:
                if info.name == reader and f"{kind}:{known.name}" in info.provides:
                    info.provides.remove(f"{kind}:{known.name}")
            self._owner[(kind, key)] = plugin.name
        else:
            self._claim(kind, key, plugin.name)
        table[key] = q
        plugin.provides.append(f"{kind}:{q.name}")

    def _register_architecture(self, plugin: PluginInfo, arch: Any) -> None:
        name = getattr(arch, "name", "") or ""
        if not name:
            raise TypeError(f"{type(arch).__name__} has no name")
        self._claim("architecture", name, plugin.name)
        for hf in arch.hf_architectures:
            self._claim("HF architecture", hf, plugin.name)
        targets = arch.layouts()
        for target, layout in targets.items():
            self._claim(f"{target} architecture", layout.arch, plugin.name)
        self.architectures[name] = arch
        for hf in arch.hf_architectures:
            self._by_hf[hf] = arch
        for mt in arch.model_types:
            self._by_model_type.setdefault(mt, arch)
        for target, layout in targets.items():
            self._by_target[(target, layout.arch)] = arch
        arch.plugin = plugin.name
        plugin.provides.append(f"architecture:{name}")

    def _register_option(self, plugin: PluginInfo, opt: Option) -> None:
        same_dest = next((o for o in self.options.values() if o.dest == opt.dest and o.flag != opt.flag), None)
        if same_dest is not None:
            raise PluginClashError(f"options {same_dest.flag} ({', '.join(same_dest.plugins)}) and {opt.flag} "
                                   f"({plugin.name}) both deliver their value as {opt.dest!r}; disable one with "
                                   "LMCONV_DISABLE_PLUGINS")
        known = self.options.get(opt.flag)
        if known is not None:
            if known.signature() != opt.signature():
                raise PluginClashError(f"option {opt.flag} is declared differently by two plugins: "
                                       f"{', '.join(known.plugins)} and {plugin.name}; disable one with LMCONV_DISABLE_PLUGINS")
            self.options[opt.flag] = replace(known, plugins=known.plugins + (plugin.name,))
        else:
            self.options[opt.flag] = replace(opt, plugins=(plugin.name,))
        plugin.provides.append(f"option:{opt.flag}")

    def _register_runtime(self, plugin: PluginInfo, rt: Runtime) -> None:
        if rt.name == "numpy":
            raise PluginClashError(f"runtime 'numpy' is lmconv's own reference; plugin {plugin.name} cannot register it")
        self._claim("runtime", rt.name, plugin.name)
        self.runtimes[rt.name] = rt
        plugin.provides.append(f"runtime:{rt.name}")

    def _register_tokenizer_bridge(self, plugin: PluginInfo, bridge: TokenizerBridge) -> None:
        self._claim("tokenizer bridge", "tokenizer bridge", plugin.name)
        self.tokenizer_bridge = bridge
        plugin.provides.append(f"tokenizer-bridge:{bridge.name}")

    def _register_encoding(self, plugin: PluginInfo, enc: Any) -> None:
        name = getattr(enc, "name", "") or ""
        if not name:
            raise TypeError(f"{type(enc).__name__} has no name")
        self._claim("encoding", name, plugin.name)
        self.encodings[name] = enc
        enc.plugin = plugin.name
        plugin.provides.append(f"encoding:{name}")


def _disabled() -> set[str]:
    return {n.strip() for n in os.environ.get("LMCONV_DISABLE_PLUGINS", "").split(",") if n.strip()}


def _entry_points() -> list[tuple[str, Callable[[], ModuleType], str, str, str]]:
    found = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else "?"
        version = ep.dist.version if ep.dist is not None else "?"
        found.append((ep.name, ep.load, ep.value, dist, version))
    if not any(dist == "lmconv" for _, _, _, dist, _ in found):
        for name, mod in _source_tree_builtins().items():
            found.append((name, (lambda m=mod: importlib.import_module(m)), mod, "lmconv (source tree)", "dev"))
    # Built-ins first, then third-party plugins: a greedy sniff of someone else's cannot shadow a built-in
    # format, and the order does not depend on where each distribution sits on sys.path.
    return sorted(found, key=lambda e: (not e[3].startswith("lmconv") or e[3].startswith("lmconv-"), e[3], e[0]))


def build_registry() -> Registry:
    """Load every plugin and call its hooks, isolating failures per plugin."""
    reg = Registry()
    _BUILDING.append(reg)
    try:
        _load_into(reg)
    finally:
        _BUILDING.pop()
    return reg


def _load_into(reg: Registry) -> None:
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    disabled = _disabled()
    loaded: list[tuple[PluginInfo, ModuleType]] = []
    for name, load, value, dist, version in _entry_points():
        info = PluginInfo(name=name, module=value, distribution=dist, version=version)
        reg.plugins.append(info)
        if name in disabled:
            info.status = "disabled"
            continue
        try:
            module = load()
            pm.register(module, name=name)
        except Exception as exc:  # a broken plugin must not take lmconv down
            info.status, info.error = "broken", f"{type(exc).__name__}: {exc}"
            continue
        loaded.append((info, module))

    hooks = (
        ("register_formats", reg._register_format),
        ("register_quantizers", reg._register_quantizer),
        ("register_architectures", reg._register_architecture),
        ("register_options", reg._register_option),
        ("register_runtimes", reg._register_runtime),
        ("register_tokenizer_bridges", reg._register_tokenizer_bridge),
        ("register_encodings", reg._register_encoding),
    )
    for hook_name, add in hooks:
        for impl in getattr(pm.hook, hook_name).get_hookimpls():  # in registration (= load) order
            info = next((i for i, m in loaded if m is impl.plugin), None)
            if info is None or info.status != "ok":
                continue
            try:
                impl.function(register=lambda obj, info=info, add=add: add(info, obj))
            except PluginClashError:
                raise
            except Exception as exc:
                info.status, info.error = "broken", f"{hook_name}: {type(exc).__name__}: {exc}"


_REGISTRY: Registry | None = None
_BUILDING: list[Registry] = []


def get_registry() -> Registry:
    """The process-wide registry, built on first use. Asked for while it is being built (a plugin's
    hook looking a dtype up), it answers with what is registered so far instead of recursing."""
    global _REGISTRY
    if _REGISTRY is None:
        if _BUILDING:
            return _BUILDING[-1]
        _REGISTRY = build_registry()
    return _REGISTRY


def reset_registry() -> None:
    """Forget the registry (tests that install or disable plugins call this)."""
    global _REGISTRY
    _REGISTRY = None


def plugin_source(info: PluginInfo) -> str:
    """Where a plugin came from, for ``lmconv plugins``."""
    try:
        mod = importlib.import_module(info.module.split(":")[0])
        return str(Path(mod.__file__ or "").parent)
    except Exception:
        return info.module
