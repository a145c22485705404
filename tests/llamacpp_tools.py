"""llama.cpp's own command-line tools (llama-quantize, llama-imatrix), built for the tests.

They are built once from the same source as the llama-cpp-python the tests run
(its sdist's ``vendor/llama.cpp``, fetched by :func:`tests.families.support.llama_cpp_tree`) with
cmake: tools only, ``-DGGML_NATIVE=OFF``, Release, ``-j2``, into a cache folder outside the
repository (``~/.cache/lmconv-tests/llama.cpp-build-<version>``, or ``$LMCONV_TEST_CACHE``) that
later runs reuse. The first build takes several minutes; nothing built is ever committed.

    python -m tests.llamacpp_tools      # build (or find) them and print their paths
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.families.support import CACHE, LLAMA_CPP_PYTHON, llama_cpp_tree

BUILD = CACHE / f"llama.cpp-build-{LLAMA_CPP_PYTHON}"
TOOLS = ("llama-quantize", "llama-imatrix")
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=OFF", "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_COMMON=ON", "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_CURL=OFF", "-DGGML_OPENMP=OFF",
)


def _binary(name: str) -> Path:
    return BUILD / "bin" / name


def _built() -> bool:
    return all(os.access(_binary(t), os.X_OK) for t in TOOLS)


def llamacpp_tools() -> dict[str, Path]:
    """``{"llama-quantize": path, "llama-imatrix": path}``, building them when the cache has none.

    A lock file serialises concurrent test processes; a failed build raises with cmake's last
    lines (the tests require these tools: they never skip)."""
    if _built():
        return {t: _binary(t) for t in TOOLS}
    BUILD.parent.mkdir(parents=True, exist_ok=True)
    with open(BUILD.parent / f"{BUILD.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _built():
            _build()
    return {t: _binary(t) for t in TOOLS}


def _build() -> None:
    tree = llama_cpp_tree()
    work = BUILD.with_name(BUILD.name + ".work")
    shutil.rmtree(work, ignore_errors=True)
    beside = Path(sys.executable).with_name("cmake")  # the test extra's PyPI cmake, in the venv
    cmake = shutil.which("cmake") or (str(beside) if beside.is_file() else None)
    assert cmake, "cmake is needed to build llama.cpp's llama-quantize and llama-imatrix for the tests (pip install cmake)"
    log = []
    for cmd in ([cmake, "-S", str(tree), "-B", str(work), *CMAKE_FLAGS],
                [cmake, "--build", str(work), "--config", "Release", "-j2", "--target", *TOOLS]):
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        log.append(proc.stdout[-2000:] + proc.stderr[-2000:])
        if proc.returncode != 0:
            raise RuntimeError(f"building llama.cpp's tools failed: {' '.join(cmd)}\n" + "\n".join(log)[-4000:])
    out = BUILD.with_name(BUILD.name + ".new")
    shutil.rmtree(out, ignore_errors=True)
    (out / "bin").mkdir(parents=True)
    for t in TOOLS:  # only the (statically linked) binaries are kept; the object files go
        shutil.copy2(work / "bin" / t, out / "bin" / t)
    shutil.rmtree(BUILD, ignore_errors=True)
    out.rename(BUILD)
    shutil.rmtree(work, ignore_errors=True)


def run_tool(name: str, *args: object, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run one of the tools; with ``check`` it must succeed (its output is in the assertion message)."""
    exe = llamacpp_tools()[name]
    proc = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=timeout, check=False)
    if check:
        assert proc.returncode == 0, f"{name} {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc


OUTPUTS = CACHE / f"llama.cpp-outputs-{LLAMA_CPP_PYTHON}"


def _digest(*parts: object) -> str:
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, Path):
            h.update(p.read_bytes())
        else:
            h.update(repr(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def cached_run(name: str, inputs: list[Path], args: list[object], out: Path) -> int:
    """Run tool ``name`` with ``args`` (``{out}`` stands for the output file) and copy its output to
    ``out``; the output is kept in a cache keyed by the tool, the input files' bytes and the
    arguments, so a later run with the same inputs reuses it (llama-quantize builds its lattice
    tables anew in every process: ~20 s for IQ1). Returns the tool's exit code (0 when cached);
    a failing run leaves ``out`` absent and is not cached."""
    # the key: the input files' bytes, and every argument that is not a file elsewhere (the files in
    # this cache have stable paths, which the tools may record: llama-quantize writes its imatrix's)
    stable = [str(a) for a in args if not isinstance(a, Path) or str(a).startswith(str(OUTPUTS))]
    key = _digest(name, BUILD.name, *inputs, stable)
    cached = OUTPUTS / f"{name}-{key}{out.suffix}"
    if not cached.is_file():
        OUTPUTS.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f"{cached.name}.tmp{os.getpid()}")
        argv = [str(tmp) if a == "{out}" else str(a) for a in args]
        proc = run_tool(name, *argv, check=False)
        if proc.returncode != 0:
            tmp.unlink(missing_ok=True)
            return proc.returncode
        tmp.rename(cached)
    shutil.copyfile(cached, out)
    return 0


if __name__ == "__main__":
    for tool, path in llamacpp_tools().items():
        print(tool, path)
    sys.exit(0)
