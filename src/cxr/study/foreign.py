"""External sets holding foreign abnormal classes (a label map's `TB: abnormal`): scoring them and
their metrics.

The model has no class for such an image, so it is scored under a placeholder label (the loaders need
one of the model's classes) and its true name is kept aside. The metrics of the model's own classes
(`cxr.metrics.partial`) use only the images of those classes; "abnormal vs Normal" and "called
Normal" (`cxr.metrics.abnormal`) use every image, so a foreign abnormal image counts against Normal.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from cxr.config import RunConfig
from cxr.metrics.abnormal import NORMAL, abnormal_summary
from cxr.metrics.partial import present_class_metrics
from cxr.rundir import SplitRow


def placeholder_rows(rows: Sequence[SplitRow], classes: Sequence[str]) -> tuple[list[SplitRow], dict[str, str]]:
    """`rows` with every label that is not a model class replaced by the first class, and the true
    label of each such row by path."""
    truth = {r.path: r.label for r in rows if r.label not in classes}
    return [dataclasses.replace(r, label=classes[0]) if r.path in truth else r for r in rows], truth


def _empty_metrics(pred: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """The partial-class metrics of a set holding none of the model's classes."""
    return {"n": 0, "classes_present": [], "ci": {}, "per_class": {},
            "predicted_absent": {c: int(np.sum(pred == i)) for i, c in enumerate(classes)}}


def foreign_set_metrics(
    rows: Sequence[SplitRow], probs: np.ndarray, truth: dict[str, str], classes: Sequence[str],
    foreign: Sequence[str], cfg: RunConfig,
) -> dict[str, Any]:
    """The metrics entry of an external set: the model classes' metrics on their images, then, where the
    set holds a Normal or a foreign class, abnormal vs Normal and "called Normal" over every image
    (keys abnormal_auroc, called_normal and their ci entries replaced; `foreign` added)."""
    labels = [truth.get(r.path, r.label) for r in rows]
    own = np.array([lab in classes for lab in labels], dtype=bool)
    y = np.array([list(classes).index(lab) for lab, keep in zip(labels, own, strict=True) if keep], dtype=np.int64)
    metrics = (present_class_metrics(y, probs[own], classes, n_boot=cfg.eval.bootstrap, ece_bins=cfg.eval.ece_bins,
                                     seed=cfg.train.seed)
               if own.any() else _empty_metrics(probs.argmax(axis=1), classes))
    if not foreign or NORMAL not in classes:
        return metrics
    summary = abnormal_summary(labels, probs, classes, foreign, n_boot=cfg.eval.bootstrap, seed=cfg.train.seed)
    metrics["n_model_classes"] = int(own.sum())
    metrics["n"] = len(labels)
    metrics["foreign_present"] = list(summary["foreign"])
    metrics["abnormal_auroc"] = summary["abnormal_auroc"]
    metrics["ci"]["abnormal_auroc"] = summary["abnormal_auroc_ci"]
    metrics["called_normal"] = summary["called_normal"]["rate"]
    metrics["ci"]["called_normal"] = summary["called_normal"]["ci"]
    metrics["foreign"] = summary["foreign"]
    return metrics
