"""lmconv's conformance kit against the npz format, and three checks of our own."""

import zipfile

import numpy as np

from lmconv import read_model
from lmconv.formats import WriteOptions
from lmconv.testing import FormatConformance, assert_same, sample_model, write_model


class TestNpz(FormatConformance):
    format_name = "npz"


def test_reads_what_numpy_writes(tmp_path):
    path = tmp_path / "weights.npz"
    np.savez_compressed(path, w=np.arange(6, dtype=np.float32).reshape(2, 3), b=np.zeros(3, np.int64))
    model = read_model(path)
    assert model.tensors["w"].load().tolist() == [[0, 1, 2], [3, 4, 5]]
    assert model.tensors["b"].dtype.name == "i64"


def test_numpy_reads_what_we_write(tmp_path):
    model = sample_model()
    write_model(model, tmp_path / "model.npz", "npz")
    with np.load(tmp_path / "model.npz") as npz:
        assert npz["w.f32"].tobytes() == model.tensors["w.f32"].load().tobytes()
        assert npz["w.bf16"].dtype == np.uint16  # bf16 travels as its raw bits


def test_npz_compress_deflates(tmp_path):
    model = sample_model()
    for compress, method in ((False, zipfile.ZIP_STORED), (True, zipfile.ZIP_DEFLATED)):
        path = tmp_path / f"compress-{compress}.npz"
        write_model(model, path, "npz", WriteOptions(extra={"npz_compress": compress}))
        with zipfile.ZipFile(path) as zf:
            assert {member.compress_type for member in zf.infolist()} == {method}
        assert_same(model, read_model(path), what=f"npz_compress={compress}")
