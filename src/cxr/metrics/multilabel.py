"""Metrics of a multi-label classifier: per-finding AUROC and average precision with intervals, their
means, thresholds chosen on validation, and the per-epoch row of history.csv.

Inputs are multi-hot targets `y` (N, C), a `labelled` mask (N, C) (False where a finding is uncertain
and left out, CheXpert's -1 under the `ignore` policy) and sigmoid probabilities (N, C). Every
finding is its own binary problem over its labelled rows. Intervals: a bootstrap over images (one
stratum: images carry several findings), BCa where defined (`cxr.metrics.intervals`). Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve

from cxr.errors import CxrError
from cxr.metrics.intervals import stratified_bootstrap, wilson_interval
from cxr.metrics.weighted import RankScores, nan_mean

EPSILON = 1e-7
THRESHOLD_METHODS = ("f1", "youden")


def check_multilabel(y: Any, labelled: Any, probs: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y float, labelled bool, probs float) as arrays of one (N, C) shape; a CxrError names a misfit."""
    p = np.asarray(probs, dtype=np.float64)
    t = np.asarray(y, dtype=np.float64)
    m = np.ones_like(t, dtype=bool) if labelled is None else np.asarray(labelled, dtype=bool)
    if p.ndim != 2 or p.size == 0 or t.shape != p.shape or m.shape != p.shape:
        raise CxrError(f"multi-label targets, mask and probabilities must share one (N, C) shape; got "
                       f"{t.shape}, {m.shape}, {p.shape}")
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        raise CxrError("multi-label probabilities must be finite and in [0, 1]")
    if not np.isin(t[m], (0.0, 1.0)).all():
        raise CxrError("multi-label targets must be 0 or 1 where labelled")
    return t, m, p


def binary_cross_entropy(y: Any, labelled: Any, probs: Any) -> float:
    """Mean binary cross-entropy over the labelled entries."""
    t, m, p = check_multilabel(y, labelled, probs)
    p = np.clip(p, EPSILON, 1 - EPSILON)
    loss = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    return float(loss[m].mean()) if m.any() else float("nan")


def mean_auroc(y: Any, labelled: Any, probs: Any) -> float:
    """Mean AUROC over the findings with both a positive and a negative labelled (NaN when none has).

    The selection metric of a multi-label study (`cxr.training.state`): threshold-free, so a head that
    ranks images well is kept even while every probability is under 0.5."""
    t, m, p = check_multilabel(y, labelled, probs)
    aucs = []
    for c in range(t.shape[1]):
        positive = t[m[:, c], c] > 0.5
        if positive.any() and not positive.all():
            aucs.append(roc_auc_score(positive, p[m[:, c], c]))
    return float(np.mean(aucs)) if aucs else float("nan")


def multilabel_epoch_metrics(y: Any, labelled: Any, probs: Any, loss: float | None = None) -> dict[str, float]:
    """The history.csv row: loss, and at 0.5 (Keras binary semantics, pooled over labelled entries)
    element accuracy, precision, recall, and macro-F1 over the findings with a positive or a call;
    and `mean_auroc` (`mean_auroc`)."""
    t, m, p = check_multilabel(y, labelled, probs)
    called = p > 0.5
    pos = t > 0.5
    tp = np.sum(called & pos & m, axis=0).astype(np.float64)
    fp = np.sum(called & ~pos & m, axis=0).astype(np.float64)
    fn = np.sum(~called & pos & m, axis=0).astype(np.float64)
    denom = 2 * tp + fp + fn
    present = denom > 0
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=present)
    return {
        "loss": float(loss) if loss is not None else binary_cross_entropy(t, m, p),
        "accuracy": float(np.mean((called == pos)[m])) if m.any() else float("nan"),
        "precision": float(tp.sum() / (tp.sum() + fp.sum())) if tp.sum() + fp.sum() else 0.0,
        "recall": float(tp.sum() / (tp.sum() + fn.sum())) if tp.sum() + fn.sum() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "mean_auroc": mean_auroc(t, m, p),
    }


def choose_thresholds(y_val: Any, labelled: Any, p_val: Any, method: str = "f1") -> list[float | None]:
    """Per finding, the threshold that maximises F1 (or Youden's J) on validation; None without both classes."""
    if method not in THRESHOLD_METHODS:
        raise CxrError(f"unknown threshold method {method!r}; allowed: {', '.join(THRESHOLD_METHODS)}")
    t, m, p = check_multilabel(y_val, labelled, p_val)
    out: list[float | None] = []
    for c in range(t.shape[1]):
        positive, score = t[m[:, c], c] > 0.5, p[m[:, c], c]
        if positive.all() or not positive.any():
            out.append(None)
        elif method == "youden":
            fpr, tpr, thresholds = roc_curve(positive, score)
            out.append(float(min(1.0, thresholds[int(np.argmax(tpr - fpr))])))
        else:
            precision, recall, thresholds = precision_recall_curve(positive, score)
            f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
            out.append(float(thresholds[int(np.argmax(f1))]))
    return out


