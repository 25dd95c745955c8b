"""Prediction sets at the point of use: stored in best.pt and read back, `Predictor(coverage=)`,
`cxr predict --coverage`, the API's `coverage` field and `prediction_set`, the exports' metadata,
and `cxr evaluate` on checkpoints with and without a calibration."""

from __future__ import annotations

import csv
import io
import json
import shlex
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr.checkpoint import load_checkpoint, save_checkpoint
from cxr.cli import main
from cxr.config import ModelConfig, RunConfig
from cxr.data.synthetic import CLASSES, generate_dataset, make_image
from cxr.errors import CxrError
from cxr.metrics.conformal import calibrate_conformal
from cxr.predict import Predictor
from cxr.prediction_sets import CONFORMAL_KEY, conformal_of, store_conformal
from cxr.transforms import Preprocessing

SIZE = 48
N_CAL = 48


def _xrays(n: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % len(CLASSES)
    return [make_image(CLASSES[i], rng, size=64) for i in y], y


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory, calibrated_model) -> Path:
    """A tiny checkpoint as older runs left it: no conformal calibration."""
    cfg = RunConfig(name="tiny", model=ModelConfig(backbone="efficientnet_lite0", weights="random", head=(16,),
                                                  freeze="none"))
    cfg.data.num_workers = 0
    cfg.eval.bootstrap = 10
    model = calibrated_model(cfg.model, len(CLASSES), SIZE)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "plain.pt", model=model, config=cfg,
                           classes=list(CLASSES), preprocessing=Preprocessing(mode="half", size=SIZE), epoch=1)


