"""Loads plugins from the ``lmconv`` entry-point group and collects what they register.

Plugin loading survives mistakes: a plugin that fails to import, or whose hook
raises, is recorded as broken with its reason and the others keep working.
``LMCONV_DISABLE_PLUGINS=name,...`` skips plugins by entry-point name. Two
plugins claiming the same format name is an error that names both.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from . import hookspecs
from .errors import UsageError

ENTRY_POINT_GROUP = "lmconv"

# Used only when lmconv runs from a source tree that was never installed (no entry
# points in any dist-info). An installed lmconv always goes through entry points.
_BUILTINS_FALLBACK = {
    "safetensors": "lmconv.plugins.safetensors_format",
    "pytorch": "lmconv.plugins.pytorch_format",
    "hf": "lmconv.plugins.hf_directory",
    "gguf": "lmconv.plugins.gguf.format",
    "quantizers": "lmconv.plugins.quantizers.builtin",
    "arch_llama": "lmconv.plugins.arch_llama",
    "arch_gpt2": "lmconv.plugins.arch_gpt2",
    "tf": "lmconv.plugins.tf_checkpoint",
    "h5": "lmconv.plugins.keras_h5",
}


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
        self.quantizers: dict[str, Any] = {}
        self.presets: dict[str, Any] = {}
        self.architectures: dict[str, Any] = {}  # by HF architecture string
        self.gguf_architectures: dict[str, Any] = {}  # by general.architecture
        self._owner: dict[tuple[str, str], str] = {}

    # --- lookups -----------------------------------------------------------------
    def format(self, name: str) -> Any:
        try:
            return self.formats[name.lower()]
        except KeyError:
            raise UsageError(f"unknown format {name!r}; known formats: {', '.join(sorted(self.formats))}") from None

    def architecture_for(self, hf_arch: str | None) -> Any | None:
        return self.architectures.get(hf_arch) if hf_arch else None

    def quant_names(self) -> list[str]:
        return sorted(set(self.quantizers) | set(self.presets))

    def quantizer(self, name: str) -> Any:
        """The kernel for one block or float type (q8_0, q4_K, f16 …), case-insensitive."""
        key = name.lower()
        for k, v in self.quantizers.items():
            if k.lower() == key:
                return v
        raise UsageError(f"unknown quantisation type {name!r}; valid: {', '.join(sorted(self.quantizers))}")

    def quant_policy(self, name: str) -> Any:
        """What ``--quant NAME`` means: a preset (a per-tensor mixture, as llama-quantize's file
        types are) when one has that name, else a single type applied to every quantisable tensor."""
        key = name.lower()
        if key in self.presets:
            return self.presets[key]
        for k, v in self.quantizers.items():
            if k.lower() == key:
                return v
        raise UsageError(f"unknown quantisation type {name!r}; valid: {', '.join(self.quant_names())}")

    # --- registration -----------------------------------------------------------------
    def _claim(self, kind: str, name: str, plugin: str) -> None:
        owner = self._owner.get((kind, name))
        if owner is not None and owner != plugin:
            raise UsageError(f"{kind} {name!r} is registered by two plugins: {owner} and {plugin}; disable one with LMCONV_DISABLE_PLUGINS")
        self._owner[(kind, name)] = plugin

    def _register_format(self, plugin: PluginInfo, fmt: Any) -> None:
        name = fmt.name.lower()
        self._claim("format", name, plugin.name)
        self.formats[name] = fmt
        fmt.plugin = plugin.name
        plugin.provides.append(f"format:{name}")

    def _register_quantizer(self, plugin: PluginInfo, q: Any) -> None:
        from .quantizers import Preset

        table, kind = (self.presets, "preset") if isinstance(q, Preset) else (self.quantizers, "quantizer")
        key = q.name.lower()
        self._claim(kind, key, plugin.name)
        table[key] = q
        plugin.provides.append(f"{kind}:{q.name}")

    def _register_architecture(self, plugin: PluginInfo, arch: Any) -> None:
        for hf in arch.hf_architectures:
            self._claim("architecture", hf, plugin.name)
            self.architectures[hf] = arch
        if arch.gguf_arch:
            self.gguf_architectures.setdefault(arch.gguf_arch, arch)
        plugin.provides.append(f"architecture:{arch.gguf_arch or ','.join(arch.hf_architectures)}")


def _disabled() -> set[str]:
    return {n.strip() for n in os.environ.get("LMCONV_DISABLE_PLUGINS", "").split(",") if n.strip()}


def _entry_points() -> list[tuple[str, Callable[[], ModuleType], str, str, str]]:
    found = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else "?"
        version = ep.dist.version if ep.dist is not None else "?"
        found.append((ep.name, ep.load, ep.value, dist, version))
    if not any(dist == "lmconv" for _, _, _, dist, _ in found):
        for name, mod in _BUILTINS_FALLBACK.items():
            found.append((name, (lambda m=mod: importlib.import_module(m)), mod, "lmconv (source tree)", "dev"))
    return found


def build_registry() -> Registry:
    """Load every plugin and call its hooks, isolating failures per plugin."""
    reg = Registry()
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
    )
    for hook_name, add in hooks:
        for impl in getattr(pm.hook, hook_name).get_hookimpls()[::-1]:  # pluggy lists LIFO
            info = next((i for i, m in loaded if m is impl.plugin), None)
            if info is None or info.status != "ok":
                continue
            try:
                impl.function(register=lambda obj, info=info, add=add: add(info, obj))
            except UsageError as exc:
                if "registered by two plugins" in str(exc):
                    raise
                info.status, info.error = "broken", f"{hook_name}: {exc}"
            except Exception as exc:
                info.status, info.error = "broken", f"{hook_name}: {type(exc).__name__}: {exc}"
    return reg


_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _REGISTRY
    if _REGISTRY is None:
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
