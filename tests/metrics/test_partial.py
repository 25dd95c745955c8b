"""Metrics of sets holding only some classes, the domain-shift comparison, and the shortcut rule."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import recall_score, roc_auc_score

from cxr.metrics.attention import (
    ATTENTION_MARGIN,
    attention_summary,
    chance_level,
    occlusion_summary,
    shortcut_verdict,
)
from cxr.metrics.blanked import BLANKED_MARGIN, newcombe_difference
from cxr.metrics.partial import present_class_metrics, restrict, worse_than

CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral_Pneumonia"]


def _probs(y: np.ndarray, skill: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(4), size=len(y))
    p[np.arange(len(y)), y] += skill
    return p / p.sum(axis=1, keepdims=True)


def test_two_of_four_classes_give_metrics_on_the_classes_present():
    y = np.array([0] * 30 + [2] * 20)
    p = _probs(y, 1.0)
    m = present_class_metrics(y, p, CLASSES, n_boot=200)
    pred = p.argmax(axis=1)
    assert m["classes_present"] == ["COVID", "Normal"] and m["n"] == 50
    assert set(m["per_class"]) == {"COVID", "Normal"}
    assert m["macro_recall"] == pytest.approx(recall_score(y, pred, labels=[0, 2], average="macro"))
    assert m["abnormal_auroc"] == pytest.approx(roc_auc_score(y != 2, 1 - p[:, 2]))
    assert m["per_class"]["COVID"]["roc_auc"] == pytest.approx(roc_auc_score(y == 0, p[:, 0]))
    assert m["predicted_absent"] == {"Lung_Opacity": int(np.sum(pred == 1)), "Viral_Pneumonia": int(np.sum(pred == 3))}
    for key in ("accuracy", "macro_recall", "macro_f1", "roc_auc_macro", "abnormal_auroc", "ece"):
        low, high = m["ci"][key]
        assert low <= m[key] <= high, key


def test_what_cannot_be_computed_is_none():
    y = np.zeros(12, dtype=int)  # COVID only: no negatives, no Normal
    m = present_class_metrics(y, _probs(y, 2.0), CLASSES, n_boot=50)
    assert m["roc_auc_macro"] is None and m["ci"]["roc_auc_macro"] is None
    assert m["abnormal_auroc"] is None and m["ci"]["abnormal_auroc"] is None
    assert m["per_class"]["COVID"]["roc_auc"] is None
    assert m["macro_recall"] == m["per_class"]["COVID"]["recall"]
    assert m["ci"]["macro_recall"] == m["per_class"]["COVID"]["recall_ci"]  # a proportion: Wilson
    y = np.full(8, 2)  # Normal only: abnormal vs Normal has no abnormal image
    assert present_class_metrics(y, _probs(y, 1.0), CLASSES, n_boot=0)["abnormal_auroc"] is None
    never = present_class_metrics(np.array([0, 2]), np.array([[0.1, 0.8, 0.05, 0.05]] * 2), CLASSES, n_boot=0)
    assert never["per_class"]["COVID"]["precision"] is None  # never predicted: no precision


def test_worse_than_needs_the_whole_interval_on_the_worse_side():
    internal = {"ci": {"accuracy": [0.85, 0.95], "ece": [0.01, 0.05], "macro_f1": [0.8, 0.9]}}
    external = {"ci": {"accuracy": [0.6, 0.8], "ece": [0.08, 0.2], "macro_f1": [0.7, 0.85]}}
    assert worse_than(internal, external) == ["accuracy", "ece"]
    assert worse_than(internal, {"ci": {"accuracy": None}}) == []
    y, p = restrict(np.array([0, 1, 2, 0]), np.eye(4)[[0, 1, 2, 0]], [0, 2])
    assert y.tolist() == [0, 2, 0] and p.shape == (3, 4)


def test_a_model_that_looks_outside_the_lungs_is_flagged_by_attention():
    y = np.repeat([0, 1], 20)
    area = np.full(40, 0.3)
    outside = attention_summary(np.full(40, 0.1) + 0.01 * np.arange(40) / 40, area, y, y, ["a", "b"], n_boot=200)
    assert outside["flag"] is True and outside["difference"] < -ATTENTION_MARGIN
    assert outside["difference_ci"][1] < 0 and outside["per_class"]["a"]["n"] == 20
    inside = attention_summary(np.full(40, 0.6), area, y, y, ["a", "b"], n_boot=200)
    assert inside["flag"] is False and inside["lift"] == pytest.approx(2.0)
    near = attention_summary(np.full(40, 0.28), area, y, y, ["a", "b"], n_boot=200)
    assert near["flag"] is False  # below the even map, but within the margin
    undefined = attention_summary(np.array([np.nan, 0.5]), np.array([0.3, 0.3]), [0, 1], [0, 0], ["a", "b"])
    assert undefined["undefined"] == 1 and undefined["n"] == 1
    assert attention_summary(np.array([np.nan]), np.array([0.3]), [0], [0], ["a"])["flag"] is None


def test_the_masked_region_test_compares_each_class_with_blanked_normals():
    y = np.repeat([0, 1, 2, 3], 10)  # Normal is class 2
    kept = occlusion_summary(y, y, {"lungs": y, "outside": np.zeros(40, int)}, "median", CLASSES)
    assert kept["flag"] is True and kept["informative"] and kept["chance"] == chance_level(y) == 0.25
    assert kept["outside"]["drop"] == pytest.approx(0.75)
    assert kept["control"]["source"] == "this set's Normal images" and kept["control"]["n"] == 10
    assert set(kept["blanked"]["per_class"]) == {"COVID", "Lung_Opacity", "Viral_Pneumonia"}
    covid = kept["blanked"]["per_class"]["COVID"]
    assert covid["rate"] == 1.0 and covid["control_rate"] == 0.0 and covid["difference_ci"][0] > BLANKED_MARGIN
    everything_covid = occlusion_summary(y, y, {"lungs": np.zeros(40, int)}, "median", CLASSES)
    assert everything_covid["flag"] is False  # blanked Normals are called COVID just as often: no evidence
    assert everything_covid["blanked"]["per_class"]["COVID"]["difference"] == 0.0
    assert occlusion_summary(y, y, {"outside": y}, "zero", CLASSES)["flag"] is None
    assert occlusion_summary(y, y, {"lungs": y}, "zero")["flag"] is None  # no classes: not computed


def test_a_one_class_set_is_judged_against_the_internal_control():
    """The issue's case: nearly all COVID, most still called COVID with the lungs blanked. Accuracy
    against the majority share could not flag it; the control (internal Normals, blanked) can."""
    y = np.array([0] * 172 + [2] * 10)
    blanked = np.where(np.arange(182) < 103, 0, 2)  # 103 of 172 COVID (60%) still called COVID
    control = {"n": 200, "called": {"COVID": 30, "Normal": 170}, "source": "internal test"}
    out = occlusion_summary(y, y, {"lungs": blanked}, "median", CLASSES, control)
    covid = out["blanked"]["per_class"]["COVID"]
    assert out["flag"] is True and out["control"] is control and covid["control_rate"] == 0.15
    low, high = covid["difference_ci"]
    assert low > BLANKED_MARGIN and low < covid["difference"] < high
    fair = {"n": 200, "called": {"COVID": 110, "Normal": 90}, "source": "internal test"}  # 55%: the blank alone
    assert occlusion_summary(y, y, {"lungs": blanked}, "median", CLASSES, fair)["flag"] is False
    no_normal = occlusion_summary(np.zeros(5, int), np.zeros(5, int), {"lungs": np.zeros(5, int)}, "median", CLASSES)
    assert no_normal["control"] is None and no_normal["flag"] is None  # nothing to compare with


def test_newcombe_interval_matches_the_published_example():
    # Newcombe (1998), Table II example (56/70 - 48/80): method 10 gives 0.0524 to 0.3339
    assert newcombe_difference(56, 70, 48, 80) == pytest.approx([0.0524, 0.3339], abs=5e-4)
    assert newcombe_difference(0, 0, 1, 2) is None


def test_either_signal_flags():
    assert shortcut_verdict({"flag": True}, {"flag": False})["flagged"] is True
    assert shortcut_verdict({"flag": False}, {"flag": True})["flagged"] is True
    assert shortcut_verdict({"flag": False}, None)["flagged"] is False
    verdict = shortcut_verdict(None, None)
    assert verdict["flagged"] is None and "Either signal flags" in verdict["rule"]
