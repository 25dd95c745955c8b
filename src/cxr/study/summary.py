"""What a study leaves for readers: metrics.json (the run summary), predictions.csv and the result figures."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxr import __version__
from cxr.data.multilabel import encode
from cxr.metrics.predictions import COLUMNS as PREDICTION_COLUMNS
from cxr.metrics.predictions import PROB_PREFIX
from cxr.report import result_figures as rf
from cxr.rundir import SplitRow, write_csv
from cxr.runtime import describe
from cxr.study.calibrate import Scored
from cxr.study.phases import TrainingRun


def run_summary(run: TrainingRun, metrics: dict[str, Any], *, processes: int, wall_seconds: float) -> dict[str, Any]:
    """The content of metrics.json: test metrics, the data, the training and how it ran."""
    return {
        "test": metrics,
        "classes": run.prepared.classes,
        "split_counts": run.prepared.counts(),  # split -> class -> images
        "best_epoch": run.result.best_epoch,
        "best_val_loss": run.result.best_val_loss,
        "epochs_run": len(run.result.history),
        "stopped_early": run.result.stopped_early,
        "feature_cache": run.feature_cache,
        "tta": run.cfg.eval.tta,
        "device": describe(run.compute.device, run.compute.precision),
        "precision": run.compute.precision,
        "parameters": run.info["parameters"],
        "phases": run.info["phases"],
        "processes": processes,
        "train_seconds": run.seconds,
        "wall_seconds": wall_seconds,
        "checkpoint": "checkpoints/best.pt",
        "split_report": run.prepared.split_report,
        "data": run.info.get("data", {}),  # root, images, synthetic (no medical meaning when true)
        "cxr_version": __version__,
    }


def write_predictions_csv(
    rows: Sequence[SplitRow], y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str], path: Path,
    thresholds: Sequence[float | None] | None = None,
) -> Path:
    """path,true_label,predicted_label,prob_<class>... one line per evaluated image, in evaluation order.

    Multi-label (`thresholds` given, one per finding; None = 0.5): predicted_label is the findings at or above
    their threshold, joined like the labels (`No Finding` for none).
    """
    if len(rows) != len(y_true):
        raise RuntimeError(f"{len(rows)} rows but {len(y_true)} predictions")  # a bug, not user input
    if thresholds is not None:
        cut = np.array([0.5 if t is None else t for t in thresholds])
        preds = [encode([c for c, hit in zip(classes, p >= cut, strict=True) if hit], [], classes) for p in probs]
    else:
        preds = [classes[int(np.argmax(p))] for p in probs]
    body = ((row.path, row.label, pred, *(f"{float(v):.6f}" for v in p))
            for row, pred, p in zip(rows, preds, probs, strict=True))
    return write_csv(path, (*PREDICTION_COLUMNS, *(f"{PROB_PREFIX}{c}" for c in classes)), body)


def write_result_figures(
    history: list[dict[str, Any]] | None,
    metrics: dict[str, Any],
    scored: Scored,
    classes: Sequence[str],
    fig_dir: Path,
    ece_bins: int,
    best_epoch: int | None = None,
) -> None:
    """Training curves (when a history is given, `best_epoch` marked), the confusion matrix normalised
    by prediction (the seed's) and by true class, ROC and PR curves, reliability (of the calibrated
    probabilities, and before/after calibration), the classification report."""
    fig_dir.mkdir(parents=True, exist_ok=True)
    y, probs = scored.y, scored.calibrated
    if history:
        rf.training_curves(history, fig_dir, best_epoch=best_epoch)
    if np.ndim(y) == 2:  # multi-label: per-finding curves; no confusion matrix or top-label reliability
        rf.roc_curves(y, probs, classes, fig_dir / "roc.png")
        rf.pr_curves_figure(y, probs, classes, fig_dir / "pr_curves.png")
        return
    rf.confusion_matrix_figure(metrics["confusion"], classes, fig_dir / "confusion_matrix.png", normalize="pred")
    rf.confusion_matrix_figure(metrics["confusion"], classes, fig_dir / "confusion_matrix_by_true.png",
                               normalize="true")
    rf.roc_curves(y, probs, classes, fig_dir / "roc.png")
    rf.pr_curves_figure(y, probs, classes, fig_dir / "pr_curves.png")
    rf.reliability_diagram(y, probs, fig_dir / "reliability.png", bins=ece_bins)
    rf.reliability_comparison(y, scored.raw, probs, fig_dir / "reliability_calibrated.png", bins=ece_bins,
                              temperature=scored.temperature)
    rf.classification_report_figure(metrics["classification_report"], fig_dir / "classification_report.png")