@pytest.fixture(scope="module")
def calibrated(plain: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same model with conformal scores calibrated on its own probabilities of synthetic X-rays."""
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    shutil.copy(plain, path)
    images, y = _xrays(N_CAL, 0)
    preds = Predictor.from_checkpoint(path, device="cpu", precision="fp32").predict(images)
    probs = np.array([[p.probabilities[c] for c in CLASSES] for p in preds])
    store_conformal(path, calibrate_conformal(probs, y, CLASSES, record={"fitted_on": "val"}))
    return path


@pytest.fixture(scope="module")
def predictor(calibrated: Path) -> Predictor:
    return Predictor.from_checkpoint(calibrated, device="cpu", precision="fp32", coverage=0.9)


def test_best_pt_keeps_the_calibration_and_reads_it_back(calibrated: Path, plain: Path) -> None:
    state = load_checkpoint(calibrated)
    calibration = conformal_of(state)
    assert calibration.n == N_CAL and calibration.classes == tuple(CLASSES) and calibration.method == "lac"
    assert set(calibration.scores) == {"lac", "aps", "raps"} and calibration.record["fitted_on"] == "val"
    assert all(np.all(np.diff(s) >= 0) for s in calibration.scores.values())  # stored sorted
    assert sum(len(s) for s in calibration.class_scores["aps"].values()) == N_CAL
    assert conformal_of(load_checkpoint(plain)) is None
    broken = dict(state, extra={**state["extra"], CONFORMAL_KEY: {"scores": 3}})
    with pytest.raises(CxrError, match="not a conformal calibration record"):
        conformal_of(broken)


def test_predictor_sets_follow_the_stored_thresholds(predictor: Predictor, calibrated: Path) -> None:
    images, _ = _xrays(12, 1)
    preds = predictor.predict(images)
    calibration = conformal_of(load_checkpoint(calibrated))
    probs = np.array([[p.probabilities[c] for c in CLASSES] for p in preds])
    member = calibration.sets(probs, coverage=0.9)
    for p, keep in zip(preds, member, strict=True):
        assert set(p.prediction_set) == {c for c, k in zip(CLASSES, keep, strict=True) if k}
        assert list(p.prediction_set) == sorted(p.prediction_set, key=lambda c: -p.probabilities[c])
        assert p.to_dict()["prediction_set"] == list(p.prediction_set)
    predictor.set_coverage(0.3)
    try:
        smaller = predictor.predict(images)
        assert all(set(s.prediction_set) <= set(b.prediction_set) for s, b in zip(smaller, preds, strict=True))
        assert sum(len(s.prediction_set) for s in smaller) < sum(len(b.prediction_set) for b in preds)
        predictor.set_coverage(None)
        assert predictor.predict(images[:1])[0].prediction_set is None
        assert "prediction_set" not in predictor.predict(images[:1])[0].to_dict()
    finally:
        predictor.set_coverage(0.9)
    with pytest.raises(CxrError, match=r"--coverage must be a number in \(0, 1\)"):
        predictor.set_coverage(1.5)


def test_a_checkpoint_without_calibration_refuses_sets_and_predicts_as_before(plain: Path) -> None:
    with pytest.raises(CxrError, match="holds no conformal calibration, so it cannot give prediction sets"):
        Predictor.from_checkpoint(plain, device="cpu", coverage=0.9)
    assert Predictor.from_checkpoint(plain, device="cpu").predict(_xrays(1, 2)[0][0]).prediction_set is None


def test_cli_predict_coverage_prints_and_writes_the_sets(calibrated: Path, plain: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, img in enumerate(_xrays(3, 3)[0]):
        Image.fromarray(img).save(folder / f"x{i}.png")
    args = ["predict", str(calibrated), str(folder), "--coverage", "0.9", "--engine", "torch"]
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    header = shlex.split(lines[0])
    cells = [shlex.split(line)[header.index("set")] for line in lines[1:]]
    assert len(cells) == 3 and all(c.startswith("{") and c.endswith("}") for c in cells)
    assert main([*args, "--out", str(tmp_path / "p.csv")]) == 0
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert len(rows) == 3 and all(r["prediction_set"].startswith("{") and r["predicted_label"] in r["prediction_set"]
                                  or r["prediction_set"] == "{}" for r in rows)
    assert main([*args, "--out", str(tmp_path / "p.json")]) == 0
    doc = json.loads((tmp_path / "p.json").read_text())
    assert doc["prediction_sets"] == {"coverage": 0.9, "method": "lac", "mondrian": False, "calibration_images": N_CAL}
    assert all(isinstance(p["prediction_set"], list) for p in doc["predictions"])
    capsys.readouterr()
    assert main(["predict", str(plain), str(folder), "--coverage", "0.9"]) == 2
    err = capsys.readouterr().err
    assert "holds no conformal calibration" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def client(predictor: Predictor) -> Iterator:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
        from fastapi.testclient import TestClient

    from cxr.serve.app import create_app

    with TestClient(create_app(predictor)) as c:
        yield c


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_xrays(1, 4)[0][0]).save(buf, format="PNG")
    return buf.getvalue()


def test_api_answers_with_the_set_at_the_requested_coverage(client, plain: Path) -> None:
    files = {"file": ("x.png", _png(), "image/png")}
    default = client.post("/v1/predict", files=files).json()
    assert default["coverage"] == 0.9 and default["label"] in default["prediction_set"] or not default["prediction_set"]
    small = client.post("/v1/predict", files=files, data={"coverage": "0.2"}).json()
    assert small["coverage"] == 0.2 and set(small["prediction_set"]) <= set(default["prediction_set"])
    assert client.post("/v1/predict?coverage=0.2", files=files).json()["prediction_set"] == small["prediction_set"]
    bad = client.post("/v1/predict?coverage=1.5", files=files)
    assert bad.status_code == 422 and "coverage must be a number in (0, 1)" in bad.json()["detail"]
    batch = client.post("/v1/predict/batch?coverage=0.2", files=[("file", ("a.png", _png(), "image/png"))] * 2)
    assert [r["prediction_set"] for r in batch.json()["results"]] == [small["prediction_set"]] * 2
    assert client.post("/v1/predict/batch?coverage=0", files=[("file", ("a.png", _png(), "image/png"))]).status_code == 422
    schema = client.get("/openapi.json").json()["paths"]
    assert any(p["name"] == "coverage" for p in schema["/v1/predict"]["post"]["parameters"])
    assert "prediction_set" in json.dumps(schema["/v1/predict/batch"]["post"]["responses"]["200"])
    card = client.get("/v1/model").json()["prediction_sets"]
    assert card["coverage"] == 0.9 and card["calibration_images"] == N_CAL

    from fastapi.testclient import TestClient

    from cxr.serve.app import create_app

    with TestClient(create_app(Predictor.from_checkpoint(plain, device="cpu"))) as old:
        assert "prediction_set" not in old.post("/v1/predict", files=files).json()
        refused = old.post("/v1/predict?coverage=0.9", files=files)
        assert refused.status_code == 422 and "no conformal calibration" in refused.json()["detail"]
        assert old.get("/v1/model").json()["prediction_sets"] is None


def test_export_metadata_forms_the_sets_predict_gives(calibrated: Path, plain: Path, predictor: Predictor,
                                                      tmp_path: Path) -> None:
    import torch

    from cxr.export import TORCHSCRIPT_META, export_torchscript, parity_inputs
    from cxr.prediction_sets import export_metadata

    out = export_torchscript(calibrated, tmp_path / "m.pt")  # ONNX writes the same dict (export._set_metadata)
    files = {TORCHSCRIPT_META: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)  # torch.jit.load is deprecated
        torch.jit.load(str(out), _extra_files=files)
    meta = json.loads(files[TORCHSCRIPT_META])["conformal"]
    assert meta == json.loads(json.dumps(export_metadata(load_checkpoint(calibrated))["conformal"]))
    assert meta["method"] == "lac" and meta["coverage"] == 0.9 and set(meta["quantiles"]) == {"0.8", "0.9", "0.95"}
    x = parity_inputs(predictor.preprocessing, 6)
    probs = predictor.predict_tensor(x)
    quantile = np.array([np.inf if q is None else q for q in meta["quantile"]])
    from_metadata = (1.0 - probs) <= quantile  # the LAC rule the metadata's `how` spells out
    for row, p in zip(from_metadata, probs, strict=True):
        names = predictor.to_prediction(p).prediction_set
        assert {c for c, keep in zip(CLASSES, row, strict=True) if keep} == set(names)
    assert export_metadata(load_checkpoint(plain)) == {}


def test_evaluate_reports_coverage_and_an_older_checkpoint_none(calibrated: Path, plain: Path, tmp_path: Path) -> None:
    from cxr.study.checkpoint_eval import evaluate_checkpoint

    data = generate_dataset(tmp_path / "data", n_per_class=4, size=64, seed=5)
    metrics = evaluate_checkpoint(calibrated, data, progress=False, device="cpu", engine="torch")
    entry = metrics["conformal"]
    assert entry["n"] == 16 and entry["nominal"] == 0.9 and 0.0 <= entry["coverage"] <= 1.0
    assert sum(entry["size_counts"].values()) == 16 and set(entry["per_class"]) == set(CLASSES)
    assert evaluate_checkpoint(plain, data, progress=False, device="cpu", engine="torch")["conformal"] is None
