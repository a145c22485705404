"""``lmconv batch JOBS.toml`` with the local engine (issue 19): jobs files that are not jobs files,
a catalogue of ladders and conversions where bad jobs fail alone, the report and its schema, re-runs
that skip what is there and verified, and a worker killed in the middle of a job."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from lmconv.batch.schema import batch_schema, first_error
from lmconv.cli import main
from tests.conftest import ROOT, SCHEMAS, staging_leftovers
from tests.ladder_support import kill_when_staging_appears, small_llama

TINY = ROOT / "fixtures" / "tiny-llama"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"wide": small_llama(root / "wide")}


def cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def write_jobs(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "jobs.toml"
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- the jobs file itself
BAD_DOCS = {  # the document, and the one line that says what is wrong with it (after "is not a valid jobs file: ")
    "unknown key": ('[[jobs]]\nsource = "m"\ntarget = "x.gguf"\nquant_type = "q8_0"\n',
                    ("jobs[0]: unknown key 'quant_type' (known: config, dtype, force, id, name, options, out, quant, "
                     "quants, source, strict, target, to, tokenizer, verify)")),
    "no source": ('[[jobs]]\ntarget = "x.gguf"\n', "jobs[0]: 'source' is missing"),
    "wrong type": ('[[jobs]]\nsource = "m"\ntarget = "x.gguf"\nforce = "yes"\n', 'jobs[0].force: "yes" is not a boolean'),
    "bad dtype": ('[[jobs]]\nsource = "m"\ntarget = "x.gguf"\ndtype = "f8"\n',
                  'jobs[0].dtype: "f8" is not one of f32, f16, bf16'),
    "no jobs": ('[defaults]\nout = "o/"\n', "the top level: 'jobs' is missing"),
    "empty quants": ('[[jobs]]\nsource = "m"\nout = "o/"\nquants = []\n', "jobs[0].quants: needs at least 1 item"),
    "quants not a list": ('[[jobs]]\nsource = "m"\nout = "o/"\nquants = 4\n', "jobs[0].quants: 4 is not a list or a string"),
    "unknown top level": ('jobs = [{source = "m", target = "x.gguf"}]\nengine = "ray"\n',
                          "the top level: unknown key 'engine' (known: defaults, jobs)"),
    "option list of numbers": ('[[jobs]]\nsource = "m"\nout = "o/"\nquants = "q8_0"\noptions = { tensor-type = [1] }\n',
                               "jobs[0].options.tensor-type[0]: 1 is not a string"),
    # the first problem in the file's order, whatever the schema's: jobs[10] comes after jobs[9], not after jobs[1]
    "first in the file": ("".join(f'[[jobs]]\nsource = "m{i}"\ntarget = "x{i}.gguf"\n' for i in range(10))
                          + '[[jobs]]\nsource = "m"\nforce = 1\nverify = 2\n[[jobs]]\nsource = ""\n',
                          "jobs[10].force: 1 is not a boolean"),
}


@pytest.mark.parametrize("case", sorted(BAD_DOCS))
def test_a_jobs_file_that_breaks_the_schema_is_one_line_and_exit_2(case: str, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    text, problem = BAD_DOCS[case]
    jobs = write_jobs(tmp_path, text)
    code, out, err = cli(capsys, "batch", jobs)
    assert (code, out) == (2, ""), (code, err)
    assert err == f"lmconv: error: {jobs}: is not a valid jobs file: {problem} (see schemas/batch.schema.json)\n"


@pytest.mark.parametrize("text,mention", [
    ('[[jobs]]\nsource = "m"\ntarget = "x.gguf"\nout = "o/"\nquants = ["q8_0"]\n', "not both"),
    ('[[jobs]]\nsource = "m"\nquants = ["q8_0"]\n', "quants and out"),
    ('[[jobs]]\nid = "a"\nsource = "m"\ntarget = "x.gguf"\n[[jobs]]\nid = "a"\nsource = "n"\ntarget = "y.gguf"\n', "'a'"),
    ('[[jobs]]\nsource = "m"\ntarget = "x.gguf"\n[[jobs]]\nsource = "n"\ntarget = "x.gguf"\n', "both write"),
    ('[defaults]\nout = "o/"\nquants = "q8_0"\n[[jobs]]\nsource = "a/m"\n[[jobs]]\nsource = "b/m"\n', "both write"),
])
def test_jobs_that_cannot_work_together_stop_the_batch(text: str, mention: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "batch", write_jobs(tmp_path, text))
    assert code == 2 and out == "" and len(err.splitlines()) == 1 and mention in err, err


def test_not_toml_and_no_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "batch", write_jobs(tmp_path, "[[jobs]\nsource = 1\n"))
    assert code == 2 and "is not valid TOML" in err and len(err.splitlines()) == 1, err
    code, _, err = cli(capsys, "batch", tmp_path / "none.toml")
    assert code == 3 and "none.toml: no such jobs file" in err and len(err.splitlines()) == 1, err
    code, _, err = cli(capsys, "batch", tmp_path / "jobs.toml", "--engine", "slurm")
    assert code == 2 and "slurm" in err, err


def test_the_schemas_are_json_schemas_and_the_packaged_one_is_the_same() -> None:
    for name in ("batch.schema.json", "batch-report.schema.json"):
        jsonschema.Draft202012Validator.check_schema(json.loads((SCHEMAS / name).read_text()))
    assert batch_schema() == json.loads((SCHEMAS / "batch.schema.json").read_text())
    good = {"defaults": {"out": "o/", "quants": ["q8_0"], "options": {"pure": True, "tensor-type": ["a=q8_0"]}},
            "jobs": [{"source": "m"}, {"source": "n", "target": "x.gguf", "quant": "q4_k_m", "verify": True}]}
    assert first_error(good) is None


def test_help_says_what_batch_and_ladders_do(capsys: pytest.CaptureFixture[str]) -> None:
    code, top, _ = cli(capsys, "--help")
    top = " ".join(top.split())
    assert code == 0 and "--quant q8_0,q6_k,q4_k_m" in top and "lmconv batch JOBS.toml [--engine ray]" in top, top
    assert "batch Run a jobs file of conversions and quant ladders" in top  # the listing's one-liner, not cut short
    code, text, _ = cli(capsys, "batch", "--help")
    text = " ".join(text.split())
    assert code == 0, text
    for words in ("quant ladders", "--engine", "RAY_ADDRESS", "ray start --head", "lmconv[ray]", "--jobs", "--verify",
                  "--retries", "JOBS.report.json", "fails alone"):
        assert words in text, words


# ----------------------------------------------------------------------------- a catalogue
CATALOGUE = """
[defaults]
out = "out/"
quants = ["q8_0", "q4_k_m"]

