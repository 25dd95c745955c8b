"""Multi-label studies learn on a few hundred images: the recipe (a linear, class-balanced, regularised
head), the val mean AUROC in history.csv and as the selection metric, and `cxr evaluate` on a set that
lacks a finding (that finding n/a, the others scored)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from cxr import study
from cxr.checkpoint import load_checkpoint
from cxr.config import RunConfig, load_config
from cxr.data.synthetic import DISEASES
from cxr.data.synthetic_findings import generate_multilabel_dataset
from cxr.metrics.multilabel import multilabel_epoch_metrics
from cxr.rundir import read_history_csv, write_history_csv
from cxr.study.multilabel_recipe import MULTILABEL_RECIPE, with_task_defaults
from cxr.training.state import TrainingState

SIZE = 48
pytestmark = pytest.mark.usefixtures("one_thread")


def study_config(folder: Path, **overrides) -> RunConfig:
    cfg = RunConfig(name="ml")
    cfg.data.image_size, cfg.data.num_workers = SIZE, 0
    cfg.model.backbone = "efficientnet_lite0"
    cfg.model.weights = f"file:{folder / 'backbone.pt'}"
    cfg.train.epochs, cfg.train.feature_views = 4, 1
    return load_config(None, {**_flat(cfg), **overrides})


def _flat(cfg: RunConfig) -> dict:
    from cxr.config import to_dict

    return {f"{section}.{key}": value for section, values in to_dict(cfg).items() if isinstance(values, dict)
            for key, value in values.items()} | {"name": cfg.name}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, calibrated_backbone) -> dict:
    """One multi-label run with the defaults (the recipe) and one with the seed's settings, on rare findings."""
    folder = tmp_path_factory.mktemp("recipe")
    calibrated_backbone(folder / "backbone.pt", SIZE, batches=3)
    manifest = generate_multilabel_dataset(folder / "data", n_images=120, size=SIZE, seed=3, prevalence=0.12)
    runs = {}
    for name, overrides in (("recipe", {}), ("seed", {"train.multilabel_recipe": False})):
        runs[name] = study.train(study_config(folder, **overrides), manifest, folder / name,
                                 cache_dir=folder / "cache", progress=False).run_dir
    return {"folder": folder, "manifest": manifest, **runs}


def test_the_recipe_replaces_only_seed_defaults_and_only_for_multilabel():
    cfg = load_config(None, {"train.lr": 0.01})
    ml = with_task_defaults(cfg, "multilabel")
    assert ml.model.head == () and ml.train.class_weights == "balanced"
    assert ml.train.weight_decay == MULTILABEL_RECIPE["train.weight_decay"]
    assert ml.train.lr == 0.01  # set by the user: kept
    assert with_task_defaults(ml, "multilabel") == ml  # idempotent
    assert with_task_defaults(cfg, "multiclass") is cfg  # the seed's single-label defaults untouched
    off = load_config(None, {"train.multilabel_recipe": False})
    assert with_task_defaults(off, "multilabel") is off


def test_history_has_the_val_mean_auroc_and_best_pt_is_its_best_epoch(trained):
    run = trained["recipe"]
    history = read_history_csv(run / "history.csv")
    aurocs = [row["val_mean_auroc"] for row in history]
    assert len(aurocs) == 4 and all(0.0 <= a <= 1.0 for a in aurocs)
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["epoch"] == int(np.argmax(aurocs)) + 1  # the first epoch of the highest val mean AUROC
    saved = load_config(run / "config.yaml")
    assert saved.data.task == "multilabel" and saved.model.head == () and saved.train.class_weights == "balanced"


