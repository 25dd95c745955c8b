"""`classification_metrics`: every test metric of a study, with intervals, as JSON-ready values.

This dict becomes metrics.json["test"]. Proportions (accuracy; per class sensitivity, precision,
specificity) get Wilson score intervals, which keep a width at small n and at 0% or 100%; every
other metric gets a stratified BCa bootstrap interval (`cxr.metrics.intervals`). `intervals` says
which method gave which interval; a value that cannot be computed is None, never a number.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import classification_report, confusion_matrix, precision_recall_fscore_support

from cxr.errors import CxrError
from cxr.metrics.checks import check_count, check_probs
from cxr.metrics.classification import (
    average_precision_per_class,
    epoch_metrics,
    expected_calibration_error,
    normalise_confusion,
    roc_auc_per_class,
)
from cxr.metrics.intervals import JACKKNIFE_GROUPS, BootstrapInterval, stratified_bootstrap, wilson_interval
from cxr.metrics.weighted import WeightedScores

ALPHA = 0.05  # 95% intervals throughout
BOOTSTRAPPED = ("macro_f1", "roc_auc_macro", "ece", "precision", "recall")  # top-level ci keys, besides accuracy
CLASS_BOOTSTRAPPED = {"f1": "f1_ci", "roc_auc": "roc_auc_ci", "average_precision": "average_precision_ci"}
BINOMIAL_METHOD = "wilson"
BOOTSTRAP_METHOD = "stratified BCa"


def _class_counts(cm: np.ndarray, i: int) -> dict[str, int]:
    """One-vs-rest counts of class i from a [true][pred] confusion matrix."""
    tp = int(cm[i, i])
    support, predicted = int(cm[i].sum()), int(cm[:, i].sum())
    negatives = int(cm.sum()) - support
    return {"tp": tp, "support": support, "predicted": predicted, "negatives": negatives,
            "tn": negatives - (predicted - tp)}


def _class_entry(
    i: int, cm: np.ndarray, sk: tuple[np.ndarray, ...], auc: float | None, ap: float | None,
    boot: dict[str, BootstrapInterval],
) -> tuple[dict[str, Any], dict[str, str | None]]:
    """per_class[name] and the interval method of each of its *_ci keys."""
    n = _class_counts(cm, i)
    prec, rec, f1, _ = sk
    entry: dict[str, Any] = {
        "precision": float(prec[i]),
        "recall": float(rec[i]),
        "f1": float(f1[i]),
        "support": n["support"],
        "roc_auc": auc,
        "specificity": n["tn"] / n["negatives"] if n["negatives"] else None,
        "predicted": n["predicted"],
        "average_precision": ap,
        "recall_ci": wilson_interval(n["tp"], n["support"], ALPHA),
        "precision_ci": wilson_interval(n["tp"], n["predicted"], ALPHA),
        "specificity_ci": wilson_interval(n["tn"], n["negatives"], ALPHA),
    }
    methods = {key: BINOMIAL_METHOD if entry[key] is not None else None
               for key in ("recall_ci", "precision_ci", "specificity_ci")}
    for stat, key in CLASS_BOOTSTRAPPED.items():
        result = boot.get(f"{stat}/{i}")
        entry[key] = result.ci if result is not None else None
        methods[key] = result.method if result is not None else None
    if n["support"] + n["predicted"] == 0:  # never true, never predicted: F1 is 0/0
        entry["f1_ci"] = methods["f1_ci"] = None
    if auc is None:  # a class that is absent (or every sample) has no ranking metric at all
        entry["roc_auc_ci"] = entry["average_precision_ci"] = methods["roc_auc_ci"] = None
        methods["average_precision_ci"] = None
    return entry, methods


def classification_metrics(
    y_true: Any,
    probs: Any,
    classes: Sequence[str],
    loss: float | None = None,
    n_boot: int = 1000,
    ece_bins: int = 15,
    seed: int = 0,
) -> dict[str, Any]:
    """Every test metric of the report, as plain floats/lists/dicts (json.dumps-ready).

    Keys: n, loss, accuracy, precision, recall (Keras), macro_f1, per_class, roc_auc_macro (mean of
    the defined per-class AUCs), ece, ece_bins, confusion (counts, [true][pred]),
    confusion_by_prediction (columns sum to 1), confusion_by_true (rows sum to 1: sensitivity on the
    diagonal), classification_report (sklearn text), ci, intervals, bootstrap.

    per_class[name]: precision, recall, f1, support, roc_auc (None when undefined), specificity,
    predicted (count), average_precision, and 95% intervals recall_ci, precision_ci, specificity_ci
    (Wilson), f1_ci, roc_auc_ci, average_precision_ci (bootstrap).
    ci: accuracy (Wilson, always), macro_f1, roc_auc_macro, ece, precision, recall (bootstrap; None
    when n_boot is 0). Every interval is [low, high] or None; intervals["methods"] names the method
    of each ("wilson", "bca", "percentile" or None), with the same nesting.
    """
    y, p = check_probs(y_true, probs)
    classes = [str(c) for c in classes]
    if len(classes) != p.shape[1]:
        raise CxrError(f"got {len(classes)} class names {classes} for probabilities with {p.shape[1]} columns")
    n_boot = check_count(n_boot, "n_boot", minimum=0)
    ece_bins = check_count(ece_bins, "ece_bins")
    labels = list(range(len(classes)))
    pred = p.argmax(axis=1)

    base = epoch_metrics(y, p, loss)
    sk = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    aucs = roc_auc_per_class(y, p)
    aps = average_precision_per_class(y, p)
    defined = [a for a in aucs if a is not None]
    cm = confusion_matrix(y, pred, labels=labels)
    boot = stratified_bootstrap(y, WeightedScores(y, p, ece_bins), n_boot, seed, ALPHA) if n_boot else {}

    ci: dict[str, list[float] | None] = {"accuracy": wilson_interval(int(np.sum(pred == y)), len(y), ALPHA)}
    methods: dict[str, Any] = {"accuracy": BINOMIAL_METHOD}
    for key in BOOTSTRAPPED:
        result = boot.get(key)
        ci[key] = result.ci if result is not None else None
        methods[key] = result.method if result is not None else None
    per_class, class_methods = {}, {}
    for i, name in enumerate(classes):
        per_class[name], class_methods[name] = _class_entry(i, cm, sk, aucs[i], aps[i], boot)
    methods["per_class"] = class_methods

    return {
        "n": int(len(y)),
        **base,
        "per_class": per_class,
        "roc_auc_macro": float(np.mean(defined)) if defined else None,
        "ece": expected_calibration_error(y, p, ece_bins),
        "ece_bins": int(ece_bins),
        "confusion": cm.astype(int).tolist(),
        "confusion_by_prediction": normalise_confusion(cm, "pred").tolist(),
        "confusion_by_true": normalise_confusion(cm, "true").tolist(),
        "classification_report": classification_report(
            y, pred, labels=labels, target_names=classes, digits=3, zero_division=0
        ),
        "ci": ci,
        "intervals": {
            "level": 1.0 - ALPHA,
            "binomial": "Wilson score interval (scipy.stats.binomtest(...).proportion_ci)",
            "bootstrap": "resampled within each true class; BCa (jackknife acceleration), percentile "
                         "where BCa is undefined (e.g. every resample gives the same value)",
            "methods": methods,
        },
        "bootstrap": {
            "n": int(n_boot), "seed": int(seed), "alpha": ALPHA, "method": BOOTSTRAP_METHOD,
            "stratified": True, "jackknife_groups": min(len(y), JACKKNIFE_GROUPS),
        },
    }
