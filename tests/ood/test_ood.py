"""The out-of-distribution detector end to end on a tiny run folder: fit and threshold on synthetic
features, stored in best.pt and read back, the Predictor's verdicts, `cxr predict`'s columns,
`cxr serve --reject-ood`, and the share `cxr evaluate` reports."""

from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxr.checkpoint import load_checkpoint, save_checkpoint
from cxr.cli import main
from cxr.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from cxr.data.discover import discover
from cxr.data.synthetic import CLASSES, generate_dataset
from cxr.ood.detector import FeatureDetector, fit_detector
from cxr.ood.fit import OOD_KEY, detector_of, fit_checkpoint, store_state
from cxr.predict import Predictor
from cxr.rundir import SplitRow, write_split_csv
from cxr.serve.app import create_app
from cxr.study.checkpoint_eval import evaluate_checkpoint
from cxr.transforms import Preprocessing

with warnings.catch_warnings():  # starlette 1.x asks for `httpx2` for its TestClient; httpx still works
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

SIZE = 32
pytestmark = pytest.mark.usefixtures("one_thread")


def test_mahalanobis_threshold_accepts_the_asked_share_and_flags_far_points():
    rng = np.random.default_rng(0)
    scale = np.linspace(3, 0.1, 40)
    train, val = rng.normal(0, 1, (400, 40)) * scale, rng.normal(0, 1, (200, 40)) * scale
    far = rng.normal(0, 1, (50, 40)) * scale + 4 * scale[::-1]  # off in the low-variance directions
    for method in ("mahalanobis", "knn"):
        det = fit_detector(train, method=method, components=8).calibrate(val, accept=0.9)
        assert np.mean(det.flags(val)[1]) == pytest.approx(0.1, abs=0.01)
        assert det.flags(far)[1].all()
        back = FeatureDetector.from_state(det.to_state())
        np.testing.assert_allclose(back.score(far), det.score(far), rtol=1e-4)
    energy = fit_detector(None, rng.normal(0, 1, (10, 4)), "energy").calibrate(None, rng.normal(0, 1, (100, 4)))
    assert energy.score(None, np.array([[20.0, 0, 0, 0]]))[0] < energy.threshold  # a confident logit is "in"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, calibrated_model) -> Path:
    """runs/tiny: synthetic images, split.csv, best.pt (random Lite0 with calibrated BatchNorm) and its
    detector fitted from split.csv by `fit_checkpoint` (what `cxr evaluate --fit-ood` calls)."""
    data = generate_dataset(tmp_path_factory.mktemp("data") / "syn", n_per_class=8, size=48, seed=0)
    found = discover(data)
    rows = [SplitRow(s.path, s.label, ("train", "train", "val", "test")[i % 4], s.path)
            for i, s in enumerate(found.samples)]
    out = tmp_path_factory.mktemp("runs") / "tiny"
    write_split_csv(rows, out / "split.csv")
    cfg = RunConfig(name="tiny", data=DataConfig(root=str(data), num_workers=0, image_size=SIZE),
                    model=ModelConfig(backbone="efficientnet_lite0", weights="random", head=(16,), freeze="none"),
                    train=TrainConfig(batch_size=8))
    cfg.eval.bootstrap = 20
    model = calibrated_model(cfg.model, len(CLASSES), SIZE)
    best = save_checkpoint(out / "checkpoints" / "best.pt", model=model, config=cfg, classes=list(CLASSES),
                           preprocessing=Preprocessing(mode="half", size=SIZE), epoch=1)
    fit_checkpoint(best, device="cpu", progress=False)
    return out


def test_the_detector_is_stored_in_best_pt_and_read_back(run):
    extra = load_checkpoint(run / "checkpoints" / "best.pt")["extra"]
    assert isinstance(extra[OOD_KEY]["arrays"]["components"], torch.Tensor)  # weights-only loadable
    det = detector_of(extra)
    assert det.method == "mahalanobis" and np.isfinite(det.threshold)
    assert det.info["train_images"] == 16 and det.info["val_images"] == 8


def _pictures() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    photo = rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)
    return {"colour": photo, "black": np.zeros((64, 64), np.uint8), "strip": rng.integers(0, 256, (20, 200), np.uint8)}


@pytest.fixture(scope="module")
def predictor(run: Path) -> Predictor:
    return Predictor.from_checkpoint(run / "checkpoints" / "best.pt", device="cpu", precision="fp32")


