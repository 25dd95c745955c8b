"""Automatic lungs (`data.lungs: auto`): rows without a lung region get the built-in segmenter's
cached masks (keyed by image bytes and model digest), a lung-crop model predicts on plain images, a
suspect mask falls back to the whole image with a warning naming it, `cxr evaluate RUN --external
--shortcut` audits folders without masks, and the report shows the masks and the suspect share.
The segmenter is the instant fake of tests/conftest.py unless a test asks for the real one."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr.checkpoint import save_checkpoint
from cxr.cli import main
from cxr.config import DataConfig, ModelConfig, RunConfig
from cxr.data.synthetic import make_image
from cxr.errors import CxrError
from cxr.explain_masks import OUTLINE_RGB
from cxr.lungs.auto import AutoLungs
from cxr.lungs.rows import fill_rows
from cxr.predict import Predictor
from cxr.report.blocks import Image as ImageBlock
from cxr.report.blocks import Table
from cxr.report.runfiles import read_run
from cxr.report.sections.lungs import lungs as lungs_section
from cxr.rundir import SplitRow
from cxr.transforms import Preprocessing

SIZE = 32  # network input
CLASSES = ["COVID", "Normal"]


@pytest.fixture(scope="module")
def plain_data(tmp_path_factory) -> Path:
    """A class-per-folder set without any lung mask (3 per class, 64 px), and a flat 'blank page'."""
    root = tmp_path_factory.mktemp("plain")
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (root / name).mkdir()
        for i in range(3):
            Image.fromarray(make_image(name, rng, size=64)).save(root / name / f"{name.lower()}_{i}.png")
    return root


@pytest.fixture(scope="module")
def crop_checkpoint(tmp_path_factory, calibrated_model, plain_data) -> Path:
    """A tiny lung-crop model, trained (by config) on `plain_data`, in a run folder's checkpoints/."""
    cfg = RunConfig(name="auto", data=DataConfig(root=str(plain_data), lung_crop=True, lung_crop_margin=0.0,
                                                 num_workers=0),
                    model=ModelConfig(backbone="efficientnet_lite0", weights="random", head=(8,), freeze="none"))
    cfg.eval.bootstrap, cfg.eval.shortcut_gallery, cfg.train.batch_size = 20, 1, 8
    model = calibrated_model(cfg.model, len(CLASSES), SIZE)
    run = tmp_path_factory.mktemp("run")
    return save_checkpoint(run / "checkpoints" / "best.pt", model=model, config=cfg, classes=CLASSES,
                           preprocessing=Preprocessing(mode="half", size=SIZE), epoch=1)


def _rows(root: Path) -> list[SplitRow]:
    return [SplitRow(p.relative_to(root).as_posix(), p.parent.name, "test", p.name, None)
            for p in sorted(root.rglob("*.png"))]


def test_automatic_masks_fill_rows_and_are_cached_by_image_bytes_and_model(plain_data, fake_lungs, tmp_path, caplog):
    blank = tmp_path / "blank"
    (blank / "Normal").mkdir(parents=True)
    for name in ("a", "b"):
        Image.fromarray(np.full((40, 50), 128, np.uint8)).save(blank / "Normal" / f"{name}.png")
    rows = _rows(plain_data)
    rows[0] = SplitRow(rows[0].path, rows[0].label, "test", rows[0].group, "box:1 2 30 40")  # given: kept
    filled = fill_rows(rows, plain_data, AutoLungs(), purpose="audit", what="test")
    assert filled.rows[0].mask == "box:1 2 30 40" and fake_lungs.calls == 5
    summary = filled.summary
    assert (summary["given"], summary["auto"], summary["suspect"], summary["model"]) == (1, 5, 0, fake_lungs.digest)
    png = Path(filled.rows[1].mask)
    assert png.is_relative_to(tmp_path / "cxr-cache" / "lungs" / fake_lungs.digest[:16])
    mask = np.asarray(Image.open(png))
    assert mask.shape == (64, 64) and set(np.unique(mask)) == {0, 255}
    np.testing.assert_array_equal(mask > 127, fake_lungs.ellipses((64, 64)))
    assert json.loads(png.with_suffix(".json").read_text())["qc"]["flag"] == "ok"
    again = fill_rows(filled.rows, plain_data, AutoLungs(), purpose="audit")  # its own masks: looked up again
    assert [r.mask for r in again.rows] == [r.mask for r in filled.rows] and fake_lungs.calls == 5  # the cache
    other = type(fake_lungs)(digest="e" * 64)  # another model: other masks
    fill_rows(rows, plain_data, AutoLungs(other), purpose="audit")
    assert other.calls == 5
    with caplog.at_level(logging.WARNING, logger="cxr"):
        audit = fill_rows(_rows(blank), blank, AutoLungs(), purpose="audit")
        crop = fill_rows(_rows(blank), blank, AutoLungs(), purpose="crop")
    assert [r.mask for r in audit.rows] == [None, None] and audit.summary["suspect"] == 2  # left out of the audit
    assert fake_lungs.calls == 6  # the two blank pages have the same bytes: segmented once
    whole = np.asarray(Image.open(crop.rows[0].mask))  # the crop of a suspect image: all of it
    assert whole.shape == (40, 50) and whole.min() == 255
    assert "Normal/a.png" in caplog.text and "whole image" in caplog.text
    assert fill_rows(rows, plain_data, None, purpose="audit").rows == rows  # data.lungs: masks


