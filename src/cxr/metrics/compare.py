"""Paired comparison of two runs scored on the same test rows: is A better than B, and by how much?

Accuracy: McNemar's exact test (a binomial test on the discordant pairs: rows only A got right vs
rows only B got right) and Newcombe's square-and-add interval for the difference of two paired
proportions (Newcombe 1998, Stat Med 17:2635, method 10, with its continuity-corrected phi).
Macro-F1 (and macro ROC-AUC when probabilities are given): a paired bootstrap, both runs scored
on the same resampled rows, resampled within each true class, BCa interval of the difference and
a two-sided p-value from the share of resampled differences on either side of 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import binomtest

from cxr.errors import CxrError
from cxr.metrics.checks import check_alpha, check_count, check_labels, check_probs
from cxr.metrics.intervals import BootstrapInterval, stratified_bootstrap, wilson_interval
from cxr.metrics.predictions import load_paired_predictions
from cxr.metrics.weighted import WeightedScores

BOOTSTRAPPED = ("macro_f1", "roc_auc_macro")  # differences from the paired bootstrap


def mcnemar_exact(correct_a: Any, correct_b: Any) -> dict[str, Any]:
    """McNemar's exact test of equal accuracy on paired rows (two-sided binomial, p = 1/2, on the
    discordant pairs); p_value is 1.0 when no row is discordant."""
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise CxrError(f"correct_a and correct_b must be equal-length 1-D arrays, got {a.shape}, {b.shape}")
    a_only, b_only = int(np.count_nonzero(a & ~b)), int(np.count_nonzero(~a & b))
    discordant = a_only + b_only
    return {
        "both_correct": int(np.count_nonzero(a & b)),
        "a_only_correct": a_only,
        "b_only_correct": b_only,
        "both_wrong": int(np.count_nonzero(~a & ~b)),
        "p_value": float(binomtest(a_only, discordant, 0.5).pvalue) if discordant else 1.0,
        "test": "McNemar exact (binomial on discordant pairs)",
    }


def paired_accuracy_interval(
    both_correct: int, a_only: int, b_only: int, both_wrong: int, alpha: float = 0.05
) -> list[float]:
    """Newcombe's square-and-add interval [low, high] of accuracy(A) - accuracy(B) on paired rows,
    from the 2x2 table of correct/wrong; built from the two Wilson intervals, so it keeps a width
    even with no discordant rows."""
    n11, n12, n21, n22 = (int(v) for v in (both_correct, a_only, b_only, both_wrong))
    total = n11 + n12 + n21 + n22
    if total == 0 or min(n11, n12, n21, n22) < 0:
        raise CxrError(f"need non-negative counts with a positive total, got {(n11, n12, n21, n22)}")
    p1, p2 = (n11 + n12) / total, (n11 + n21) / total
    l1, u1 = wilson_interval(n11 + n12, total, alpha)
    l2, u2 = wilson_interval(n11 + n21, total, alpha)
    margins = (n11 + n12) * (n21 + n22) * (n11 + n21) * (n12 + n22)
    cross = n11 * n22 - n12 * n21
    if margins == 0 or 0 <= cross <= total / 2:
        phi = 0.0
    else:  # the correlation of the two proportions, continuity-corrected when positive
        phi = (cross - total / 2 if cross > 0 else cross) / np.sqrt(float(margins))
    diff = p1 - p2
    low = diff - np.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2))
    high = diff + np.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1))
    return [float(max(-1.0, low)), float(min(1.0, high))]


def bootstrap_p_value(differences: np.ndarray) -> float:
    """Two-sided p-value of "no difference" from resampled differences: twice the smaller share
    (add-one smoothed) of values <= 0 and >= 0, capped at 1 (1.0 when every value is 0)."""
    d = np.asarray(differences, dtype=np.float64)
    below = (np.count_nonzero(d <= 0) + 1) / (d.size + 1)
    above = (np.count_nonzero(d >= 0) + 1) / (d.size + 1)
    return float(min(1.0, 2.0 * min(below, above)))


def _one_hot(pred: np.ndarray, num_classes: int) -> np.ndarray:
    return np.eye(num_classes)[pred]


def _difference_entry(value_a: float, value_b: float, result: BootstrapInterval, n_boot: int) -> dict[str, Any]:
    return {
        "a": value_a, "b": value_b, "difference": value_a - value_b,
        "ci": result.ci, "ci_method": result.method,
        "p_value": bootstrap_p_value(result.values) if result.values.size else None,
        "test": f"paired bootstrap, {n_boot} resamples within each true class",
    }


def compare_predictions(
    y_true: Any,
    pred_a: Any,
    pred_b: Any,
    probs_a: Any = None,
    probs_b: Any = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """Paired comparison of runs A and B on the same rows; every difference is A - B. JSON-ready.

    y_true, pred_a, pred_b: (N,) class indices; probs_a/probs_b: optional (N, C) probabilities
    (both or neither) that add the macro ROC-AUC. Returns {n, difference: "a - b", accuracy: {a, b,
    difference, ci (Newcombe), ci_method, a_ci, b_ci (Wilson), mcnemar: {counts, p_value}, p_value},
    macro_f1: {a, b, difference, ci, ci_method ("bca"/"percentile"), p_value, test}, roc_auc_macro
    (same keys, or None without probabilities or when undefined), bootstrap: {n, seed, alpha}}.
    """
    n_boot = check_count(n_boot, "n_boot")
    alpha = check_alpha(alpha)
    if (probs_a is None) != (probs_b is None):
        raise CxrError("give probabilities for both runs or for neither")
    if probs_a is not None:
        y, pa = check_probs(y_true, probs_a)
        _, pb = check_probs(y, probs_b)
        num_classes = pa.shape[1]
    labels = np.asarray(y_true)
    k = num_classes or int(max(np.max(labels), np.max(pred_a), np.max(pred_b))) + 1
    y = check_labels(labels, k)
    a, b = check_labels(pred_a, k, "pred_a"), check_labels(pred_b, k, "pred_b")
    if not len(a) == len(b) == len(y):
        raise CxrError(f"y_true, pred_a and pred_b must have the same length, got {len(y)}, {len(a)}, {len(b)}")

    score_a = WeightedScores(y, _one_hot(a, k), ranking=False)
    score_b = WeightedScores(y, _one_hot(b, k), ranking=False)
    rank_a = WeightedScores(y, pa) if probs_a is not None else None
    rank_b = WeightedScores(y, pb) if probs_b is not None else None

    def difference(weights: np.ndarray) -> dict[str, np.ndarray]:
        out = {"macro_f1": score_a(weights)["macro_f1"] - score_b(weights)["macro_f1"]}
        if rank_a is not None and rank_b is not None:
            out["roc_auc_macro"] = rank_a(weights)["roc_auc_macro"] - rank_b(weights)["roc_auc_macro"]
        return out

    boot = stratified_bootstrap(y, difference, n_boot, seed, alpha)
    ones = np.ones((1, len(y)))
    test = mcnemar_exact(a == y, b == y)
    acc_a, acc_b = float(np.mean(a == y)), float(np.mean(b == y))
    result: dict[str, Any] = {
        "n": int(len(y)),
        "difference": "a - b",
        "accuracy": {
            "a": acc_a, "b": acc_b, "difference": acc_a - acc_b,
            "ci": paired_accuracy_interval(test["both_correct"], test["a_only_correct"], test["b_only_correct"],
                                           test["both_wrong"], alpha),
            "ci_method": "newcombe",
            "a_ci": wilson_interval(int(np.sum(a == y)), len(y), alpha),
            "b_ci": wilson_interval(int(np.sum(b == y)), len(y), alpha),
            "mcnemar": test,
            "p_value": test["p_value"],
        },
        "macro_f1": _difference_entry(float(score_a(ones)["macro_f1"][0]), float(score_b(ones)["macro_f1"][0]),
                                      boot["macro_f1"], n_boot),
        "roc_auc_macro": None,
        "bootstrap": {"n": n_boot, "seed": int(seed), "alpha": alpha, "stratified": True},
    }
    if rank_a is not None and rank_b is not None and boot["roc_auc_macro"].point is not None:
        result["roc_auc_macro"] = _difference_entry(float(rank_a(ones)["roc_auc_macro"][0]),
                                                    float(rank_b(ones)["roc_auc_macro"][0]),
                                                    boot["roc_auc_macro"], n_boot)
    return result


def compare_prediction_files(path_a: Any, path_b: Any, n_boot: int = 1000, seed: int = 0,
                             alpha: float = 0.05) -> dict[str, Any]:
    """`compare_predictions` of two predictions.csv files (or run folders), rows aligned by path;
    adds "a"/"b" (the files read) and "classes"."""
    a, b = load_paired_predictions(path_a, path_b)
    result = compare_predictions(a.labels, a.preds, b.preds, a.probs, b.probs, n_boot=n_boot, seed=seed, alpha=alpha)
    return {"a": str(a.source), "b": str(b.source), "classes": a.classes, **result}
