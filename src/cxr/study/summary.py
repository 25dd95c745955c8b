"""What a study leaves for readers: metrics.json (the run summary), predictions.csv and the result figures."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxr import __version__
from cxr.data.multilabel import encode
from cxr.report import result_figures as rf
from cxr.rundir import SplitRow, write_csv
from cxr.runtime import describe
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
        "cxr_version": __version__,
    }


def write_predictions_csv(
    rows: Sequence[SplitRow], y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str], path: Path,
    thresholds: Sequence[float | None] | None = None,
) -> Path:
    """path,label,pred,prob_<class>... one line per evaluated image, in evaluation order.

    Multi-label (`thresholds` given, one per finding; None = 0.5): pred is the findings at or above
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
    return write_csv(path, ("path", "label", "pred", *(f"prob_{c}" for c in classes)), body)


def write_result_figures(
    history: list[dict[str, Any]] | None,
    metrics: dict[str, Any],
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    fig_dir: Path,
    ece_bins: int,
) -> None:
    """Training curves (when a history is given), confusion matrix, ROC, reliability, classification report."""
    fig_dir.mkdir(parents=True, exist_ok=True)
    if history:
        rf.training_curves(history, fig_dir)
    if np.ndim(y_true) == 2:  # multi-label: per-finding curves; no confusion matrix or top-label reliability
        rf.roc_curves(y_true, probs, classes, fig_dir / "roc.png")
        rf.pr_curves_figure(y_true, probs, classes, fig_dir / "pr_curves.png")
        return
    rf.confusion_matrix_figure(metrics["confusion"], classes, fig_dir / "confusion_matrix.png", normalize="pred")
    rf.roc_curves(y_true, probs, classes, fig_dir / "roc.png")
    rf.reliability_diagram(y_true, probs, fig_dir / "reliability.png", bins=ece_bins)
    rf.classification_report_figure(metrics["classification_report"], fig_dir / "classification_report.png")

