"""Lung-crop preprocessing (`data.lung_crop`): trained with it, the checkpoint records it, and
evaluation, `Predictor`, `cxr predict`, `cxr explain` and the HTTP API crop to the lungs, refusing an
image without a lung region when automatic lungs are off (`data.lungs: masks`; tests/test_auto_lungs.py
has the automatic ones)."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr import study
from cxr.checkpoint import load_checkpoint, save_checkpoint
from cxr.cli import main
from cxr.config import DataConfig, ModelConfig, RunConfig
from cxr.data.synthetic import CLASSES, generate_dataset, make_image
from cxr.errors import CxrError
from cxr.explain import explain
from cxr.explain_masks import OUTLINE_RGB
from cxr.predict import Predictor
from cxr.transforms import Preprocessing

SIZE = 64
BOX = (20, 16, 76, 80)  # x0 y0 x1 y1 in the 96x96 test image


@pytest.fixture(scope="module")
def crop_checkpoint(tmp_path_factory, calibrated_model) -> Path:
    cfg = RunConfig(name="crop", data=DataConfig(lung_crop=True, lung_crop_margin=0.0),
                    model=ModelConfig(backbone="efficientnet_lite0", weights="random", head=(16,), freeze="none"))
    model = calibrated_model(cfg.model, len(CLASSES), SIZE)
    return save_checkpoint(tmp_path_factory.mktemp("crop") / "crop.pt", model=model, config=cfg, classes=list(CLASSES),
                           preprocessing=Preprocessing(mode="half", size=SIZE), epoch=1)


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "x.png"
    Image.fromarray(make_image("COVID", np.random.default_rng(0), size=96)).save(path)
    return path


def test_the_predictor_crops_to_the_box_and_refuses_an_image_without_one(crop_checkpoint, image_file):
    predictor = Predictor.from_checkpoint(crop_checkpoint, device="cpu", precision="fp32", lungs="masks")
    assert predictor.lung_crop == 0.0 and predictor.auto_lungs is None
    with pytest.raises(CxrError, match="trained on lung crops"):
        predictor.predict(image_file)
    cropped = np.asarray(Image.open(image_file))[BOX[1]:BOX[3], BOX[0]:BOX[2]]
    with_box = predictor.predict(image_file, box=BOX).probabilities
    plain = Predictor.from_checkpoint(crop_checkpoint, device="cpu", precision="fp32")
    plain.lung_crop = None  # the same model, given the crop itself
    assert plain.predict(cropped).probabilities == pytest.approx(with_box, abs=1e-6)
    mask = np.zeros((96, 96), np.uint8)
    mask[BOX[1]:BOX[3], BOX[0]:BOX[2]] = 255
    assert predictor.predict(image_file, box=mask).probabilities == pytest.approx(with_box, abs=1e-6)
    both = predictor.predict([image_file, image_file], boxes=[BOX, "20 16 76 80"])
    assert [p.probabilities for p in both] == [pytest.approx(with_box, abs=1e-6)] * 2
    with pytest.raises(CxrError, match="one per image"):
        predictor.predict([image_file, image_file], boxes=[BOX])


def test_cxr_predict_and_explain_take_a_box(crop_checkpoint, image_file, tmp_path, capsys):
    assert main(["predict", str(crop_checkpoint), str(image_file), "--device", "cpu", "--lungs", "masks"]) == 2
    assert "trained on lung crops" in capsys.readouterr().err
    out = tmp_path / "p.json"
    assert main(["predict", str(crop_checkpoint), str(image_file), "--box", "20,16,76,80", "--out", str(out),
                 "--device", "cpu"]) == 0
    assert json.loads(out.read_text())["predictions"][0]["label"] in CLASSES
    png = tmp_path / "cam.png"
    assert main(["explain", str(crop_checkpoint), str(image_file), "--box", "20 16 76 80", "--out", str(png),
                 "--device", "cpu"]) == 0
    picture = np.asarray(Image.open(png))
    assert picture.shape == (64, 56, 3)  # the crop is what the model saw
    assert (picture.reshape(-1, 3) == OUTLINE_RGB).all(axis=1).any()
    predictor = Predictor.from_checkpoint(crop_checkpoint, device="cpu", precision="fp32")
    assert explain(predictor, image_file, box=BOX).image.shape == (64, 56)


def test_explain_draws_the_mask_outline_for_any_model(tmp_path, image_file, calibrated_model, capsys):
    cfg = RunConfig(name="plain", model=ModelConfig(backbone="efficientnet_lite0", weights="random", head=(16,)))
    ckpt = save_checkpoint(tmp_path / "plain.pt", model=calibrated_model(cfg.model, 4, SIZE), config=cfg,
                           classes=list(CLASSES), preprocessing=Preprocessing("half", SIZE), epoch=1)
    mask = np.zeros((48, 48), np.uint8)  # half size: scaled to the image
    mask[10:40, 8:20] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "cam.png"
    assert main(["explain", str(ckpt), str(image_file), "--mask", str(tmp_path / "mask.png"), "--out", str(out),
                 "--device", "cpu"]) == 0
    picture = np.asarray(Image.open(out))
    green = (picture.reshape(96, 96, 3) == OUTLINE_RGB).all(axis=2)
    assert green.any() and not green[:, 50:].any()  # the outline follows the mask (left half only)


def test_the_api_needs_the_box_field_for_a_lung_crop_model(crop_checkpoint, image_file):
    pytest.importorskip("fastapi")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    from cxr.serve.app import create_app

    predictor = Predictor.from_checkpoint(crop_checkpoint, device="cpu", precision="fp32", lungs="masks")
    body = image_file.read_bytes()
    with TestClient(create_app(predictor)) as client:
        missing = client.post("/v1/predict", files={"file": ("x.png", body, "image/png")})
        assert missing.status_code == 422 and "box" in missing.json()["detail"]
        ok = client.post("/v1/predict", files={"file": ("x.png", body, "image/png")}, data={"box": "20 16 76 80"})
        assert ok.status_code == 200
        expected = predictor.predict(image_file, box=BOX).probabilities
        assert ok.json()["probabilities"] == pytest.approx(expected, abs=1e-5)
        bad = client.post("/v1/predict", files={"file": ("x.png", body, "image/png")}, data={"box": "1 2 3"})
        assert bad.status_code == 422
        cam = client.post("/v1/explain", files={"file": ("x.png", body, "image/png")}, data={"box": "20 16 76 80"})
        assert cam.status_code == 200 and Image.open(io.BytesIO(cam.content)).size == (56, 64)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_a_study_with_lung_crop_records_it_and_needs_regions(tmp_path):
    data = generate_dataset(tmp_path / "data", n_per_class=8, size=48, classes=["COVID", "Normal"], masks=True)
    cfg = RunConfig(name="crop")
    cfg.model.backbone, cfg.model.weights, cfg.model.head = "efficientnet_lite0", "random", (8,)
    cfg.data.image_size, cfg.data.num_workers, cfg.data.lung_crop = 32, 0, True
    cfg.train.epochs, cfg.train.batch_size, cfg.train.precision = 1, 8, "fp32"
    run = study.train(cfg, data, tmp_path / "run", progress=False).run_dir
    ckpt = load_checkpoint(run / "checkpoints" / "best.pt")
    assert ckpt["config"]["data"]["lung_crop"] is True
    metrics = study.evaluate_checkpoint(run / "checkpoints" / "best.pt", data, progress=False)
    assert metrics["n"] >= 1
    plain = generate_dataset(tmp_path / "plain", n_per_class=8, size=48, classes=["COVID", "Normal"])
    cfg.data.lungs = "masks"  # no automatic lungs
    with pytest.raises(CxrError, match="lung mask or box for every image"):
        study.train(cfg, plain, tmp_path / "run2", progress=False)
    with pytest.raises(CxrError, match="lung mask or box for every image"):
        study.evaluate_checkpoint(run / "checkpoints" / "best.pt", plain, progress=False, lungs="masks")