[[jobs]]
id = "wide-ladder"
source = "{wide}"

[[jobs]]
id = "wide-pure"
source = "{wide}"
name = "wide-pure"
quants = "q4_0,q2_k"
options = {{ pure = true }}

[[jobs]]
id = "tiny-bf16"
source = "{tiny}"
target = "single/tiny.safetensors"
dtype = "bf16"

[[jobs]]
id = "no-such-model"
source = "models/missing/"

[[jobs]]
id = "bad-type"
source = "{wide}"
name = "bad"
quants = ["q4_k_m", "q7_x"]

[[jobs]]
id = "bad-option"
source = "{tiny}"
target = "single/other.gguf"
options = {{ no-such-flag = true }}
"""


def report_of(path: Path) -> dict[str, Any]:
    doc = json.loads(path.read_text())
    jsonschema.validate(doc, json.loads((SCHEMAS / "batch-report.schema.json").read_text()))
    return doc


def test_a_catalogue_runs_bad_jobs_fail_alone_and_a_rerun_skips(models: dict[str, Path], tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    jobs = write_jobs(tmp_path / "cat", CATALOGUE.format(wide=models["wide"], tiny=TINY))
    (tmp_path / "cat" / "single").mkdir()
    code, out, err = cli(capsys, "batch", jobs, "--verify", "--jobs", "2")
    assert code == 1, err  # two failures with different codes (3 and 2): 1
    report = report_of(tmp_path / "cat" / "jobs.report.json")
    by_id = {j["id"]: j for j in report["jobs"]}
    assert [j["id"] for j in report["jobs"]] == ["wide-ladder", "wide-pure", "tiny-bf16", "no-such-model", "bad-type",
                                                 "bad-option"]
    assert report["summary"] == {"jobs": 6, "ok": 3, "skipped": 0, "failed": 3, "bytes": report["summary"]["bytes"]}
    for job_id in ("wide-ladder", "wide-pure", "tiny-bf16"):
        j = by_id[job_id]
        assert j["status"] == "ok" and j["error"] is None and j["bytes"] > 0, j
        assert all(o["verify"] == "ok" and o["written"] and Path(o["path"]).is_file() for o in j["outputs"]), j
    assert sorted(p.name for p in (tmp_path / "cat" / "out").iterdir()) == sorted([
        "wide-pure-Q2_K.gguf", "wide-pure-Q4_0.gguf", "wide-Q4_K_M.gguf", "wide-Q8_0.gguf"])
    missing, bad_type, bad_option = by_id["no-such-model"], by_id["bad-type"], by_id["bad-option"]
    assert missing["exit_code"] == 3 and "models/missing: no such file or directory" in missing["error"]
    assert bad_type["exit_code"] == 2 and "q7_x" in bad_type["error"] and not list((tmp_path / "cat" / "out").glob("bad-*"))
    assert bad_option["exit_code"] == 2 and "no-such-flag" in bad_option["error"]
    assert all("\n" not in j["error"] for j in (missing, bad_type, bad_option))
    assert "no-such-model" in out and "3 ok, 0 skipped" in out  # the summary table
    assert not staging_leftovers(tmp_path / "cat" / "out")

    # again, with one more rung for the first ladder and a damaged output: what is there and verifies is
    # kept (a job with nothing else to do is skipped), only the new rung is written, the damaged output
    # fails its job alone, and the bad jobs fail again
    out_dir = tmp_path / "cat" / "out"
    kept = {p: p.stat().st_mtime_ns for p in out_dir.iterdir() if p.name.startswith("wide-Q")}
    (out_dir / "wide-pure-Q2_K.gguf").write_bytes(b"GGUF" + bytes(100))
    jobs.write_text(jobs.read_text().replace('quants = ["q8_0", "q4_k_m"]', 'quants = ["q8_0", "q4_k_m", "q6_k"]', 1))
    code, _, _ = cli(capsys, "batch", jobs, "--report", tmp_path / "second.json", "--jobs", "2")
    second = report_of(tmp_path / "second.json")
    again = {j["id"]: j for j in second["jobs"]}
    assert code == 1 and second["summary"]["skipped"] == 1 and second["summary"]["failed"] == 4
    ladder = again["wide-ladder"]
    assert ladder["status"] == "ok" and ladder["skipped_outputs"] == 2
    assert [Path(o["path"]).name for o in ladder["outputs"] if o["written"]] == ["wide-Q6_K.gguf"]
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    assert again["tiny-bf16"]["status"] == "skipped" and again["tiny-bf16"]["outputs"][0]["verify"] == "ok"
    pure = again["wide-pure"]
    assert pure["status"] == "failed" and "wide-pure-Q2_K.gguf" in pure["error"] and "force" in pure["error"]
    assert pure["exit_code"] == 5 and (out_dir / "wide-pure-Q2_K.gguf").stat().st_size == 104


def test_a_killed_worker_is_replaced_and_its_job_retried(models: dict[str, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """SIGKILL to the worker while its ladder is being written: the job runs again in a new worker,
    its outputs are complete and verify, and the dead attempt's staging folder is gone."""
    folder = tmp_path / "kill"
    jobs = write_jobs(folder, f'[[jobs]]\nid = "slow"\nsource = "{models["wide"]}"\nout = "out/"\n'
                              f'quants = ["q6_k", "q4_k_m", "q2_k"]\n')
    (folder / "out").mkdir()
    killed = kill_when_staging_appears(folder / "out")
    code, _, err = cli(capsys, "batch", jobs, "--verify", "--jobs", "1")
    assert killed, "the job ended before its staging folder could be seen"
    assert code == 0, err
    (entry,) = report_of(folder / "jobs.report.json")["jobs"]
    assert entry["status"] == "ok" and entry["attempts"] == 2 and entry["pid"] != killed[0]
    assert len(entry["outputs"]) == 3 and all(o["verify"] == "ok" for o in entry["outputs"])
    assert not staging_leftovers(folder / "out")
