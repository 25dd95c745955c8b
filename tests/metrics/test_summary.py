"""classification_metrics: the new intervals, per-class entries and the record of methods."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix

from cxr.metrics.intervals import wilson_interval
from cxr.metrics.summary import classification_metrics

CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral_Pneumonia"]


def inside(ci: list[float], value: float) -> bool:
    return ci[0] <= value <= ci[1]


def test_every_prediction_right_at_n48_has_honest_intervals() -> None:
    # The trust issue: the percentile bootstrap said "95% CI 1.000-1.000" here.
    y = np.repeat(np.arange(4), 12)
    probs = np.full((48, 4), 0.02)
    probs[np.arange(48), y] = 0.94
    m = classification_metrics(y, probs, CLASSES, n_boot=200)
    assert m["accuracy"] == 1.0
    assert m["ci"]["accuracy"] == pytest.approx([0.926, 1.0], abs=1e-3)
    assert m["intervals"]["methods"]["accuracy"] == "wilson"
    for name in CLASSES:
        row = m["per_class"][name]
        assert row["recall_ci"] == pytest.approx(wilson_interval(12, 12))  # [0.757, 1.0]
        assert row["specificity"] == 1.0 and row["specificity_ci"] == pytest.approx(wilson_interval(36, 36))
        assert row["recall_ci"][1] - row["recall_ci"][0] > 0.2
    # Every resample is perfect too: the bootstrap can only say [1, 1], and records that it fell back.
    assert m["ci"]["macro_f1"] == [1.0, 1.0]
    assert m["intervals"]["methods"]["macro_f1"] == "percentile"


def test_intervals_contain_estimates_and_have_width(softmax_data) -> None:
    y, probs = softmax_data(150, signal=1.5, seed=11)
    m = classification_metrics(y, probs, CLASSES, n_boot=300, seed=1)
    for key in ("accuracy", "macro_f1", "roc_auc_macro", "ece", "precision", "recall"):
        lo, hi = m["ci"][key]
        assert lo < m[key] < hi and hi - lo > 0.005, key
    for name in CLASSES:
        row = m["per_class"][name]
        for key in ("recall", "precision", "specificity", "f1", "roc_auc", "average_precision"):
            assert inside(row[f"{key}_ci"], row[key]), (name, key)
            assert row[f"{key}_ci"][1] > row[f"{key}_ci"][0], (name, key)
        assert m["intervals"]["methods"]["per_class"][name]["recall_ci"] == "wilson"
        assert m["intervals"]["methods"]["per_class"][name]["roc_auc_ci"] in ("bca", "percentile")
    assert m["bootstrap"]["method"] == "stratified BCa" and m["bootstrap"]["n"] == 300
    json.dumps(m, allow_nan=False)


def test_per_class_counts_and_confusion_by_true(softmax_data) -> None:
    y, probs = softmax_data(200, seed=12)
    pred = probs.argmax(axis=1)
    m = classification_metrics(y, probs, CLASSES, n_boot=0)
    np.testing.assert_allclose(m["confusion_by_true"], confusion_matrix(y, pred, normalize="true"))
    for c, name in enumerate(CLASSES):
        negatives = y != c
        row = m["per_class"][name]
        assert row["specificity"] == pytest.approx(np.mean(pred[negatives] != c))
        assert row["predicted"] == int(np.sum(pred == c))
        assert row["precision_ci"] == wilson_interval(int(np.sum((pred == c) & (y == c))), row["predicted"])
        assert row["f1_ci"] is None and row["roc_auc_ci"] is None  # no bootstrap with n_boot=0
        assert m["confusion_by_true"][c][c] == pytest.approx(row["recall"])


def test_absent_and_never_predicted_class_is_none_not_a_number(softmax_data) -> None:
    y, probs = softmax_data(120, seed=4)
    y = np.where(y == 3, 0, y)
    probs[:, 3] = 0.0  # never predicted either
    m = classification_metrics(y, probs, CLASSES, n_boot=50)
    row = m["per_class"]["Viral_Pneumonia"]
    for key in ("roc_auc", "roc_auc_ci", "average_precision", "average_precision_ci", "recall_ci",
                "precision_ci", "f1_ci"):
        assert row[key] is None, key
    assert row["specificity"] == 1.0 and row["specificity_ci"] is not None
    assert m["intervals"]["methods"]["per_class"]["Viral_Pneumonia"]["roc_auc_ci"] is None
    json.dumps(m, allow_nan=False)


def test_same_seed_same_intervals(softmax_data) -> None:
    y, probs = softmax_data(90, seed=5)
    a = classification_metrics(y, probs, CLASSES, n_boot=100, seed=3)
    assert a == classification_metrics(y, probs, CLASSES, n_boot=100, seed=3)
    assert a["ci"] != classification_metrics(y, probs, CLASSES, n_boot=100, seed=4)["ci"]
