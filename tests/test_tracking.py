"""Experiment tracking: the tracker interface, MLflow runs found by mlflow.search_runs with the run's
metrics (resume continues the same run), and tracking failures that never fail a run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from cxr import study
from cxr.config import RunConfig
from cxr.data.synthetic import generate_dataset
from cxr.errors import CxrError
from cxr.rundir import RunDir, read_history_csv
from cxr.tracking.base import Guarded, epoch_scalars, flatten, scalars

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(epochs: int, backend: str, uri: str = "") -> RunConfig:
    cfg = RunConfig(name="tracked")
    cfg.data.image_size, cfg.data.num_workers = 32, 0
    cfg.model.backbone, cfg.model.weights, cfg.model.head = "efficientnet_lite0", "random", (16,)
    cfg.train.epochs, cfg.train.batch_size, cfg.train.feature_cache = epochs, 8, False
    cfg.eval.bootstrap, cfg.eval.aug_samples, cfg.eval.grid_per_class = 10, 2, 1
    cfg.track.backend, cfg.track.uri = backend, uri
    return cfg


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("synthetic") / "data", n_per_class=6, size=40, seed=1)


def test_flattening_for_trackers() -> None:
    assert flatten({"train": {"lr": 1e-4, "zoom": [0.9, 1.1]}, "name": "x"}) == {
        "train.lr": 1e-4, "train.zoom": "[0.9, 1.1]", "name": "x"}
    metrics = {"accuracy": 0.5, "n": 8, "ci": {"accuracy": [0.2, 0.8]}, "per_class": {"A": {"f1": 0.4}},
               "auc": math.nan, "report": "text", "ok": True}
    assert scalars(metrics, "test/") == {"test/accuracy": 0.5, "test/n": 8.0, "test/ci/accuracy/low": 0.2,
                                         "test/ci/accuracy/high": 0.8, "test/per_class/A/f1": 0.4}
    step, values = epoch_scalars({"epoch": 3, "lr": 0.1, "train_loss": 1.0, "val_macro_f1": 0.3, "phase": 1})
    assert step == 3 and values == {"lr": 0.1, "train/loss": 1.0, "val/macro_f1": 0.3, "phase": 1.0}


def test_a_failing_tracker_is_switched_off_with_one_warning(caplog) -> None:
    class Broken:
        calls = 0

        def log_epoch(self, row):
            Broken.calls += 1
            raise ConnectionError("server gone")

    guarded = Guarded(Broken(), "mlflow")  # type: ignore[arg-type]
    guarded.log_epoch({"epoch": 1})
    guarded.log_epoch({"epoch": 2})
    guarded.close()
    assert Broken.calls == 1 and "mlflow tracking stopped (ConnectionError: server gone)" in caplog.text


def test_a_missing_tracking_package_stops_the_run_before_training(tiny_data, tmp_path, monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    out = tmp_path / "run"
    with pytest.raises(CxrError, match=r"pip install 'cxr\[mlflow\]'"):
        study.train(tiny_config(1, "mlflow"), tiny_data, out, progress=False)
    assert not out.exists()  # a refused run leaves no folder


@pytest.mark.slow
def test_mlflow_run_has_params_epoch_and_test_metrics_and_resume_continues_it(tiny_data, tmp_path) -> None:
    mlflow = pytest.importorskip("mlflow")
    out = tmp_path / "runs" / "tracked"
    study.train(tiny_config(1, "mlflow"), tiny_data, out, progress=False)
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"  # the default store, beside the run folder
    assert json.loads(RunDir(out).tracking.read_text())["uri"] == uri
    first = json.loads(RunDir(out).tracking.read_text())["run_id"]
    result = study.run_study(tiny_config(2, "mlflow"), tiny_data, out, resume=True, progress=False)
    assert json.loads(RunDir(out).tracking.read_text())["run_id"] == first
    mlflow.set_tracking_uri(uri)
    try:
        runs = mlflow.search_runs(experiment_names=["cxr"], output_format="list")
        client = mlflow.tracking.MlflowClient(uri)
        assert [r.info.run_id for r in runs] == [first]
        run = runs[0]
        assert run.info.status == "FINISHED" and run.info.run_name == "tracked"
        assert run.data.params["model.backbone"] == "efficientnet_lite0" and run.data.params["train.epochs"] == "1"
        history = read_history_csv(RunDir(out).history)
        val_loss = client.get_metric_history(first, "val/loss")
        assert [(m.step, m.value) for m in val_loss] == [(int(r["epoch"]), pytest.approx(r["val_loss"])) for r in history]
        assert run.data.metrics["test/accuracy"] == pytest.approx(result.test["accuracy"])
        artifacts = {a.path for a in client.list_artifacts(first)}
        assert {"metrics.json", "report.html", "figures", "checkpoints"} <= artifacts
    finally:
        mlflow.set_tracking_uri(None)
    assert torch.load(out / "checkpoints" / "best.pt", weights_only=True)["format"] == "cxr-checkpoint/1"