def test_a_lung_crop_model_predicts_plain_images_without_a_box(crop_checkpoint, plain_data, fake_lungs, tmp_path):
    image = plain_data / "COVID" / "covid_0.png"
    predictor = Predictor.from_checkpoint(crop_checkpoint, device="cpu", precision="fp32")
    auto = predictor.predict(image).probabilities
    given = predictor.predict(image, box=fake_lungs.ellipses((64, 64))).probabilities
    assert auto == pytest.approx(given, abs=1e-6)
    array = predictor.predict(np.asarray(Image.open(image))).probabilities  # in memory: segmented, not cached
    assert array == pytest.approx(given, abs=1e-6)
    out = tmp_path / "p.json"
    assert main(["predict", str(crop_checkpoint), str(plain_data), "--out", str(out), "--device", "cpu"]) == 0
    found = {Path(p["path"]).name: p["probabilities"] for p in json.loads(out.read_text())["predictions"]}
    assert len(found) == 6 and found["covid_0.png"] == pytest.approx(given, abs=1e-5)
    png = tmp_path / "cam.png"
    assert main(["explain", str(crop_checkpoint), str(image), "--out", str(png), "--device", "cpu"]) == 0
    picture = np.asarray(Image.open(png))
    assert (picture.reshape(-1, 3) == OUTLINE_RGB).all(axis=1).any()  # the automatic lungs' outline


def test_a_suspect_mask_crops_to_the_whole_image_and_says_so(crop_checkpoint, fake_lungs, tmp_path, caplog):
    flat = tmp_path / "page.png"
    Image.fromarray(np.full((48, 40), 200, np.uint8)).save(flat)
    predictor = Predictor.from_checkpoint(crop_checkpoint, device="cpu", precision="fp32")
    with caplog.at_level(logging.WARNING, logger="cxr"):
        auto = predictor.predict(flat).probabilities
    assert "page.png" in caplog.text and "suspect" in caplog.text and "whole image" in caplog.text
    whole = predictor.predict(flat, box=(0, 0, 40, 48)).probabilities
    assert auto == pytest.approx(whole, abs=1e-6)
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from cxr.serve.app import create_app

    with TestClient(create_app(predictor)) as client:  # the API: no box field needed either
        answer = client.post("/v1/predict", files={"file": ("p.png", flat.read_bytes(), "image/png")})
    assert answer.status_code == 200 and answer.json()["probabilities"] == pytest.approx(whole, abs=1e-5)


@pytest.mark.usefixtures("one_thread")
def test_evaluate_shortcut_on_folders_without_masks_audits_with_automatic_lungs(crop_checkpoint, plain_data,
                                                                                fake_lungs, capsys):
    run = crop_checkpoint.parent.parent
    assert main(["evaluate", str(run), "--external", f"other={plain_data}", "--shortcut", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "shortcut audit (test, 6 images)" in out and "shortcut audit (external other, 6 images)" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["shortcut"]["lungs"]["auto"] == 6 and metrics["external"]["sets"]["other"]["shortcut"]["images"] == 6
    doc = json.loads((run / "lungs.json").read_text())
    assert set(doc["sets"]) == {"test", "external other"} and doc["model"] == fake_lungs.digest
    assert (run / doc["grid"]["figure"]).is_file()
    report = (run / "report.md").read_text()
    assert "## Automatic lung masks" in report and "lungs_auto.png" in report
    assert main(["evaluate", str(run), "--shortcut", "--lungs", "none", "--device", "cpu"]) == 2
    assert "data.lungs: none" in capsys.readouterr().err


def test_the_report_section_shows_the_suspect_share(tmp_path):
    (tmp_path / "lungs.json").write_text(json.dumps({"model": "ab" * 32, "sets": {
        "test": {"images": 10, "given": 2, "auto": 6, "suspect": 2,
                 "suspect_images": [{"path": "x/blank.png", "reason": "lung area 1.0% < 6%"}]}}}))
    blocks = lungs_section(read_run(tmp_path))
    table = next(b for b in blocks if isinstance(b, Table))
    assert table.rows == (("test", "10", "2", "8", "2", "25.0%"),)
    assert "x/blank.png (lung area 1.0% < 6%)" in str(blocks) and not any(isinstance(b, ImageBlock) for b in blocks)
    assert lungs_section(read_run(tmp_path / "nothing")) == []


@pytest.mark.slow
def test_the_packaged_segmenter_makes_cached_masks_at_the_image_size(real_lungs, tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path))
    image = tmp_path / "x.png"
    Image.fromarray(make_image("Normal", np.random.default_rng(1), size=80)[:, :72]).save(image)
    (found,) = AutoLungs().masks([image])
    assert found.path.is_relative_to(tmp_path / "lungs" / real_lungs.digest[:16])
    assert np.asarray(Image.open(found.path)).shape == (80, 72) and (found.width, found.height) == (72, 80)
    assert set(found.qc) >= {"area_fraction", "parts", "balance", "confidence", "flag", "reason"}
    assert AutoLungs().masks([image])[0] == found  # read back from the cache


def test_training_with_lung_crop_on_images_without_masks_gets_automatic_lungs(fake_lungs, tmp_path):
    from cxr.data.synthetic import generate_dataset
    from cxr.rundir import RunDir, read_split_csv
    from cxr.study.data import prepare_data

    data = generate_dataset(tmp_path / "data", n_per_class=5, size=32, classes=CLASSES)
    cfg = RunConfig()
    cfg.data.lung_crop, cfg.data.ratios = True, (0.6, 0.2, 0.2)
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    prepared = prepare_data(cfg, data, run, progress=False)
    assert all(Path(r.mask).is_relative_to(tmp_path / "cxr-cache" / "lungs") for r in prepared.rows)
    assert fake_lungs.calls == 10 and not any(r.mask for r in read_split_csv(run.split))  # split.csv: as given
    cfg.data.lungs = "masks"
    with pytest.raises(CxrError, match="lung mask or box for every image"):
        prepare_data(cfg, data, RunDir(tmp_path / "run2"), progress=False)
