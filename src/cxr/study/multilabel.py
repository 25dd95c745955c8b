"""The multi-label side of a study's evaluation: thresholds chosen on validation, stored with best.pt,
and per-finding metrics of the test split (`cxr.metrics.multilabel`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from cxr.checkpoint import update_extra
from cxr.config import RunConfig
from cxr.metrics.multilabel import choose_thresholds, multilabel_metrics
from cxr.training.epoch import evaluate_epoch
from cxr.training.losses import EvalLoss


def score_multilabel(
    y: np.ndarray, probs: np.ndarray, findings: list[str], cfg: RunConfig, *, loss: float | None = None,
    thresholds: list[float | None] | None = None,
) -> dict[str, Any]:
    """`multilabel_metrics` of targets (N, C) with NaN = unlabelled, with the run's bootstrap settings."""
    return multilabel_metrics(np.nan_to_num(y), ~np.isnan(y), probs, findings, loss=loss, thresholds=thresholds,
                              n_boot=cfg.eval.bootstrap, seed=cfg.train.seed)


def validation_thresholds(module: Any, loader: Any, compute: Any) -> list[float | None]:
    """Per finding, the F1-best threshold of `module`'s probabilities on the validation loader."""
    _, y, p = evaluate_epoch(module, loader, EvalLoss(), compute, desc="thresholds on val")
    return choose_thresholds(np.nan_to_num(y), ~np.isnan(y), p)


def absent_findings(found: list[str], classes: list[str], task: str) -> list[str] | None:
    """The checkpoint's findings (`classes`) that multi-label data (`found`: its findings) have no case of,
    when that is all that differs; None when the data do not fit the checkpoint (another task, a finding
    it does not know). A finding without positives is normal in a small multi-label set: its AUROC and
    AP are n/a (null in metrics.json), the other findings are scored as usual."""
    if task != "multilabel" or not set(found) <= set(classes):
        return None
    return [name for name in classes if name not in set(found)]


def store_thresholds(best_path: Any, thresholds: list[float | None]) -> None:
    """Record the thresholds in best.pt (`extra["thresholds"]`), so predict and serve use them."""
    update_extra(best_path, thresholds=[None if t is None else float(t) for t in thresholds])
