"""Quant ladders (issue 19): ``lmconv SRC DST/ --quant a,b,c`` reads SRC once and writes one file per
type, each byte for byte what a separate ``lmconv SRC DST/x.gguf --quant x`` writes and, tensor for
tensor, what llama.cpp's own ``llama_model_quantize`` makes of the f32 GGUF."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from gguf import GGUFReader

from lmconv import dtypes as dt
from lmconv.cli import main
from lmconv.ir import Model, tensor_from_array
from lmconv.ladder import convert_ladder, model_name
from lmconv.ladder.shared import SharedSources
from tests.conftest import assert_one_line_error, folder_state, lmconv, staging_leftovers
from tests.ladder_support import small_llama, with_nan
from tests.llamacpp_support import llamacpp_quantize

LADDER = ("q8_0", "q6_k", "q5_k_m", "q4_k_m", "q3_k_m", "q2_k")


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_llama(tmp_path_factory.mktemp("ladder") / "wide")


@pytest.fixture(scope="module")
def wide_bf16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_llama(tmp_path_factory.mktemp("ladder") / "wide-bf16", dtype="bfloat16")


def cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    """``lmconv ARGS`` in-process: exit code, stdout, stderr."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(got: tuple[int, str, str], code: int, *mentions: str) -> None:
    rc, out, err = got
    assert rc == code and out == "" and len(err.splitlines()) == 1 and err.startswith("lmconv: error:"), got
    assert all(m in err for m in mentions), err


def tensors(path: Path) -> dict[str, tuple[str, bytes]]:
    return {t.name: (t.tensor_type.name, bytes(t.data)) for t in GGUFReader(path).tensors}


def run(*args: object) -> None:
    assert main([str(a) for a in args] + ["--quiet"]) == 0, args


def assert_ladder_is_separate_runs(src: Path, out: Path, quants: tuple[str, ...], tmp: Path) -> None:
    for q in quants:
        alone = tmp / f"alone-{out.name}-{q}.gguf"
        run(src, alone, "--quant", q)
        ours = out / f"{model_name(src)}-{q.upper()}.gguf"
        assert ours.read_bytes() == alone.read_bytes(), f"{ours.name} differs from a separate --quant {q} run"


