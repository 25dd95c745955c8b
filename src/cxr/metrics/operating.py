"""Operating points: per-class sensitivity and specificity at a decision rule, and PR curves.

The study's decision is the argmax. A screening reader may prefer one-vs-rest thresholds instead
("call COVID when P(COVID) >= t"), chosen on the validation split (Youden's J = sensitivity +
specificity - 1, the ROC point farthest above chance) and then judged on the test split.
Every list here is aligned with the probability columns (class index c); zip it with the class
names for JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_curve

from cxr.errors import CxrError
from cxr.metrics.checks import check_probs
from cxr.metrics.intervals import wilson_interval

THRESHOLD_METHODS = ("youden",)


def _defined(positive: np.ndarray) -> bool:
    """A one-vs-rest curve needs at least one positive and one negative."""
    return bool(positive.any() and not positive.all())


def operating_points(y_val: Any, p_val: Any, method: str = "youden") -> list[float | None]:
    """One threshold per class, chosen on validation data: the finite ROC threshold with the highest
    Youden's J (the highest such threshold when several tie). None for a class that is absent
    from y_val or is every sample of it."""
    if method not in THRESHOLD_METHODS:
        raise CxrError(f"method must be one of {THRESHOLD_METHODS}, got {method!r}")
    y, p = check_probs(y_val, p_val)
    thresholds: list[float | None] = []
    for c in range(p.shape[1]):
        positive = y == c
        if not _defined(positive):
            thresholds.append(None)
            continue
        fpr, tpr, cut = roc_curve(positive, p[:, c], drop_intermediate=False)
        finite = np.isfinite(cut)  # sklearn's first threshold is +inf: nobody called positive
        best = int(np.argmax((tpr - fpr)[finite]))
        thresholds.append(float(cut[finite][best]))
    return thresholds


def _rates(positive: np.ndarray, called: np.ndarray, alpha: float) -> dict[str, Any]:
    tp = int(np.count_nonzero(called & positive))
    fn = int(np.count_nonzero(~called & positive))
    tn = int(np.count_nonzero(~called & ~positive))
    fp = int(np.count_nonzero(called & ~positive))
    sensitivity = tp / (tp + fn) if tp + fn else None
    specificity = tn / (tn + fp) if tn + fp else None
    return {
        "sensitivity": sensitivity,
        "sensitivity_ci": wilson_interval(tp, tp + fn, alpha),
        "specificity": specificity,
        "specificity_ci": wilson_interval(tn, tn + fp, alpha),
        "youden_j": sensitivity + specificity - 1.0 if sensitivity is not None and specificity is not None else None,
        "tp": tp, "fn": fn, "tn": tn, "fp": fp,
    }


def apply_operating_points(
    y_true: Any, probs: Any, thresholds: Sequence[float | None] | None = None, alpha: float = 0.05
) -> list[dict[str, Any] | None]:
    """Per class: sensitivity, specificity (Wilson intervals), Youden's J and the four counts.

    thresholds None: the argmax decision (class c is called when it has the top probability);
    otherwise class c is called when probs[:, c] >= thresholds[c], one-vs-rest, and a None
    threshold gives None for that class. Each entry records its "threshold" (None for argmax).
    """
    y, p = check_probs(y_true, probs)
    if thresholds is not None and len(thresholds) != p.shape[1]:
        raise CxrError(f"got {len(thresholds)} thresholds for {p.shape[1]} classes")
    pred = p.argmax(axis=1)
    out: list[dict[str, Any] | None] = []
    for c in range(p.shape[1]):
        if thresholds is None:
            out.append({"threshold": None, **_rates(y == c, pred == c, alpha)})
        elif thresholds[c] is None:
            out.append(None)
        else:
            t = float(thresholds[c])
            out.append({"threshold": t, **_rates(y == c, p[:, c] >= t, alpha)})
    return out


def pr_curves(y_true: Any, probs: Any) -> list[dict[str, Any] | None]:
    """One-vs-rest precision-recall curve per class (sklearn): precision, recall and thresholds as
    lists (up to N+1 points) and average_precision; None where the class is absent or every sample."""
    y, p = check_probs(y_true, probs)
    curves: list[dict[str, Any] | None] = []
    for c in range(p.shape[1]):
        positive = y == c
        if not _defined(positive):
            curves.append(None)
            continue
        precision, recall, cut = precision_recall_curve(positive, p[:, c])
        curves.append({
            "precision": precision.tolist(),
            "recall": recall.tolist(),
            "thresholds": cut.tolist(),
            "average_precision": float(average_precision_score(positive, p[:, c])),
            "prevalence": float(np.mean(positive)),
        })
    return curves