def _at_threshold(positive: np.ndarray, score: np.ndarray, threshold: float, alpha: float) -> dict[str, Any]:
    called = score >= threshold
    tp, fn = int(np.sum(called & positive)), int(np.sum(~called & positive))
    tn, fp = int(np.sum(~called & ~positive)), int(np.sum(called & ~positive))
    return {
        "threshold": float(threshold),
        "sensitivity": tp / (tp + fn) if tp + fn else None, "sensitivity_ci": wilson_interval(tp, tp + fn, alpha),
        "specificity": tn / (tn + fp) if tn + fp else None, "specificity_ci": wilson_interval(tn, tn + fp, alpha),
        "precision": tp / (tp + fp) if tp + fp else None,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None,
        "tp": tp, "fn": fn, "tn": tn, "fp": fp,
    }


def _statistic(t: np.ndarray, m: np.ndarray, p: np.ndarray):  # noqa: ANN202 - a WeightedStatistic
    ranks = RankScores([(t[:, c] > 0.5, p[:, c], m[:, c]) for c in range(t.shape[1])])

    def statistic(w: np.ndarray) -> dict[str, np.ndarray]:
        per = ranks(w)
        out = {f"auroc/{c}": auc for c, (auc, _) in enumerate(per)}
        out |= {f"ap/{c}": ap for c, (_, ap) in enumerate(per)}
        out["mean_auroc"] = nan_mean([auc for auc, _ in per], w.shape[0])
        out["mean_ap"] = nan_mean([ap for _, ap in per], w.shape[0])
        return out

    return statistic


def multilabel_metrics(
    y: Any,
    labelled: Any,
    probs: Any,
    findings: Sequence[str],
    *,
    loss: float | None = None,
    thresholds: Sequence[float | None] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Every test metric of a multi-label study (JSON-ready); None wherever a value is undefined.

    Keys: task, n, findings, loss and the epoch row's accuracy/precision/recall/macro_f1,
    mean_auroc (+ _ci), mean_ap (+ _ci), thresholds (one per finding), per_label[finding]: positives, labelled, prevalence,
    auroc (+ _ci), average_precision (+ _ci) and, at `thresholds` (chosen on validation; 0.5 where
    None), threshold, sensitivity/specificity (+ Wilson CIs), precision, f1.
    """
    t, m, p = check_multilabel(y, labelled, probs)
    findings = [str(f) for f in findings]
    if len(findings) != p.shape[1]:
        raise CxrError(f"got {len(findings)} finding names for probabilities with {p.shape[1]} columns")
    chosen = list(thresholds) if thresholds is not None else [None] * len(findings)
    boot = stratified_bootstrap(np.zeros(len(t), dtype=np.int64), _statistic(t, m, p), n_boot, seed, alpha)
    per_label = {}
    for c, name in enumerate(findings):
        rows = m[:, c]
        positive, score = t[rows, c] > 0.5, p[rows, c]
        auc, ap = boot[f"auroc/{c}"], boot[f"ap/{c}"]
        per_label[name] = {
            "positives": int(positive.sum()), "labelled": int(rows.sum()),
            "prevalence": float(positive.mean()) if rows.any() else None,
            "auroc": auc.point, "auroc_ci": auc.ci, "average_precision": ap.point, "average_precision_ci": ap.ci,
            **_at_threshold(positive, score, 0.5 if chosen[c] is None else chosen[c], alpha),
        }
    epoch = multilabel_epoch_metrics(t, m, p, loss)
    return {
        "task": "multilabel", "n": int(len(t)), "findings": findings, **epoch,
        "mean_auroc": boot["mean_auroc"].point, "mean_auroc_ci": boot["mean_auroc"].ci,
        "mean_ap": boot["mean_ap"].point, "mean_ap_ci": boot["mean_ap"].ci,
        "per_label": per_label,
        "thresholds": [per_label[name]["threshold"] for name in findings],
        "bootstrap": {"n": int(n_boot), "seed": int(seed), "alpha": alpha, "method": "BCa over images"},
    }
