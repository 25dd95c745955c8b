"""LungSegmenter on a tiny untrained model: any size in, a mask of that size out; engines agree; files."""

from __future__ import annotations

import numpy as np
import pytest

from cxr.errors import CxrError
from cxr.lungs.segmenter import LungResult, LungSegmenter


@pytest.fixture(scope="module")
def seg(tiny_model):
    return LungSegmenter.from_file(tiny_model, engine="torch", threads=1, batch_size=3)


def test_masks_come_back_at_each_images_own_size(seg):
    rng = np.random.default_rng(0)
    shapes = [(64, 64), (37, 211), (300, 120), (5, 5), (1, 9)]
    images = [rng.integers(0, 256, s, dtype=np.uint8) for s in shapes]
    results = seg.segment(images)
    assert [r.mask.shape for r in results] == shapes
    assert all(isinstance(r, LungResult) and r.mask.dtype == bool for r in results)
    assert all(r.qc.flag in ("ok", "suspect") for r in results)


def test_batches_do_not_change_the_masks(seg, tiny_model):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (80, 70), dtype=np.uint8) for _ in range(5)]
    one_batch = LungSegmenter.from_file(tiny_model, engine="torch", threads=1, batch_size=8).probabilities(images)
    np.testing.assert_allclose(seg.probabilities(images), one_batch, atol=1e-5)


def test_segment_paths_reads_files_and_digest_names_the_file(seg, tmp_path, tiny_model):
    from PIL import Image

    from cxr.hashing import file_sha256

    Image.fromarray(np.full((50, 40), 90, np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((30, 60, 3), np.uint8)).save(tmp_path / "b.jpg")
    results = seg.segment_paths([tmp_path / "a.png", tmp_path / "b.jpg"])
    assert [r.mask.shape for r in results] == [(50, 40), (30, 60)]
    assert seg.digest == file_sha256(tiny_model) and len(seg.digest) == 64


def test_bad_inputs_are_one_line_errors(seg, tmp_path):
    with pytest.raises(CxrError, match="uint8"):
        seg.segment([np.zeros((10, 10), np.float32)])
    with pytest.raises(CxrError, match="2-D"):
        seg.segment([np.zeros((2, 3, 4, 5), np.uint8)])
    with pytest.raises(CxrError, match="not found"):
        LungSegmenter.from_file(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    with pytest.raises(CxrError, match="not a lung model"):
        LungSegmenter.from_file(tmp_path / "junk.safetensors")
    with pytest.raises(CxrError, match="unknown lung engine"):
        LungSegmenter.from_file(tmp_path / "junk.safetensors", engine="tensorrt")


@pytest.mark.parametrize("engine", ["onnxruntime", pytest.param("openvino", marks=pytest.mark.slow)])
def test_exported_engines_match_pytorch(tiny_model, engine):
    from cxr.engine.base import installed
    from cxr.lungs.engine import check_parity

    if not installed(engine):
        pytest.skip(f"{engine} is not installed")
    seg = LungSegmenter.from_file(tiny_model, engine=engine, threads=1).prepare()
    batch = np.random.default_rng(2).uniform(-1, 1, (2, 1, 64, 64)).astype(np.float32)
    assert check_parity(seg._engine, seg.model, batch) < 1e-3
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (70, 90), dtype=np.uint8) for _ in range(2)]
    reference = LungSegmenter.from_file(tiny_model, engine="torch", threads=1).probabilities(images)
    np.testing.assert_allclose(seg.probabilities(images), reference, atol=1e-3)
