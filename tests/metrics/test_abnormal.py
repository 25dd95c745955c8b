"""Abnormal vs Normal with foreign abnormal classes (a label map's `TB: abnormal`) and the called-Normal rate."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.metrics import roc_auc_score

from cxr.errors import CxrError
from cxr.metrics.abnormal import abnormal_summary, called_normal
from cxr.metrics.partial import present_class_metrics

CLASSES = ["COVID", "Normal"]


def _probs(p_normal: np.ndarray) -> np.ndarray:
    return np.stack([1 - p_normal, p_normal], axis=1)


def test_foreign_images_count_against_normal_in_the_auroc_and_the_called_normal_rate():
    rng = np.random.default_rng(0)
    truth = np.array(["Normal"] * 30 + ["TB"] * 20 + ["COVID"] * 10, dtype=object)
    p_normal = np.clip(np.where(truth == "Normal", 0.65, 0.4) + rng.normal(0, 0.2, truth.size), 0.01, 0.99)
    out = abnormal_summary(truth, _probs(p_normal), CLASSES, ["TB"], n_boot=200)
    assert out["abnormal_auroc"] == pytest.approx(roc_auc_score(truth != "Normal", 1 - p_normal))
    low, high = out["abnormal_auroc_ci"]
    assert low < out["abnormal_auroc"] < high
    normal_hits = int(np.sum((truth == "Normal") & (p_normal > 0.5)))
    assert out["called_normal"]["called"] == normal_hits and out["called_normal"]["n"] == 30
    ci = binomtest(normal_hits, 30).proportion_ci(0.95, method="wilson")
    assert out["called_normal"]["ci"] == pytest.approx([ci.low, ci.high])
    tb = out["foreign"]["TB"]
    assert tb["n"] == 20 and tb["called_abnormal"] == int(np.sum((truth == "TB") & (p_normal < 0.5)))
    assert sum(tb["predicted"].values()) == 20 and out["n_abnormal"] == 30


def test_only_one_group_gives_no_auroc_and_unknown_labels_are_refused():
    out = abnormal_summary(["TB", "TB"], _probs(np.array([0.2, 0.7])), CLASSES, ["TB"], n_boot=50)
    assert out["abnormal_auroc"] is None and out["called_normal"]["rate"] is None
    assert out["foreign"]["TB"]["called_abnormal"] == 1
    with pytest.raises(CxrError, match="'Other'"):
        abnormal_summary(["Other"], _probs(np.array([0.5])), CLASSES, ["TB"])
    assert called_normal(["Normal", "COVID"], ["Normal", "Normal"])["rate"] == 0.5


def test_partial_metrics_report_normal_recall_as_called_normal():
    y = np.array([1] * 8 + [0] * 4)
    p = _probs(np.array([0.9] * 6 + [0.2] * 2 + [0.1] * 4))
    m = present_class_metrics(y, p, CLASSES, n_boot=0)
    assert m["called_normal"] == pytest.approx(6 / 8) and m["ci"]["called_normal"] == m["per_class"]["Normal"]["recall_ci"]
    assert present_class_metrics(np.zeros(3, int), _probs(np.full(3, 0.2)), CLASSES, n_boot=0)["called_normal"] is None