def test_six_rungs_equal_six_separate_runs(wide: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = convert_ladder(wide, out, ",".join(LADDER))
    assert sorted(p.name for p in out.iterdir()) == sorted(f"wide-{q.upper()}.gguf" for q in LADDER)
    assert set(result.reads.values()) == {1}, f"a source tensor was read more than once: {result.reads}"
    computed, reused = result.pieces
    assert computed > 0 and reused > 0, "the q6_K tensors several presets share were quantised once per output"
    assert_ladder_is_separate_runs(wide, out, LADDER, tmp_path)
    # the ladder is not one file written six times: the types differ as the presets say
    kinds = {q: {k for k, _ in tensors(out / f"wide-{q.upper()}.gguf").values()} for q in LADDER}
    assert kinds["q8_0"] == {"Q8_0", "F32"} and "Q2_K" in kinds["q2_k"] and "Q6_K" in kinds["q4_k_m"]


def test_ladder_from_the_f32_gguf_equals_llama_model_quantize(wide: Path, tmp_path: Path) -> None:
    f32 = tmp_path / "wide-F32.gguf"
    run(wide, f32)
    out = tmp_path / "out"
    assert main([str(f32), str(out), "--quant", ",".join(LADDER), "--quiet"]) == 0
    for q in LADDER:
        theirs = tmp_path / f"llama-{q}.gguf"
        llamacpp_quantize(f32, theirs, q.upper())
        ours = tensors(out / f"wide-{q.upper()}.gguf")  # "-F32" is dropped from the name
        ref = tensors(theirs)
        assert {k: v[0] for k, v in ours.items()} == {k: v[0] for k, v in ref.items()}, q
        bad = [k for k in ref if ours[k][1] != ref[k][1]]
        assert not bad, f"{q}: bytes differ from llama_model_quantize in {bad}"


def test_bf16_source_is_widened_once_and_stays_byte_identical(wide_bf16: Path, tmp_path: Path) -> None:
    quants = ("q8_0", "q4_k_m", "q4_0")
    result = convert_ladder(wide_bf16, tmp_path / "out", quants)
    assert set(result.reads.values()) == {1}
    assert_ladder_is_separate_runs(wide_bf16, tmp_path / "out", quants, tmp_path)


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")  # gguf-py's q8_0 of a NaN
def test_a_16_bit_float_rung_keeps_nan_payloads_as_a_separate_run_does(wide: Path, tmp_path: Path) -> None:
    """bf16 → f16 directly and through f32 differ in NaN payloads (next test): with an f16 rung the
    bf16 source is not widened, and a NaN weight comes out as a separate run writes it."""
    nan = tmp_path / "nan"
    with_nan(wide, nan, "mlp.up_proj.weight")
    run(nan, tmp_path / "nan-bf16.safetensors", "--dtype", "bf16")
    src = tmp_path / "nan-bf16.safetensors"
    quants = ("q8_0", "f16")
    convert_ladder(src, tmp_path / "out", quants)
    assert_ladder_is_separate_runs(src, tmp_path / "out", quants, tmp_path)


def test_a_type_some_rung_stores_as_is_is_not_requantised(wide: Path, tmp_path: Path) -> None:
    """From a q8_0 GGUF: the q8_0 rung copies the blocks (the cache must keep them as blocks), the
    others dequantise them; with no q8_0 rung the blocks are dequantised once for all."""
    q8 = tmp_path / "wide-Q8_0.gguf"
    run(wide, q8, "--quant", "q8_0")
    for quants in (("q8_0", "q6_k", "q4_0"), ("q6_k", "q3_k_m")):
        out = tmp_path / "-".join(quants)
        convert_ladder(q8, out, quants)
        assert_ladder_is_separate_runs(q8, out, quants, tmp_path)
    assert tensors(tmp_path / "q8_0-q6_k-q4_0" / "wide-Q8_0.gguf") == tensors(q8)


@pytest.mark.parametrize("pair", [("bfloat16", "float16"), ("float16", "bfloat16")])
def test_narrow_float_through_f32_is_the_direct_cast_but_for_nan_payloads(pair: tuple[str, str]) -> None:
    """For all 65536 values, casting through f32 gives the bits the direct cast gives, except NaN
    payloads from bf16 to f16 (the direct cast makes every NaN the canonical one): why a ladder
    widens a 16-bit source once only when no output stores a 16-bit float."""
    src_t, dst_t = (np.dtype(getattr(ml_dtypes, n, None) or n) for n in pair)
    every = np.arange(1 << 16, dtype=np.uint16).view(src_t)
    with np.errstate(all="ignore"):
        direct = every.astype(dst_t).view(np.uint16)
        through = every.astype(np.float32).astype(dst_t).view(np.uint16)
    differ = direct != through
    assert np.isnan(every[differ].astype(np.float32)).all()
    assert differ.any() == (pair[0] == "bfloat16")


def test_cli_ladder_progress_verify_and_names(wide: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code, _, err = cli(capsys, wide, f"{out}/", "--quant", "q8_0,Q4_K_M", "--verify")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["wide-Q4_K_M.gguf", "wide-Q8_0.gguf"]
    lines = err.splitlines()
    for name in ("wide-Q8_0.gguf", "wide-Q4_K_M.gguf"):  # one line per output written, one per verification
        assert any(line.startswith("lmconv: wrote") and name in line for line in lines), err
        assert any(line.startswith(f"lmconv: verify {name}: OK") for line in lines), err
    code, help_text, _ = cli(capsys, "convert", "--help")
    assert code == 0 and "<model name>-<TYPE>.gguf" in " ".join(help_text.split())


def test_progress_counts_every_byte_of_every_output(wide: Path, tmp_path: Path) -> None:
    seen: dict[int, int] = {}
    lock = threading.Lock()

    def progress(rung: int, n: int) -> None:
        with lock:
            seen[rung] = seen.get(rung, 0) + n

    result = convert_ladder(wide, tmp_path / "out", ("q8_0", "q2_k"), progress=progress)
    for i, plan in enumerate(result.plans):
        assert seen[i] == sum(t.nbytes for t in plan.tensors)


def test_cli_errors_are_one_line(wide: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert_one_line_error(lmconv(wide, tmp_path / "x.gguf", "--quant", "q8_0,q4_k_m"), 2, "folder")  # a real process
    one_line_error(cli(capsys, wide, tmp_path / "o", "--quant", "q8_0,q9_z"), 2, "q9_z")
    one_line_error(cli(capsys, wide, tmp_path / "o", "--quant", "q8_0,q8_0"), 2, "twice")
    one_line_error(cli(capsys, tmp_path / "nope", tmp_path / "o", "--quant", "q8_0,q4_0"), 3, "nope")
    assert not (tmp_path / "o").exists()
    one_line_error(cli(capsys, wide, tmp_path / "missing" / "deeper", "--quant", "q8_0,q4_0"), 5)


def test_existing_output_needs_force_and_stays_untouched(wide: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "wide-Q4_0.gguf").write_bytes(b"mine")
    before = folder_state(out)
    one_line_error(cli(capsys, wide, out, "--quant", "q8_0,q4_0"), 5, "wide-Q4_0.gguf", "--force")
    assert folder_state(out) == before
    assert cli(capsys, wide, out, "--quant", "q8_0,q4_0", "--force", "--quiet")[0] == 0
    assert (out / "wide-Q4_0.gguf").read_bytes()[:4] == b"GGUF" and (out / "wide-Q8_0.gguf").is_file()


def test_a_failing_output_leaves_no_output_at_all(wide: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One writer fails after the others have written everything: nothing is renamed into place,
    an existing target keeps its bytes even with --force, and no staging folder is left."""
    from lmconv.errors import OutputError
    from lmconv.registry import get_registry

    fmt = get_registry().format("gguf")
    real = type(fmt).write

    def write(self, model, path, options):  # type: ignore[no-untyped-def]
        produced = real(self, model, path, options)
        if "Q2_K" in path.name:
            time.sleep(0.2)  # the others are done by now
            raise OutputError("no space left on the device", path=path)
        return produced

    monkeypatch.setattr(type(fmt), "write", write)
    out = tmp_path / "out"
    out.mkdir()
    (out / "wide-Q8_0.gguf").write_bytes(b"old")
    before = folder_state(out)
    with pytest.raises(OutputError):
        convert_ladder(wide, out, LADDER, force=True)
    assert folder_state(out) == before and not staging_leftovers(out)
    fresh = tmp_path / "fresh"
    with pytest.raises(OutputError):
        convert_ladder(wide, fresh, LADDER)
    assert not fresh.exists()  # the folder the ladder made is gone again


def test_strict_non_finite_fails_the_whole_ladder(wide: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad"
    name = with_nan(wide, bad, "mlp.down_proj.weight")
    one_line_error(cli(capsys, bad, tmp_path / "out", "--quant", "q8_0,q4_k_m,q2_k", "--strict"), 3, name.split(".")[-2])
    assert not (tmp_path / "out").exists()


def test_dry_run_plans_every_output(wide: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, wide, tmp_path / "out", "--quant", "q8_0,q4_k_m", "--dry-run")
    assert code == 0, err
    assert "wide-Q8_0.gguf" in out and "wide-Q4_K_M.gguf" in out and "q6_K" in out
    assert not (tmp_path / "out").exists()


def test_model_names() -> None:
    assert model_name("models/Llama-3-8B/") == "Llama-3-8B"
    assert model_name("x/tinyllama-F32.gguf") == "tinyllama"
    assert model_name("x/model.safetensors") == "model"
    assert model_name("Qwen/Qwen2.5-0.5B@main") == "Qwen2.5-0.5B"


# ----------------------------------------------------------------------------- the lockstep cache
def test_lockstep_bounds_the_cache_and_reads_each_tensor_once() -> None:
    """Three writers of very different speeds over 40 tensors of 1 MB with a 4 MB budget: the fast
    ones wait for the slow one, so the cache never holds much more than the budget, and no tensor is
    read twice; every writer sees the same arrays."""
    rng = np.random.default_rng(0)
    model = Model()
    for i in range(40):
        model.add(tensor_from_array(f"t{i}", rng.standard_normal((256, 1024)).astype(np.float32)))
    mb = 1 << 20
    sources = SharedSources(3, 4 * mb)
    shared = sources.share(model, lambda t: False)
    sums: list[list[float]] = [[], [], []]

    def writer(i: int, delay: float) -> None:
        with sources.writer(i):
            for t in shared:
                sums[i].append(float(t.load().sum()))
                time.sleep(delay)
                t.release()

    threads = [threading.Thread(target=writer, args=(i, d)) for i, d in enumerate((0.0, 0.001, 0.01))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "deadlock"
    assert sums[0] == sums[1] == sums[2]
    assert set(sources.reads.values()) == {1} and len(sources.reads) == 40
    assert sources.peak_bytes <= 4 * mb + 2 * mb, sources.peak_bytes / mb


def test_a_widened_copy_is_read_only_for_every_writer() -> None:
    model = Model()
    model.add(tensor_from_array("w", np.ones((4, 256), dtype=ml_dtypes.bfloat16)))
    sources = SharedSources(2, 1 << 20)
    shared = sources.share(model, lambda t: True)
    (t,) = list(shared)
    assert t.dtype == dt.F32
    arr = t.load()
    assert arr.dtype == np.float32 and not arr.flags.writeable
    with pytest.raises(ValueError):
        arr[0, 0] = 2
