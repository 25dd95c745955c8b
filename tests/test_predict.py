"""Predictor and `cxr predict`: probabilities, batching, input kinds, TTA, unreadable files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxr.checkpoint import save_checkpoint
from cxr.cli import main
from cxr.config import ModelConfig, RunConfig
from cxr.data.synthetic import CLASSES, make_image
from cxr.predict import Prediction, Predictor
from cxr.transforms import Preprocessing, shift, tta_views

SIZE = 64


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, calibrated_model) -> Path:
    """EfficientNet-Lite0, random init, BatchNorm statistics calibrated so outputs are not uniform."""
    cfg = RunConfig(name="tiny", model=ModelConfig(backbone="efficientnet_lite0", weights="random", head=(32,), freeze="none"))
    model = calibrated_model(cfg.model, len(CLASSES), SIZE)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", model=model, config=cfg,
                           classes=list(CLASSES), preprocessing=Preprocessing(mode="half", size=SIZE), epoch=1)


@pytest.fixture(scope="module")
def predictor(checkpoint: Path) -> Predictor:
    return Predictor.from_checkpoint(checkpoint, device="cpu", precision="fp32")


def xrays(n: int, seed: int = 0, size: int = 96) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [make_image(CLASSES[i % len(CLASSES)], rng, size=size) for i in range(n)]


def test_probabilities_sum_to_one_and_label_is_argmax(predictor: Predictor) -> None:
    preds = predictor.predict(xrays(6))
    assert len(preds) == 6
    for p in preds:
        assert isinstance(p, Prediction)
        assert list(p.probabilities) == list(CLASSES)
        assert sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
        assert p.label == max(p.probabilities, key=p.probabilities.get)
        assert p.confidence == p.probabilities[p.label]
    spread = max(max(p.probabilities.values()) - min(p.probabilities.values()) for p in preds)
    assert spread > 1e-3  # the test model is not trivially uniform


def test_batch_equals_single(predictor: Predictor) -> None:
    images = xrays(5, seed=1)
    batched = predictor.predict(images, batch_size=4)
    single = [predictor.predict([img], batch_size=1)[0] for img in images]
    for b, s in zip(batched, single, strict=True):
        assert b.label == s.label
        np.testing.assert_allclose(list(b.probabilities.values()), list(s.probabilities.values()), atol=1e-5)


def test_paths_bytes_and_arrays_agree(predictor: Predictor, tmp_path: Path) -> None:
    img = xrays(1, seed=2)[0]
    path = tmp_path / "x.png"
    Image.fromarray(img).save(path)
    rgb = np.repeat(img[..., None], 3, axis=2)
    from_path, from_bytes, from_array, from_rgb = predictor.predict([path, path.read_bytes(), img, rgb])
    assert from_path.source == str(path)
    for other in (from_bytes, from_array, from_rgb):
        np.testing.assert_allclose(list(other.probabilities.values()), list(from_path.probabilities.values()), atol=1e-6)
    assert predictor.predict(img)[0].label == from_array.label  # a single image is accepted too


def test_bad_inputs_raise_user_errors(predictor: Predictor) -> None:
    from cxr.errors import CxrError, ImageReadError

    with pytest.raises(CxrError, match="uint8"):
        predictor.predict([np.zeros((8, 8), dtype=np.float32)])
    with pytest.raises(ImageReadError, match="<bytes>"):
        predictor.predict([b"not an image"])
    with pytest.raises(CxrError, match="batch_size"):
        predictor.predict(xrays(1), batch_size=0)
    with pytest.raises(CxrError, match="COVID"):
        predictor.class_index("Cat")


@pytest.mark.slow
def test_tta_is_deterministic_and_differs_from_plain(predictor: Predictor) -> None:
    images = xrays(2, seed=3)
    a = predictor.predict(images, tta=True)
    b = predictor.predict(images, tta=True)
    plain = predictor.predict(images)
    for x, y in zip(a, b, strict=True):
        assert x.probabilities == y.probabilities
        assert sum(x.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
    diffs = [abs(x.probabilities[c] - z.probabilities[c]) for x, z in zip(a, plain, strict=True) for c in CLASSES]
    assert max(diffs) > 1e-6


def test_tta_views_flip_and_shift_edges() -> None:
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    views = tta_views(x)
    assert len(views) == 6
    assert all(v.shape == x.shape for v in views)
    assert torch.equal(views[1], x.flip(-1))
    right = shift(x, 2, 0)
    assert torch.equal(right[..., 2:], x[..., :-2])
    assert torch.equal(right[..., 0], x[..., 0]) and torch.equal(right[..., 1], x[..., 0])  # edge repeated
    up = shift(x, 0, -1)
    assert torch.equal(up[..., :-1, :], x[..., 1:, :])
    assert torch.equal(up[..., -1, :], x[..., -1, :])


def _image_folder(root: Path) -> tuple[list[Path], list[Path]]:
    good = []
    for i, img in enumerate(xrays(3, seed=4)):
        sub = root / ("a" if i < 2 else "b/c")
        sub.mkdir(parents=True, exist_ok=True)
        good.append(sub / f"img{i}.png")
        Image.fromarray(img).save(good[-1])
    truncated = root / "a" / "truncated.png"
    truncated.write_bytes(good[0].read_bytes()[:200])
    fake = root / "b" / "fake.jpg"
    fake.write_text("this is text, not a JPEG")
    (root / "notes.txt").write_text("ignored: no image extension")
    return good, [truncated, fake]


def test_cli_skips_unreadable_files_and_exits_1(checkpoint: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = _image_folder(tmp_path / "imgs")
    out = tmp_path / "preds.csv"
    code = main(["predict", str(checkpoint), str(tmp_path / "imgs"), "--out", str(out), "--batch-size", "2"])
    assert code == 1
    err = capsys.readouterr().err
    for path in bad:
        assert str(path) in err
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["path"] for r in rows] == sorted(str(p) for p in good)
    assert list(rows[0]) == ["path", "label", *(f"prob_{c}" for c in CLASSES), "in_distribution", "reason"]
    for row in rows:
        assert row["label"] in CLASSES
        assert sum(float(row[f"prob_{c}"]) for c in CLASSES) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.slow
def test_cli_all_readable_exits_0_json_and_table(checkpoint: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    good, _ = _image_folder(tmp_path / "imgs")
    out = tmp_path / "preds.json"
    assert main(["predict", str(checkpoint), *map(str, good), "--out", str(out), "--tta"]) == 0
    doc = json.loads(out.read_text())
    assert doc["classes"] == list(CLASSES) and doc["skipped"] == []
    assert [p["path"] for p in doc["predictions"]] == [str(p) for p in good]
    capsys.readouterr()
    assert main(["predict", str(checkpoint), str(good[0])]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["path", "label", *CLASSES, "in_distribution", "reason"]
    assert lines[1].startswith(str(good[0]))


def test_cli_rejects_bad_output_suffix(checkpoint: Path, tmp_path: Path) -> None:
    img = tmp_path / "x.png"
    Image.fromarray(xrays(1)[0]).save(img)
    assert main(["predict", str(checkpoint), str(img), "--out", str(tmp_path / "preds.xlsx")]) == 2
    assert main(["predict", str(checkpoint), str(tmp_path / "empty_missing")]) == 2
