"""The hooks a plugin can implement.

Each hook receives a ``register`` callback and calls it once per thing it adds, in the style of
``llm`` and datasette. Hooks are called once per process, the first time lmconv needs its
registry, in plugin load order. A hook that raises marks its plugin broken (``lmconv plugins``
shows why); the others carry on. Registering a name another plugin already registered stops
lmconv with :class:`lmconv.errors.PluginClashError`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("lmconv")
hookimpl = pluggy.HookimplMarker("lmconv")


@hookspec
def register_formats(register: Callable[[Any], None]) -> None:
    """Register file formats: call ``register(format)`` with a :class:`lmconv.formats.Format` instance.

    Called when lmconv first needs to sniff, read or write a file. A format's ``name``
    must be unique across all plugins.
    """


@hookspec
def register_quantizers(register: Callable[[Any], None]) -> None:
    """Register quantisers and presets: call ``register(q)`` with a :class:`lmconv.quantizers.Quantizer`
    (one block or float type: q8_0, q4_K …, with its error bound) or a
    :class:`lmconv.quantizers.Preset` (a per-tensor mixture such as q4_k_m).

    Called when a ``--quant`` type is looked up, a block type is dequantised or verified, or
    ``lmconv plugins`` lists them.
    """


@hookspec
def register_architectures(register: Callable[[Any], None]) -> None:
    """Register model families: call ``register(arch)`` with a :class:`lmconv.architectures.Architecture`
    that knows one family: its HF classes and config checks, its reference forward pass, and per
    target format (``"gguf"`` …) the tensor rules and metadata keys that lay it out there.

    Called when a reader or writer needs the family of a model, and by ``lmconv families``.
    """


@hookspec
def register_options(register: Callable[[Any], None]) -> None:
    """Register command-line options: call ``register(option)`` with a :class:`lmconv.options.Option`.

    Called when the ``convert`` command is built, so ``lmconv convert --help`` lists them. The
    value a user gives (parsed to the option's type) reaches readers and writers in
    ``options.extra[option.dest]``. Two plugins may declare the same flag only identically.
    """


@hookspec
def register_runtimes(register: Callable[[Any], None]) -> None:
    """Register runtimes that compute logits from a model file: call ``register(runtime)`` with a
    :class:`lmconv.runtimes.Runtime` (``verify --runtime NAME``; llama.cpp for GGUF files).
    """


@hookspec
def register_tokenizer_bridges(register: Callable[[Any], None]) -> None:
    """Register a translation between a tokenizer's HF files and its runtime-level fields: call
    ``register(bridge)`` with a :class:`lmconv.bridges.TokenizerBridge`.

    Used when a model read from a file with fields only (GGUF) is written as an HF folder, and
    when verification compares a tokenizer given as files with one given as fields.
    """


@hookspec
def register_encodings(register: Callable[[Any], None]) -> None:
    """Register stored encodings of already-quantised weights: call ``register(encoding)`` with a
    :class:`lmconv.encodings.Encoding` (FP8 with scales, GPTQ, AWQ, MXFP4 …).

    Called when a model has been read: each encoding that claims it turns its pieces (weights,
    scales, zero points) back into lazy float tensors before the family is recognised.
    """
