"""The three hooks a plugin can implement.

Each hook receives a ``register`` callback and calls it once per thing it adds,
in the style of ``llm`` and datasette. Hooks are called once per process, the
first time lmconv needs its registry, in plugin load order. A hook that raises
marks its plugin broken (``lmconv plugins`` shows why); the others carry on.
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
    must be unique across all plugins; a clash is reported naming both plugins.
    """


@hookspec
def register_quantizers(register: Callable[[Any], None]) -> None:
    """Register quantisers and presets: call ``register(q)`` with a
    :class:`lmconv.quantizers.Quantizer` (one block type: q8_0, q4_K …) or a
    :class:`lmconv.quantizers.Preset` (a per-tensor mixture such as q4_k_m).

    Called when a ``--quant`` type is looked up or ``lmconv plugins`` lists them.
    """


@hookspec
def register_architectures(register: Callable[[Any], None]) -> None:
    """Register model architectures: call ``register(arch)`` with a
    :class:`lmconv.architectures.Architecture` that knows the HF ⇄ GGUF tensor names,
    config ⇄ metadata keys, and layout transforms of one family (llama, gpt2 …).

    Called when a writer or reader needs to map names for a model's architecture.
    """
