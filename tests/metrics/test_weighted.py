"""cxr.metrics.weighted: weighted metrics equal sklearn on the data and on explicitly repeated rows."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from cxr.metrics.classification import expected_calibration_error, keras_precision_recall, macro_f1
from cxr.metrics.weighted import WeightedScores


def reference(y: np.ndarray, probs: np.ndarray, bins: int) -> dict[str, float]:
    """The same metrics from sklearn / the point-metric functions."""
    pred = probs.argmax(axis=1)
    precision, recall = keras_precision_recall(y, probs)
    out = {"accuracy": float(np.mean(pred == y)), "macro_f1": macro_f1(y, pred), "precision": precision,
           "recall": recall, "ece": expected_calibration_error(y, probs, bins)}
    aucs = []
    for c in range(probs.shape[1]):
        if 0 < np.sum(y == c) < len(y):
            out[f"roc_auc/{c}"] = roc_auc_score(y == c, probs[:, c])
            out[f"average_precision/{c}"] = average_precision_score(y == c, probs[:, c])
            aucs.append(out[f"roc_auc/{c}"])
    out["roc_auc_macro"] = float(np.mean(aucs))
    return out


@pytest.mark.parametrize("decimals", [None, 2])  # continuous scores, and many tied scores
def test_all_ones_weights_give_the_point_metrics(softmax_data, decimals: int | None) -> None:
    y, probs = softmax_data(300, seed=1)
    if decimals is not None:
        probs = np.round(probs, decimals)
    got = {k: float(v[0]) for k, v in WeightedScores(y, probs, bins=10)(np.ones((1, 300))).items()}
    for key, value in reference(y, probs, 10).items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


def test_weights_equal_repeating_rows(softmax_data) -> None:
    y, probs = softmax_data(200, seed=2)
    probs = np.round(probs, 2)
    rng = np.random.default_rng(0)
    weights = rng.integers(0, 4, size=(3, 200))
    got = WeightedScores(y, probs)(weights)
    for row, w in enumerate(weights):
        idx = np.repeat(np.arange(200), w)
        for key, value in reference(y[idx], probs[idx], 15).items():
            assert got[key][row] == pytest.approx(value, abs=1e-12), (row, key)


def test_absent_class_has_nan_rank_metrics(softmax_data) -> None:
    y, probs = softmax_data(100, seed=3)
    y = np.where(y == 3, 0, y)
    got = WeightedScores(y, probs)(np.ones((2, 100)))
    assert np.isnan(got["roc_auc/3"]).all() and np.isnan(got["average_precision/3"]).all()
    assert np.isfinite(got["roc_auc_macro"]).all()
    unranked = WeightedScores(y, probs, ranking=False)(np.ones((1, 100)))
    assert "roc_auc_macro" not in unranked and "macro_f1" in unranked
