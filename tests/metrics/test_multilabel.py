"""Multi-label metrics: per-finding AUROC/AP against sklearn, intervals, masked (uncertain) entries,
thresholds chosen on validation, the history row."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from cxr.errors import CxrError
from cxr.metrics.multilabel import (
    binary_cross_entropy,
    choose_thresholds,
    multilabel_epoch_metrics,
    multilabel_metrics,
)

FINDINGS = ["Effusion", "Mass", "Nodule"]


def synthetic(n: int = 300, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 3)) < [0.3, 0.1, 0.5]).astype(np.float64)
    signal = np.array([2.0, 1.0, 0.0])  # Effusion easy, Mass harder, Nodule chance
    logits = y * signal + rng.normal(size=(n, 3))
    labelled = rng.random((n, 3)) > 0.1
    return y, labelled, 1 / (1 + np.exp(-logits))


def test_per_finding_auroc_and_ap_equal_sklearn_on_the_labelled_rows():
    y, m, p = synthetic()
    out = multilabel_metrics(y, m, p, FINDINGS, n_boot=200, seed=1)
    for c, name in enumerate(FINDINGS):
        rows = m[:, c]
        entry = out["per_label"][name]
        assert entry["auroc"] == pytest.approx(roc_auc_score(y[rows, c], p[rows, c]))
        assert entry["average_precision"] == pytest.approx(average_precision_score(y[rows, c], p[rows, c]))
        lo, hi = entry["auroc_ci"]
        assert lo < entry["auroc"] < hi and hi - lo > 0.01
        assert entry["labelled"] == rows.sum() and entry["positives"] == y[rows, c].sum()
    effusion, nodule = out["per_label"]["Effusion"]["auroc"], out["per_label"]["Nodule"]["auroc"]
    assert effusion > 0.85 and abs(nodule - 0.5) < 0.1
    assert out["mean_auroc"] == pytest.approx(np.mean([out["per_label"][f]["auroc"] for f in FINDINGS]))
    assert out["mean_auroc_ci"][0] < out["mean_auroc"] < out["mean_auroc_ci"][1]


def test_a_finding_without_positives_is_none_not_a_number():
    y, m, p = synthetic()
    y[:, 1] = 0
    out = multilabel_metrics(y, m, p, FINDINGS, n_boot=50)
    assert out["per_label"]["Mass"]["auroc"] is None and out["per_label"]["Mass"]["auroc_ci"] is None
    assert out["mean_auroc"] == pytest.approx(np.mean([out["per_label"][f]["auroc"] for f in ("Effusion", "Nodule")]))


def test_thresholds_chosen_on_validation_are_used_for_sensitivity_and_specificity():
    y, m, p = synthetic(seed=2)
    chosen = choose_thresholds(y, m, p)
    assert all(0 < t < 1 for t in chosen)
    out = multilabel_metrics(y, m, p, FINDINGS, thresholds=chosen, n_boot=20)
    entry = out["per_label"]["Effusion"]
    rows = m[:, 0]
    called = p[rows, 0] >= chosen[0]
    assert entry["threshold"] == chosen[0]
    assert entry["sensitivity"] == pytest.approx(np.mean(called[y[rows, 0] == 1]))
    assert entry["sensitivity_ci"][0] <= entry["sensitivity"] <= entry["sensitivity_ci"][1]
    with pytest.raises(CxrError, match="allowed: f1, youden"):
        choose_thresholds(y, m, p, method="best")


def test_the_epoch_row_ignores_unlabelled_entries():
    y = np.array([[1, 0], [0, 1]], dtype=float)
    p = np.array([[0.9, 0.9], [0.2, 0.1]])
    all_rows = multilabel_epoch_metrics(y, None, p)
    masked = multilabel_epoch_metrics(y, np.array([[1, 0], [1, 0]], dtype=bool), p)
    assert all_rows["accuracy"] == pytest.approx(0.5) and masked["accuracy"] == pytest.approx(1.0)
    assert masked["loss"] == pytest.approx(binary_cross_entropy(y[:, :1], None, p[:, :1]))
    with pytest.raises(CxrError, match="share one"):
        multilabel_epoch_metrics(y, None, p[:, :1])
