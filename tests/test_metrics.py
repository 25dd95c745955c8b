"""cxr.metrics: metrics against sklearn on fixed arrays, Keras semantics by hand, CIs, ECE."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
)

from cxr.errors import CxrError
from cxr.metrics import (
    batch_accuracy,
    batch_macro_f1,
    bootstrap_ci,
    calibration_bins,
    classification_metrics,
    cross_entropy,
    epoch_metrics,
    expected_calibration_error,
    keras_precision_recall,
    macro_f1,
    stratified_bootstrap,
    wilson_interval,
)
from cxr.metrics.weighted import WeightedScores

CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral_Pneumonia"]


def softmax_data(n: int, num_classes: int = 4, signal: float = 2.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and softmax probabilities where the true class gets a logit bonus (a decent classifier)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, n)
    logits = rng.normal(size=(n, num_classes))
    logits[np.arange(n), y] += signal
    probs = np.exp(logits)
    return y, probs / probs.sum(axis=1, keepdims=True)


# --- Keras precision / recall ---------------------------------------------------------------


def test_keras_precision_recall_hand_example() -> None:
    # 3 classes, 4 samples; Keras compares the one-hot target with probs > 0.5, entry by entry.
    #   s0 true 0, [0.70, 0.20, 0.10]: class 0 > 0.5 and true           -> TP
    #   s1 true 1, [0.60, 0.30, 0.10]: class 0 > 0.5 but wrong class    -> FP (class 0) + FN (class 1)
    #   s2 true 2, [0.20, 0.35, 0.45]: nothing > 0.5 (argmax is right!) -> FN (class 2), no FP
    #   s3 true 2, [0.05, 0.05, 0.90]: class 2 > 0.5 and true           -> TP
    # TP = 2, FP = 1, FN = 2 -> precision = 2/3, recall = 2/4 = 0.5; argmax accuracy = 3/4.
    y = np.array([0, 1, 2, 2])
    probs = np.array([
        [0.70, 0.20, 0.10],
        [0.60, 0.30, 0.10],
        [0.20, 0.35, 0.45],
        [0.05, 0.05, 0.90],
    ])
    precision, recall = keras_precision_recall(y, probs)
    assert precision == pytest.approx(2 / 3)
    assert recall == pytest.approx(0.5)
    assert epoch_metrics(y, probs)["accuracy"] == pytest.approx(0.75)


def test_keras_threshold_is_strict_and_empty_predictions_give_zero() -> None:
    # Exactly 0.5 is not "> 0.5": no predicted positives at all -> precision 0 (undefined), recall 0/2.
    y = np.array([0, 1])
    probs = np.array([[0.5, 0.5], [0.5, 0.5]])
    assert keras_precision_recall(y, probs) == (0.0, 0.0)


def test_keras_precision_recall_matches_micro_multilabel_sklearn() -> None:
    y, probs = softmax_data(300, signal=1.0, seed=3)
    onehot = np.eye(4, dtype=int)[y]
    predicted = (probs > 0.5).astype(int)
    precision, recall = keras_precision_recall(y, probs)
    assert precision == pytest.approx(precision_score(onehot, predicted, average="micro"))
    assert recall == pytest.approx(recall_score(onehot, predicted, average="micro"))
    assert precision != pytest.approx(recall)  # with weak signal, some rows have no prob > 0.5


# --- classification_metrics vs sklearn --------------------------------------------------------


def test_classification_metrics_match_sklearn() -> None:
    y, probs = softmax_data(500, seed=1)
    pred = probs.argmax(axis=1)
    m = classification_metrics(y, probs, CLASSES, n_boot=200)

    assert m["n"] == 500
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["loss"] == pytest.approx(log_loss(y, probs))
    assert m["confusion"] == confusion_matrix(y, pred).tolist()
    assert m["roc_auc_macro"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    for c, name in enumerate(CLASSES):
        assert m["per_class"][name]["roc_auc"] == pytest.approx(roc_auc_score(y == c, probs[:, c]))
        assert m["per_class"][name]["support"] == int(np.sum(y == c))
    assert m["per_class"]["Normal"]["f1"] == pytest.approx(f1_score(y, pred, average=None)[2])
    assert m["classification_report"] == classification_report(y, pred, target_names=CLASSES, digits=3)
    json.dumps(m, allow_nan=False)  # plain floats/lists only


def test_confusion_by_prediction_columns_sum_to_one() -> None:
    y, probs = softmax_data(200, seed=2)
    m = classification_metrics(y, probs, CLASSES, n_boot=0)
    by_pred = np.array(m["confusion_by_prediction"])
    np.testing.assert_allclose(by_pred.sum(axis=0), 1.0)
    np.testing.assert_allclose(by_pred, confusion_matrix(y, probs.argmax(1), normalize="pred"))
    # n_boot=0 turns off the bootstrap intervals; accuracy's is a Wilson interval now, always given.
    assert {k: v for k, v in m["ci"].items() if k != "accuracy"} == dict.fromkeys(
        ("macro_f1", "roc_auc_macro", "ece", "precision", "recall"))
    correct = int(np.sum(probs.argmax(1) == y))
    assert m["ci"]["accuracy"] == wilson_interval(correct, 200)


def test_absent_class_has_no_auc_and_stays_serialisable() -> None:
    y, probs = softmax_data(120, seed=4)
    y = np.where(y == 3, 0, y)  # class 3 never occurs
    m = classification_metrics(y, probs, CLASSES, n_boot=50)
    assert m["per_class"]["Viral_Pneumonia"]["roc_auc"] is None
    assert m["per_class"]["Viral_Pneumonia"]["support"] == 0
    defined = [m["per_class"][c]["roc_auc"] for c in CLASSES[:3]]
    assert m["roc_auc_macro"] == pytest.approx(np.mean(defined))
    json.dumps(m, allow_nan=False)


def test_cross_entropy_clips_zero_probability() -> None:
    probs = np.array([[1.0, 0.0], [0.0, 1.0]])
    # The second sample puts 0 on its true class 0 -> clipped to 1e-7: loss = -(log(1-1e-7) + log(1e-7)) / 2
    expected = -(np.log(1 - 1e-7) + np.log(1e-7)) / 2
    assert cross_entropy([0, 0], probs) == pytest.approx(expected)
    assert epoch_metrics([0, 0], probs, loss=1.25)["loss"] == 1.25  # a given loss is kept


@pytest.mark.parametrize(
    ("y", "probs", "needle"),
    [
        ([0, 1], np.ones((3, 2)) / 2, "shape"),
        ([0, 2], np.ones((2, 2)) / 2, "class index 2"),
        ([0, -1], np.ones((2, 2)) / 2, "class index -1"),
        ([0.5, 1], np.ones((2, 2)) / 2, "integer"),
        ([0, 1], np.array([[np.nan, 1.0], [0.5, 0.5]]), "NaN"),
        ([0, 1], np.ones(2), "2-D"),
    ],
)
def test_bad_inputs_raise_cxr_error(y: list, probs: np.ndarray, needle: str) -> None:
    with pytest.raises(CxrError, match=needle):
        epoch_metrics(y, probs)


def test_class_names_must_match_columns() -> None:
    y, probs = softmax_data(20)
    with pytest.raises(CxrError, match="3 class names"):
        classification_metrics(y, probs, CLASSES[:3])


# --- bootstrap ---------------------------------------------------------------------------------


def test_batch_metrics_match_sklearn_row_by_row() -> None:
    rng = np.random.default_rng(5)
    y_true = rng.integers(0, 4, size=(6, 40))
    y_pred = np.where(rng.random((6, 40)) < 0.7, y_true, rng.integers(0, 4, size=(6, 40)))
    y_true[0] = np.where(y_true[0] == 3, 1, y_true[0])  # row 0: class 3 only predicted, never true
    y_pred[1] = np.where(y_pred[1] == 2, 0, y_pred[1])  # row 1: class 2 never predicted
    f1 = batch_macro_f1(y_true, y_pred)
    acc = batch_accuracy(y_true, y_pred)
    for row in range(6):
        assert f1[row] == pytest.approx(macro_f1(y_true[row], y_pred[row]))
        assert acc[row] == pytest.approx(accuracy_score(y_true[row], y_pred[row]))


def test_bootstrap_ci_contains_point_estimate_and_is_deterministic() -> None:
    y, probs = softmax_data(400, seed=6)
    pred = probs.argmax(axis=1)
    point = macro_f1(y, pred)
    lo, hi = bootstrap_ci(y, pred, batch_macro_f1, n=500, seed=7)
    assert 0.0 <= lo < point < hi <= 1.0
    assert bootstrap_ci(y, pred, batch_macro_f1, n=500, seed=7) == (lo, hi)
    assert bootstrap_ci(y, pred, batch_macro_f1, n=500, seed=8) != (lo, hi)
    m = classification_metrics(y, probs, CLASSES, n_boot=500, seed=7)
    # metrics.json's macro-F1 interval is the stratified BCa bootstrap now (was this percentile one).
    assert m["ci"]["macro_f1"] == stratified_bootstrap(y, WeightedScores(y, probs), 500, 7)["macro_f1"].ci
    assert m["ci"]["macro_f1"][0] < point < m["ci"]["macro_f1"][1]
    assert m["ci"]["accuracy"][0] < m["accuracy"] < m["ci"]["accuracy"][1]


def test_bootstrap_is_vectorised_fast() -> None:
    y, probs = softmax_data(1000, seed=9)
    pred = probs.argmax(axis=1)
    start = time.perf_counter()
    bootstrap_ci(y, pred, batch_macro_f1, n=1000, seed=0)
    bootstrap_ci(y, pred, batch_accuracy, n=1000, seed=0)
    assert time.perf_counter() - start < 1.0


def test_bootstrap_rejects_bad_arguments() -> None:
    with pytest.raises(CxrError, match="n must be"):
        bootstrap_ci([0, 1], [0, 1], batch_accuracy, n=0)
    with pytest.raises(CxrError, match="alpha"):
        bootstrap_ci([0, 1], [0, 1], batch_accuracy, alpha=1.5)
    with pytest.raises(CxrError, match="equal-length"):
        bootstrap_ci([0, 1], [0, 1, 1], batch_accuracy)


# --- calibration -------------------------------------------------------------------------------


def calibrated_data(confidence: float, n: int, num_classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """n rows predicting class 0 with `confidence`; exactly round(confidence * n) of them are right."""
    rest = (1.0 - confidence) / (num_classes - 1)
    probs = np.full((n, num_classes), rest)
    probs[:, 0] = confidence
    y = np.ones(n, dtype=int)
    y[: round(confidence * n)] = 0
    return y, probs


def test_ece_of_perfectly_calibrated_data_is_zero() -> None:
    parts = [calibrated_data(0.75, 400), calibrated_data(0.95, 200), calibrated_data(0.5, 100)]
    y = np.concatenate([p[0] for p in parts])
    probs = np.concatenate([p[1] for p in parts])
    assert expected_calibration_error(y, probs, bins=15) == pytest.approx(0.0, abs=1e-12)


def test_ece_of_overconfident_data_is_the_gap() -> None:
    # Confidence 0.99 but only half right: ECE = |0.5 - 0.99| = 0.49.
    y, probs = calibrated_data(0.99, 200)
    y[100:] = 1
    y[:100] = 0
    assert expected_calibration_error(y, probs) == pytest.approx(0.49)


def test_calibration_bins_counts_and_edges() -> None:
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.95, 0.05], [0.6, 0.4], [0.3, 0.7], [0.9, 0.1]])  # top: 0.95, 0.6, 0.7, 0.9
    table = calibration_bins(y, probs, bins=5)  # (0,.2] (.2,.4] (.4,.6] (.6,.8] (.8,1]
    assert table["count"] == [0, 0, 1, 1, 2]
    assert table["accuracy"][4] == pytest.approx(0.5)  # 0.95 right, 0.9 wrong
    assert table["confidence"][4] == pytest.approx(0.925)
    assert table["confidence"][0] is None
    np.testing.assert_allclose(table["edges"], [0, 0.2, 0.4, 0.6, 0.8, 1.0])
    with pytest.raises(CxrError, match="bins"):
        calibration_bins(y, probs, bins=0)


def test_metrics_and_report_modules_do_not_import_torch() -> None:
    # A fresh interpreter, so torch imported by other tests in this process cannot hide an import.
    code = (
        "import sys, cxr.metrics, cxr.report.result_figures, cxr.report.document; "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
