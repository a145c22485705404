"""A format whose reading stops at a point a test controls (tests/test_hostile_headers.py).

A ``.pause`` file is JSON: ``{"pause": [[name, [shape]], …], "at": NAME}``; every tensor is zeros
of its shape (f32). Loading tensor ``at`` writes ``<file>.reached`` and then waits until
``<file>.release`` exists, so a test can interrupt a conversion that is surely in the middle of
writing (staging folder made, some tensors written), and then let the waiting thread go.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from lmconv import dtypes as dt
from lmconv.formats import Format, ReadOptions
from lmconv.hookspecs import hookimpl
from lmconv.ir import Model, Tensor

WAIT_SECONDS = 120


class PauseFormat(Format):
    name = "pause"
    extensions = (".pause",)
    description = "zeros that pause at one tensor (test plugin)"
    can_write = False

    def sniff(self, path: Path) -> bool:
        if not path.is_file():
            return False
        with open(path, "rb") as fh:
            return fh.read(9) == b'{"pause":'

    def read(self, path: Path, options: ReadOptions) -> Model:
        spec = json.loads(path.read_text())
        model = Model(source=str(path), format=self.name)
        for name, shape in spec["pause"]:
            model.add(Tensor(name, tuple(shape), dt.F32, _loader(path, name, tuple(shape), name == spec["at"]),
                             origin=str(path)))
        return model


def _loader(path: Path, name: str, shape: tuple[int, ...], pause: bool) -> Any:
    def load() -> np.ndarray:
        if pause:
            Path(f"{path}.reached").write_text(name)
            release = Path(f"{path}.release")
            deadline = time.monotonic() + WAIT_SECONDS
            while not release.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        return np.zeros(shape, np.float32)

    return load


@hookimpl
def register_formats(register: Any) -> None:
    register(PauseFormat())
