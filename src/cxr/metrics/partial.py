"""Metrics of a set that holds only some of the model's classes (external validation), and the
comparison of an external set with the internal test split.

An external set may hold only COVID and Normal of a four-class model. Everything is computed on the
classes present: per-class recall and precision (Wilson intervals), accuracy (Wilson), macro recall
and macro-F1 over the present classes, one-vs-rest ROC-AUC for each present class that has positives
and negatives, "abnormal vs Normal" ROC-AUC (score 1 - p(Normal)) when Normal and another class are
present, the "called Normal" rate (Normal recall, Wilson; `cxr.metrics.abnormal`), and ECE; every aggregate gets a stratified BCa bootstrap interval (`cxr.metrics.intervals`).
What cannot be computed is None, never a number. Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cxr.errors import CxrError
from cxr.metrics.checks import check_count, check_probs
from cxr.metrics.classification import cross_entropy, expected_calibration_error
from cxr.metrics.intervals import stratified_bootstrap, wilson_interval
from cxr.metrics.weighted import WeightedScores

ALPHA = 0.05
NORMAL = "Normal"  # the class whose absence is "abnormal"
SHIFT_METRICS = ("accuracy", "macro_recall", "macro_f1", "roc_auc_macro", "abnormal_auroc", "called_normal", "ece")
LOWER_IS_BETTER = frozenset({"ece"})


class PresentScores:
    """The bootstrap statistic: every aggregate of `present_class_metrics` under row weights (M, N)."""

    def __init__(self, y: np.ndarray, p: np.ndarray, present: list[int], normal: int | None, bins: int) -> None:
        self.scores = WeightedScores(y, p, bins)
        self.present = present
        k = p.shape[1]
        self._truth = np.eye(k)[y][:, present]  # (N, present) one-hot truth
        self._hits = self._truth * (p.argmax(axis=1) == y)[:, None]
        self.abnormal = None
        if normal is not None and 0 < int(np.sum(y == normal)) < len(y):
            pn = p[:, normal]
            self.abnormal = WeightedScores((y != normal).astype(np.int64), np.stack([pn, 1.0 - pn], axis=1), bins)

    def __call__(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        w = np.atleast_2d(weights)
        base = self.scores(w)
        with np.errstate(divide="ignore", invalid="ignore"):
            recall = (w @ self._hits) / (w @ self._truth)  # NaN for a class a jackknife row deleted
            counted = np.isfinite(recall).sum(axis=1)
            macro_recall = np.where(counted > 0, np.where(np.isfinite(recall), recall, 0).sum(axis=1) / counted, np.nan)
        aucs = np.stack([base[f"roc_auc/{c}"] for c in self.present], axis=1)
        defined = np.isfinite(aucs)
        out = {
            "accuracy": base["accuracy"],
            "ece": base["ece"],
            "macro_recall": macro_recall,
            "macro_f1": np.mean(np.stack([base[f"f1/{c}"] for c in self.present], axis=1), axis=1),
            "roc_auc_macro": np.where(defined.any(axis=1),
                                      np.where(defined, aucs, 0).sum(axis=1) / np.maximum(defined.sum(axis=1), 1),
                                      np.nan),
        }
        if self.abnormal is not None:
            out["abnormal_auroc"] = self.abnormal(w)["roc_auc/1"]
        return out


def _per_class(y: np.ndarray, pred: np.ndarray, point: dict[str, np.ndarray], c: int, name: str) -> dict[str, Any]:
    support, predicted = int(np.sum(y == c)), int(np.sum(pred == c))
    tp = int(np.sum((y == c) & (pred == c)))
    auc = float(point[f"roc_auc/{c}"][0])
    return {
        "support": support,
        "predicted": predicted,
        "recall": tp / support if support else None,
        "recall_ci": wilson_interval(tp, support, ALPHA),
        "precision": tp / predicted if predicted else None,
        "precision_ci": wilson_interval(tp, predicted, ALPHA),
        "roc_auc": auc if np.isfinite(auc) else None,
        "name": name,
    }


def present_class_metrics(
    y_true: Any, probs: Any, classes: Sequence[str], *, n_boot: int = 1000, ece_bins: int = 15, seed: int = 0,
) -> dict[str, Any]:
    """The metrics of the module docstring for labels (N,) among `classes` and probabilities (N, C).

    Keys: n, loss, classes_present, accuracy, macro_recall, macro_f1, roc_auc_macro, abnormal_auroc,
    ece, ci {the same aggregates}, per_class {present class: support, predicted, recall, recall_ci,
    precision, precision_ci, roc_auc}, predicted_absent {absent class: images predicted as it}.
    """
    y, p = check_probs(y_true, probs)
    classes = [str(c) for c in classes]
    if len(classes) != p.shape[1]:
        raise CxrError(f"got {len(classes)} class names for probabilities with {p.shape[1]} columns")
    n_boot = check_count(n_boot, "n_boot", minimum=0)
    present = sorted({int(v) for v in y})
    normal = classes.index(NORMAL) if NORMAL in classes and classes.index(NORMAL) in present else None
    statistic = PresentScores(y, p, present, normal, ece_bins)
    point = statistic.scores(np.ones((1, len(y))))
    aggregates = {k: float(v[0]) for k, v in statistic(np.ones((1, len(y)))).items()}
    boot = stratified_bootstrap(y, statistic, n_boot, seed, ALPHA) if n_boot else {}
    pred = p.argmax(axis=1)
    out: dict[str, Any] = {"n": int(len(y)), "loss": cross_entropy(y, p),
                           "classes_present": [classes[c] for c in present]}
    ci: dict[str, Any] = {}
    for key in SHIFT_METRICS:
        value = aggregates.get(key)
        out[key] = value if value is not None and np.isfinite(value) else None
        ci[key] = boot[key].ci if key in boot and out[key] is not None else None
    out["ece"] = expected_calibration_error(y, p, ece_bins)
    ci["accuracy"] = wilson_interval(int(np.sum(pred == y)), len(y), ALPHA)
    out["ci"] = ci
    out["per_class"] = {classes[c]: {k: v for k, v in _per_class(y, pred, point, c, classes[c]).items() if k != "name"}
                        for c in present}
    if len(present) < 2:
        for entry in out["per_class"].values():
            entry["roc_auc"] = None  # one class: no negatives to rank against
    normal_entry = out["per_class"].get(NORMAL)
    out["called_normal"] = normal_entry["recall"] if normal_entry else None  # the share of Normal called Normal
    ci["called_normal"] = normal_entry["recall_ci"] if normal_entry else None
    if len(present) == 1:  # macro recall is one class's recall: a proportion, with its Wilson interval
        ci["macro_recall"] = out["per_class"][classes[present[0]]]["recall_ci"]
    out["predicted_absent"] = {classes[c]: int(np.sum(pred == c)) for c in range(len(classes)) if c not in present}
    out["bootstrap"] = {"n": int(n_boot), "seed": int(seed), "method": "stratified BCa", "alpha": ALPHA}
    return out


def restrict(y_true: Any, probs: Any, keep: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The rows whose true class is in `keep` (the internal test split on an external set's classes)."""
    y = np.asarray(y_true)
    rows = np.isin(y, list(keep))
    return y[rows], np.asarray(probs)[rows]


def worse_than(internal: dict[str, Any], external: dict[str, Any]) -> list[str]:
    """The SHIFT_METRICS whose external interval lies wholly on the worse side of the internal one
    (below it; above it for ECE)."""
    out = []
    for key in SHIFT_METRICS:
        a, b = (internal.get("ci") or {}).get(key), (external.get("ci") or {}).get(key)
        if not a or not b:
            continue
        if (b[0] > a[1]) if key in LOWER_IS_BETTER else (b[1] < a[0]):
            out.append(key)
    return out
