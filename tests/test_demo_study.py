"""A demo-like study on the synthetic generator: an honest result (good, imperfect, with an interval),
marked synthetic everywhere, calibrated, with operating points, error gallery and provenance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cxr import study
from cxr.checkpoint import load_checkpoint
from cxr.data.synthetic import SYNTHETIC_MARKER, generate_dataset
from cxr.predict import Predictor
from cxr.temperature import SYNTHETIC_KEY, TEMPERATURE_KEY

pytestmark = pytest.mark.usefixtures("one_thread")

N_PER_CLASS = 50  # 40 test images, 20 validation images (enough to fit the temperature)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's recipe (Lite0 ImageNet, frozen, the feature cache) on a smaller synthetic set."""
    root = tmp_path_factory.mktemp("demo")
    data = generate_dataset(root / "data", n_per_class=N_PER_CLASS, size=96, seed=0)
    cfg = study.demo_config()
    cfg.data.image_size = 96
    cfg.data.num_workers = 0
    cfg.train.feature_views = 1
    cfg.train.engine = cfg.eval.engine = "torch"  # the same model and labels on every machine (not auto's pick)
    cfg.eval.bootstrap = 200
    cfg.eval.aug_samples = 4
    cfg.eval.grid_per_class = 2
    return study.run_study(cfg, data, root / "run", cache_dir=root / "cache", progress=False).run_dir


@pytest.mark.slow
def test_the_demo_is_good_but_not_perfect(demo_run: Path) -> None:
    metrics = json.loads((demo_run / "metrics.json").read_text())
    test = metrics["test"]
    assert 0.6 <= test["accuracy"] <= 0.97, test["accuracy"]  # learnable, with real confusions
    low, high = test["ci"]["accuracy"]
    assert high - low > 0 and low < test["accuracy"] < high
    confusion = np.array(test["confusion"])
    assert confusion.sum() - np.trace(confusion) > 0


@pytest.mark.slow
def test_synthetic_data_is_said_everywhere(demo_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    metrics = json.loads((demo_run / "metrics.json").read_text())
    assert metrics["data"]["synthetic"] is True and metrics["provenance"]["data"]["synthetic"] is True
    assert load_checkpoint(demo_run / "checkpoints" / "best.pt")["extra"][SYNTHETIC_KEY] is True
    md = (demo_run / "report.md").read_text()
    first_screen = md.split("## Run summary")[0]
    assert "Synthetic data, no medical meaning" in first_screen and "200 images" in first_screen
    assert "0.928" not in md and "seed's published" not in md.split("## Test results")[1].split("## Calibration")[0]
    predictor = Predictor.from_checkpoint(demo_run / "checkpoints" / "best.pt", device="cpu")
    assert predictor.synthetic
    from cxr.serve.modelcard import build_model_card

    card = build_model_card(predictor)
    assert "synthetic" in card["warning"] and card["training_data"]["synthetic"] is True
    from cxr.cli import main

    image = next((demo_run.parent / "data" / "COVID").glob("*.png"))
    assert main(["-q", "predict", str(demo_run / "checkpoints" / "best.pt"), str(image)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert any(line.startswith("WARNING") and "trained on synthetic images" in line and "no medical meaning" in line
               for line in err), err


@pytest.mark.slow
def test_calibration_operating_points_and_errors_are_in_metrics_and_report(demo_run: Path) -> None:
    metrics = json.loads((demo_run / "metrics.json").read_text())
    test = metrics["test"]
    best = load_checkpoint(demo_run / "checkpoints" / "best.pt")
    assert best["extra"][TEMPERATURE_KEY] == test["temperature"] == test["calibration"]["temperature"]
    for side in ("before", "after"):
        assert test["calibration"][side]["ece_ci"] is not None
    points = test["operating_points"]["per_class"]
    assert set(points) == set(metrics["classes"])
    for entry in points.values():
        assert entry["argmax"]["sensitivity_ci"] and entry["average_precision"] is not None
    errors = metrics["errors"]
    assert errors["mistakes"] == int(np.sum(np.array(test["confusion"])) - np.trace(np.array(test["confusion"])))
    assert 0 < len(errors["items"]) <= errors["mistakes"]
    for item in errors["items"]:
        assert (demo_run / item["figure"]).is_file() and item["true"] != item["predicted"]
    assert len(list((demo_run / "figures" / "errors").glob("*.png"))) == len(errors["items"])
    md = (demo_run / "report.md").read_text()
    for heading in ("## Calibration", "## Operating points", "## Error analysis", "## Provenance"):
        assert heading in md
    assert "figures/errors/" in md and "figures/pr_curves.png" in md and "confusion_matrix_by_true.png" in md
    assert (demo_run / "SYNTHETIC.txt").exists() is False and (demo_run.parent / "data" / SYNTHETIC_MARKER).is_file()


@pytest.mark.slow
def test_serve_answers_carry_the_synthetic_warning(demo_run: Path) -> None:
    pytest.importorskip("fastapi")
    import warnings

    from cxr.serve.app import create_app

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
        from fastapi.testclient import TestClient

    predictor = Predictor.from_checkpoint(demo_run / "checkpoints" / "best.pt", device="cpu", precision="fp32")
    image = next((demo_run.parent / "data" / "Normal").glob("*.png")).read_bytes()
    with TestClient(create_app(predictor)) as client:
        assert "synthetic" in client.get("/v1/model").json()["warning"]
        answer = client.post("/v1/predict", files={"file": ("x.png", image, "image/png")}).json()
        assert "no medical meaning" in answer["warning"] and answer["label"]
        batch = client.post("/v1/predict/batch", files=[("file", ("x.png", image, "image/png"))]).json()
        assert "warning" in batch