def test_the_recipe_head_calls_findings_where_the_seed_head_calls_none(trained):
    """Rare findings (12%): the seed's head says 'absent' everywhere (recall 0 in every epoch, as on
    nih-dev); the recipe's class-balanced linear head calls some."""
    def recalls(run: Path) -> tuple[list[float], float]:
        metrics = study.evaluate_checkpoint(run / "checkpoints" / "best.pt", trained["manifest"], "test",
                                            device="cpu", engine="torch", progress=False)
        return [row["val_recall"] for row in read_history_csv(run / "history.csv")], metrics["recall"]

    recipe_val, recipe_test = recalls(trained["recipe"])
    seed_val, seed_test = recalls(trained["seed"])
    assert min(recipe_val) > 0 and recipe_test > 0
    assert max(seed_val) == 0 and seed_test == 0


def test_evaluate_on_a_set_without_a_finding_reports_it_as_null(trained, tmp_path):
    present = DISEASES[:-1]
    other = generate_multilabel_dataset(tmp_path / "other", n_images=24, size=SIZE, seed=11, findings=present,
                                        prevalence=0.4)
    with other.open() as fh:
        assert not any(DISEASES[-1] in row["label"] for row in csv.DictReader(fh))
    metrics = study.evaluate_checkpoint(trained["recipe"] / "checkpoints" / "best.pt", other, "all", device="cpu",
                                        engine="torch", progress=False, out_dir=tmp_path / "eval")
    assert metrics["per_label"][DISEASES[-1]]["auroc"] is None
    assert metrics["per_label"][DISEASES[-1]]["positives"] == 0
    assert all(metrics["per_label"][name]["auroc"] is not None for name in present)
    assert math.isfinite(metrics["mean_auroc"])
    import json

    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())["test"]
    assert written["per_label"][DISEASES[-1]]["auroc"] is None  # null in metrics.json


def test_selection_by_val_mean_auroc_not_val_loss():
    state = TrainingState()
    rows = [{"epoch": 1, "val_loss": 0.30, "val_mean_auroc": 0.70}, {"epoch": 2, "val_loss": 0.20, "val_mean_auroc": 0.55},
            {"epoch": 3, "val_loss": 0.25, "val_mean_auroc": 0.72}]
    assert [state.record(dict(r)) for r in rows] == [True, False, True]
    assert (state.best_epoch, state.best_val_loss, state.bad_epochs) == (3, 0.25, 0)
    single = TrainingState()
    assert [single.record({"epoch": i + 1, "val_loss": v}) for i, v in enumerate((0.3, 0.2, 0.25))] == [True, True, False]
    resumed = TrainingState()
    resumed.load_state_dict({"best_val_loss": 0.25, "best_epoch": 3}, rows)  # an older state without best_score
    assert not resumed.record({"epoch": 4, "val_loss": 0.1, "val_mean_auroc": 0.71})


def test_epoch_metrics_and_history_csv_carry_the_mean_auroc(tmp_path):
    y = np.array([[1, 0], [0, 1], [1, 0], [0, 0]], dtype=float)
    p = np.array([[0.9, 0.2], [0.1, 0.8], [0.6, 0.3], [0.2, 0.1]])
    assert multilabel_epoch_metrics(y, None, p)["mean_auroc"] == 1.0
    row = {"epoch": 1, "val_loss": 0.2, "val_mean_auroc": 0.75}
    write_history_csv([row], tmp_path / "history.csv")
    assert read_history_csv(tmp_path / "history.csv")[0]["val_mean_auroc"] == 0.75
    write_history_csv([{"epoch": 1, "val_loss": 0.2}], tmp_path / "single.csv")  # single-label: no such column
    assert "val_mean_auroc" not in (tmp_path / "single.csv").read_text()


def test_a_multilabel_run_resumes_with_the_settings_it_was_started_with(trained, tmp_path):
    """config.yaml holds the recipe's values; the same command (seed defaults, task auto) still resumes."""
    import shutil

    run = shutil.copytree(trained["recipe"], tmp_path / "run")
    cfg = study_config(trained["folder"], **{"train.epochs": 5})
    assert cfg.data.task == "auto" and cfg.model.head == RunConfig().model.head
    result = study.train(cfg, trained["manifest"], run, resume=True, cache_dir=trained["folder"] / "cache",
                         progress=False)
    assert [int(row["epoch"]) for row in result.history] == [1, 2, 3, 4, 5]
