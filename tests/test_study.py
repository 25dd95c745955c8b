"""End-to-end studies on tiny synthetic data: the run directory, resume, evaluation, logging."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
import torch
import yaml

from cxr import study
from cxr.checkpoint import load_checkpoint, save_checkpoint
from cxr.config import RunConfig, from_dict, load_config, to_dict
from cxr.data.synthetic import generate_dataset
from cxr.errors import CxrError
from cxr.rundir import HISTORY_COLUMNS, PHASE_COLUMN, read_split_csv
from cxr.study import inputs, logfile, phases

RUN_FILES = (
    "config.yaml", "split.csv", "checkpoints/last.pt", "checkpoints/best.pt", "history.csv", "metrics.json",
    "predictions.csv", "report.md", "report.html", "log.txt",
    *(f"figures/{name}.png" for name in (
        "bar_chart", "pie_chart", "dataset_images", "loss", "accuracy", "precision", "recall",
        "confusion_matrix", "roc",
    )),
)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("synthetic") / "data", n_per_class=8, size=48, seed=0)


def tiny_config(epochs: int = 2, feature_cache: bool = True) -> RunConfig:
    cfg = RunConfig(name="tiny")
    cfg.train.feature_cache = feature_cache
    cfg.data.image_size = 32
    cfg.data.num_workers = 0
    cfg.model.backbone = "efficientnet_lite0"
    cfg.model.weights = "random"  # the seed's default (ImageNet) needs a download
    cfg.model.head = (16,)
    cfg.train.epochs = epochs
    cfg.train.batch_size = 8
    cfg.train.lr = 1e-3
    cfg.eval.bootstrap = 20
    cfg.eval.aug_samples = 3
    cfg.eval.grid_per_class = 2
    return cfg


@pytest.fixture(scope="module")
def tiny_run(tiny_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "tiny"
    torch.set_num_threads(1)
    return study.run_study(tiny_config(feature_cache=False), tiny_data, out, progress=False)


def _without_seconds(rows):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def _history(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "history.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_run_study_writes_every_file_of_the_run_directory(tiny_run, tiny_data):
    missing = [name for name in RUN_FILES if not (tiny_run / name).is_file()]
    assert not missing
    assert list((tiny_run / "aug_images").glob("aug_*.png"))
    history = _history(tiny_run)
    assert [int(r["epoch"]) for r in history] == [1, 2]
    assert tuple(history[0]) == (*HISTORY_COLUMNS, PHASE_COLUMN)

    metrics = json.loads((tiny_run / "metrics.json").read_text())
    split = read_split_csv(tiny_run / "split.csv")
    test_rows = [r for r in split if r.split == "test"]
    assert metrics["classes"] == ["COVID", "Lung_Opacity", "Normal", "Viral_Pneumonia"]
    assert metrics["test"]["n"] == len(test_rows)
    assert metrics["split_counts"]["test"] == {c: sum(r.label == c for r in test_rows) for c in metrics["classes"]}
    assert metrics["best_epoch"] in (1, 2) and metrics["wall_seconds"] > 0 and metrics["feature_cache"] is False

    with open(tiny_run / "predictions.csv", newline="") as fh:
        preds = list(csv.DictReader(fh))
    assert [p["path"] for p in preds] == [r.path for r in test_rows]
    assert list(preds[0]) == ["path", "true_label", "predicted_label", *(f"prob_{c}" for c in metrics["classes"])]
    accuracy = sum(p["true_label"] == p["predicted_label"] for p in preds) / len(preds)
    assert accuracy == pytest.approx(metrics["test"]["accuracy"])

    saved = load_config(tiny_run / "config.yaml")
    assert saved.data.root == str(tiny_data.resolve())
    assert to_dict(saved.train) == to_dict(tiny_config(feature_cache=False).train)
    log_text = (tiny_run / "log.txt").read_text()
    assert "epoch 2/2" in log_text and "report:" in log_text
    best = load_checkpoint(tiny_run / "checkpoints" / "best.pt")
    assert best["epoch"] == metrics["best_epoch"] and best["preprocessing"]["size"] == 32
    assert "Test results" in (tiny_run / "report.md").read_text() or "test" in (tiny_run / "report.md").read_text()


@pytest.mark.slow
def test_evaluate_checkpoint_reproduces_the_run_test_metrics(tiny_run, tiny_data, tmp_path):
    metrics = study.evaluate_checkpoint(tiny_run / "checkpoints" / "best.pt", tiny_data, "test",
                                           out_dir=tmp_path / "eval", progress=False)
    expected = json.loads((tiny_run / "metrics.json").read_text())["test"]
    assert metrics["n"] == expected["n"]
    assert metrics["accuracy"] == pytest.approx(expected["accuracy"])
    assert metrics["loss"] == pytest.approx(expected["loss"], abs=1e-5)
    for name in ("metrics.json", "predictions.csv", "figures/confusion_matrix.png", "figures/roc.png"):
        assert (tmp_path / "eval" / name).is_file()
    everything = study.evaluate_checkpoint(tiny_run / "checkpoints" / "best.pt", tiny_data, "all", progress=False)
    assert everything["n"] == 32


@pytest.mark.slow
def test_prediction_sets_are_calibrated_on_val_stored_in_best_pt_and_reported(tiny_run):
    from cxr.prediction_sets import conformal_of

    calibration = conformal_of(load_checkpoint(tiny_run / "checkpoints" / "best.pt"))
    val = [r for r in read_split_csv(tiny_run / "split.csv") if r.split == "val"]
    assert calibration.n == len(val) and calibration.record["fitted_on"] == "val" and calibration.coverage == 0.9
    test = json.loads((tiny_run / "metrics.json").read_text())["test"]
    entry = test["conformal"]
    assert entry["n"] == test["n"] and entry["method"] == "lac" and entry["calibration_images"] == len(val)
    assert sum(entry["size_counts"].values()) == test["n"] and len(entry["variants"]) == 6
    assert "## Prediction sets (conformal)" in (tiny_run / "report.md").read_text()
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_conformal", Path(__file__).parents[1] / "bench" / "conformal.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    recomputed = bench.main([str(Path(tiny_run)), "--coverage", "0.9"])["results"]["0.9"]["lac"]
    assert recomputed["coverage"] == pytest.approx(entry["coverage"]) and recomputed["mean_size"] == pytest.approx(
        entry["mean_size"])  # from the stored scores and predictions.csv alone


@pytest.mark.slow
def test_evaluating_a_run_on_a_csv_manifest_scores_its_split_not_every_image(tiny_data, tmp_path):
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label"])
        for path in sorted(tiny_data.glob("*/*.png")):
            writer.writerow([str(path), path.parent.name])
    run = study.run_study(tiny_config(epochs=1), manifest, tmp_path / "run", progress=False)
    best = run / "checkpoints" / "best.pt"
    expected = json.loads((run / "metrics.json").read_text())["test"]
    for tta in (False, True):
        metrics = study.evaluate_checkpoint(best, manifest, "test", tta=tta, progress=False)
        assert metrics["n"] == expected["n"] < 32
    val = [r for r in read_split_csv(run / "split.csv") if r.split == "val"]
    assert study.evaluate_checkpoint(best, manifest, "val", progress=False)["n"] == len(val)
    other = generate_dataset(tmp_path / "other", n_per_class=2, size=32, seed=1)
    with pytest.raises(CxrError, match="cannot select the 'val' rows"):
        study.evaluate_checkpoint(best, other, "val", progress=False)
    assert study.evaluate_checkpoint(best, other, "test", progress=False)["n"] == 8  # new data: every image


@pytest.mark.slow
def test_resume_after_epoch_one_equals_an_uninterrupted_run(tiny_run, tiny_data, tmp_path):
    out = tmp_path / "resumed"
    study.train(tiny_config(epochs=1, feature_cache=False), tiny_data, out, progress=False)
    assert len(_history(out)) == 1
    torch.rand(7)  # a new process would start from another global RNG state
    study.run_study(tiny_config(epochs=2, feature_cache=False), tiny_data, out, resume=True, progress=False)
    assert _without_seconds(_history(out)) == _without_seconds(_history(tiny_run))
    a = json.loads((tiny_run / "metrics.json").read_text())
    b = json.loads((out / "metrics.json").read_text())
    for key in ("loss", "accuracy", "precision", "recall", "macro_f1", "roc_auc_macro", "ece"):
        assert b["test"][key] == pytest.approx(a["test"][key], abs=1e-6)
    assert b["test"]["confusion"] == a["test"]["confusion"]
    assert b["test"]["ci"] == a["test"]["ci"]
    assert (out / "split.csv").read_bytes() == (tiny_run / "split.csv").read_bytes()
    assert "resuming from" in (out / "log.txt").read_text()


def test_resume_without_a_run_and_rerun_into_a_finished_run_are_user_errors(tiny_data, tmp_path):
    with pytest.raises(CxrError, match="cannot resume"):
        study.run_study(tiny_config(), tiny_data, tmp_path / "new", resume=True)
    (tmp_path / "old" / "checkpoints").mkdir(parents=True)
    (tmp_path / "old" / "checkpoints" / "last.pt").write_bytes(b"")
    with pytest.raises(CxrError, match="already holds a run"):
        study.run_study(tiny_config(), tiny_data, tmp_path / "old")
    with pytest.raises(CxrError, match="data not found"):
        study.run_study(tiny_config(), tmp_path / "nowhere", tmp_path / "x")


def test_evaluate_with_mismatched_classes_names_both_lists(tmp_path):
    from cxr.models.build import build_model

    data = generate_dataset(tmp_path / "three", n_per_class=2, size=32, seed=0,
                            classes=("COVID", "Normal", "Viral_Pneumonia"))
    cfg = tiny_config()
    classes = ["COVID", "Lung_Opacity", "Normal", "Viral_Pneumonia"]
    model = build_model(cfg.model, len(classes), load_weights=False)
    ckpt = save_checkpoint(tmp_path / "four.pt", model=model, config=cfg, classes=classes,
                           preprocessing=model.preprocessing, epoch=0)
    with pytest.raises(CxrError) as info:
        study.evaluate_checkpoint(ckpt, data, progress=False)
    message = str(info.value)
    assert "['COVID', 'Lung_Opacity', 'Normal', 'Viral_Pneumonia']" in message
    assert "['COVID', 'Normal', 'Viral_Pneumonia']" in message


@pytest.mark.slow
def test_feature_cache_is_used_with_a_frozen_base_when_installed(tiny_data, tmp_path, caplog):
    cfg = tiny_config()
    cfg.train.feature_views = 2
    caplog.set_level(logging.INFO, logger="cxr")
    run = study.run_study(cfg, tiny_data, tmp_path / "cached", cache_dir=tmp_path / "cache", progress=False)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["feature_cache"] is True
    assert "using the feature cache" in (run / "log.txt").read_text()
    ckpt = load_checkpoint(run / "checkpoints" / "best.pt")
    assert any(k.startswith("backbone.") for k in ckpt["model"])  # the full classifier, not the head
    for name in RUN_FILES:
        assert (run / name).is_file(), name


def test_wants_feature_cache_follows_the_config():
    cfg = tiny_config()
    assert inputs.wants_feature_cache(cfg) is True
    cfg.train.feature_cache = False
    assert inputs.wants_feature_cache(cfg) is False
    cfg.train.feature_cache = True
    cfg.model.freeze = "none"
    assert inputs.wants_feature_cache(cfg) is False


def test_run_log_writes_info_to_the_file_even_when_the_console_is_quiet(tmp_path):
    logger = logging.getLogger("cxr")
    console = logging.StreamHandler()
    old_handlers, old_level = logger.handlers[:], logger.level
    logger.handlers[:] = [console]
    logger.setLevel(logging.WARNING)
    try:
        with logfile.run_log(tmp_path):
            logging.getLogger("cxr.study").info("hello run log")
            assert console.level == logging.WARNING  # the console stays quiet
        logging.getLogger("cxr.study").warning("after the run")
        assert logger.level == logging.WARNING and console.level == logging.NOTSET
        assert len(logger.handlers) == 1
    finally:
        logger.handlers[:], logger.level = old_handlers, old_level
    text = (tmp_path / "log.txt").read_text()
    assert "hello run log" in text and "after the run" not in text


def test_seed_yaml_is_the_dataclass_defaults():
    path = Path(__file__).resolve().parents[1] / "configs" / "seed.yaml"
    assert load_config(path) == RunConfig()
    raw = yaml.safe_load(path.read_text())
    assert raw == to_dict(RunConfig())  # every key spelled out, nothing extra
    assert from_dict(raw) == RunConfig()


def test_demo_config_is_small_and_valid():
    cfg = study.demo_config()
    assert cfg.model.backbone == "efficientnet_lite0" and cfg.model.freeze == "base"
    assert cfg.data.image_size <= 160 and cfg.train.epochs <= 20
    assert from_dict(to_dict(cfg)) == cfg


@pytest.mark.slow
def test_fine_tuning_phase_resumes_across_the_phase_boundary(tiny_data, tmp_path, monkeypatch):
    """Phase 1 (head) then phase 2 (last stage unfrozen); a kill right after phase 1 resumes exactly."""
    cfg = tiny_config(epochs=1, feature_cache=False)
    cfg.train.finetune_epochs = 1
    cfg.train.finetune_freeze = "stages:1"
    full = study.train(cfg, tiny_data, tmp_path / "full", progress=False)
    rows = _history(full)
    assert [(r["epoch"], r["phase"]) for r in rows] == [("1", "1"), ("2", "2")]

    class Killed(Exception):
        pass

    real_fit = phases.fit

    def kill_after_phase_one(*args, **kwargs):
        def stop(row):
            if row["phase"] == 1:
                raise Killed
        return real_fit(*args, on_epoch_end=stop, **kwargs)

    monkeypatch.setattr(phases, "fit", kill_after_phase_one)
    with pytest.raises(Killed):
        study.train(cfg, tiny_data, tmp_path / "killed", progress=False)
    monkeypatch.setattr(phases, "fit", real_fit)
    study.train(cfg, tiny_data, tmp_path / "killed", resume=True, progress=False)
    assert _without_seconds(_history(tmp_path / "killed")) == _without_seconds(rows)
    a = load_checkpoint(full / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")["model"]
    for key, value in a.items():
        torch.testing.assert_close(b[key], value, rtol=0, atol=1e-6)
