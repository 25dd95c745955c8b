"""cxr.metrics.operating: Youden thresholds, sensitivity/specificity at them, PR curves."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from cxr.errors import CxrError
from cxr.metrics.operating import apply_operating_points, operating_points, pr_curves
from cxr.metrics.summary import classification_metrics


def test_youden_threshold_is_the_best_of_all_cuts(softmax_data) -> None:
    y, probs = softmax_data(300, signal=1.0, seed=1)
    thresholds = operating_points(y, probs)
    for c, t in enumerate(thresholds):
        positive = y == c
        cuts = np.unique(probs[:, c])
        j = [np.mean(probs[positive, c] >= u) - np.mean(probs[~positive, c] >= u) for u in cuts]
        got = np.mean(probs[positive, c] >= t) - np.mean(probs[~positive, c] >= t)
        assert got == pytest.approx(max(j))


def test_separable_validation_gives_perfect_operating_points() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.3, 0.6, 0.1],
                      [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.2, 0.1, 0.7]])
    points = apply_operating_points(y, probs, operating_points(y, probs))
    for row in points:
        assert row["sensitivity"] == 1.0 and row["specificity"] == 1.0 and row["youden_j"] == 1.0
        assert row["sensitivity_ci"][0] < 1.0  # two positives only: a wide Wilson interval


def test_argmax_operating_points_match_classification_metrics(softmax_data) -> None:
    y, probs = softmax_data(200, seed=2)
    m = classification_metrics(y, probs, ["a", "b", "c", "d"], n_boot=0)
    for row, name in zip(apply_operating_points(y, probs), "abcd", strict=True):
        assert row["threshold"] is None
        assert row["sensitivity"] == pytest.approx(m["per_class"][name]["recall"])
        assert row["specificity"] == pytest.approx(m["per_class"][name]["specificity"])
        assert row["sensitivity_ci"] == m["per_class"][name]["recall_ci"]
        assert row["tp"] + row["fn"] == m["per_class"][name]["support"]


def test_absent_class_gets_none(softmax_data) -> None:
    y, probs = softmax_data(100, seed=3)
    y = np.where(y == 3, 0, y)
    thresholds = operating_points(y, probs)
    assert thresholds[3] is None and all(t is not None for t in thresholds[:3])
    assert apply_operating_points(y, probs, thresholds)[3] is None
    curves = pr_curves(y, probs)
    assert curves[3] is None
    for c in range(3):
        assert curves[c]["average_precision"] == pytest.approx(average_precision_score(y == c, probs[:, c]))
        assert curves[c]["recall"][0] == 1.0 and curves[c]["recall"][-1] == 0.0
    with pytest.raises(CxrError, match="3 thresholds"):
        apply_operating_points(y, probs, thresholds[:3])
    with pytest.raises(CxrError, match="method"):
        operating_points(y, probs, method="f1")