def test_predictions_carry_the_verdict_and_its_reason(run, predictor):
    pictures = _pictures()
    preds = predictor.predict(list(pictures.values()))
    for p, word in zip(preds, ("colour", "near-constant", "aspect"), strict=True):
        assert p.in_distribution is False and word in p.reason
        assert p.to_dict()["in_distribution"] is False
    data = Path(load_checkpoint(run / "checkpoints" / "best.pt")["config"]["data"]["root"])
    xray = next(data.rglob("*.png"))
    ok = predictor.predict(xray)
    assert ok.ood_score is not None and ok.reason is not None
    assert ok.in_distribution == (ok.ood_score <= 1.0)


def test_cxr_predict_adds_the_columns(run, tmp_path, capsys):
    paths = []
    for name, image in _pictures().items():
        paths.append(tmp_path / f"{name}.png")
        Image.fromarray(image).save(paths[-1])
    ckpt = str(run / "checkpoints" / "best.pt")
    assert main(["predict", ckpt, *map(str, paths), "--engine", "torch", "--out", str(tmp_path / "p.csv")]) == 0
    with open(tmp_path / "p.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["in_distribution"] for r in rows] == ["false"] * 3
    assert "colour image" in rows[0]["reason"]
    assert main(["predict", ckpt, str(paths[0]), "--engine", "torch"]) == 0
    table = capsys.readouterr().out
    assert "in_distribution" in table.splitlines()[0] and "false" in table


def test_serve_reject_ood_answers_422_with_the_reason(predictor):
    buf = io.BytesIO()
    Image.fromarray(_pictures()["colour"]).save(buf, format="PNG")
    with TestClient(create_app(predictor, reject_ood=True)) as client:
        resp = client.post("/v1/predict", files={"file": ("photo.png", buf.getvalue(), "image/png")})
        assert resp.status_code == 422 and "colour image" in resp.json()["detail"]
        assert client.get("/v1/model").json()["ood"]["detector"]["method"] == "mahalanobis"
    with TestClient(create_app(predictor)) as client:
        body = client.post("/v1/predict", files={"file": ("photo.png", buf.getvalue(), "image/png")}).json()
        assert body["in_distribution"] is False and "colour image" in body["reason"]


def test_evaluate_reports_the_share_flagged(run):
    ckpt = run / "checkpoints" / "best.pt"
    data = load_checkpoint(ckpt)["config"]["data"]["root"]
    metrics = evaluate_checkpoint(ckpt, data, "val", device="cpu", engine="torch", progress=False)
    ood = metrics["ood"]
    assert ood["n"] == 8 and ood["method"] == "mahalanobis"
    assert ood["flagged"] == ood["detector"] == round(ood["share"] * 8)  # synthetic X-rays pass the image checks
    assert ood["flagged"] <= 1  # the threshold was chosen on these 8 images to accept 95%


def test_without_a_detector_only_the_image_checks_answer(run, tmp_path):
    ckpt = tmp_path / "plain.pt"
    ckpt.write_bytes((run / "checkpoints" / "best.pt").read_bytes())
    store_state(ckpt, None)
    predictor = Predictor.from_checkpoint(ckpt, device="cpu", precision="fp32")
    colour, black, _ = predictor.predict(list(_pictures().values()))
    assert not colour.in_distribution and colour.ood_score is None
    assert predictor.ood.describe()["detector"] is None


def test_one_backbone_pass_gives_the_logits_and_the_features(predictor, monkeypatch):
    from cxr.data.synthetic import make_image

    rng = np.random.default_rng(5)
    x = torch.stack([predictor.preprocess(make_image(c, rng, size=48)) for c in CLASSES])
    model = predictor.model
    calls = []
    original = model.forward_features
    monkeypatch.setattr(model, "forward_features", lambda t: calls.append(len(t)) or original(t))
    probs = predictor.predict_tensor(x)
    assert calls == [len(CLASSES)]  # one pass
    with torch.no_grad():
        pooled = original(x).mean((2, 3))
        expected = torch.softmax(model.forward_head(pooled) / predictor.temperature, 1).numpy()
    np.testing.assert_allclose(predictor.ood.features, pooled.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probs, expected, atol=1e-6)


@pytest.mark.slow
def test_an_exported_engine_gives_the_features_and_the_head_runs_in_torch(run, predictor):
    pytest.importorskip("onnxruntime")
    from cxr.data.synthetic import make_image

    exported = Predictor.from_checkpoint(run / "checkpoints" / "best.pt", device="cpu", precision="fp32")
    exported.use_engine("onnxruntime")
    assert exported.engine.output == "features"
    images = [make_image(c, np.random.default_rng(6), size=48) for c in CLASSES]
    for a, b in zip(predictor.predict(images), exported.predict(images), strict=True):
        assert a.label == b.label and a.in_distribution == b.in_distribution
        assert b.ood_score == pytest.approx(a.ood_score, rel=1e-3)
