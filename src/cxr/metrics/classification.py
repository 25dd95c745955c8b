"""Point metrics of one set of predictions: plain arrays in, plain (JSON-ready) Python values out.

Everything works on integer labels `y_true` (N,) and class probabilities `probs` (N, C), so the
same code scores a training epoch, a test split, or a saved predictions file, without torch.

Precision and recall follow Keras' `Precision()` / `Recall()` (what the seed reported): every one of
the N*C entries of the one-hot target is compared with `probs > 0.5`, and the counts are pooled
(micro average). With softmax outputs that differs from accuracy: a sample whose top probability is
below 0.5 adds a false negative and no prediction at all.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from cxr.metrics.checks import check_count, check_probs

EPSILON = 1e-7  # Keras' backend epsilon: probabilities are clipped to [eps, 1 - eps] in the loss


def cross_entropy(y_true: Any, probs: Any, eps: float = EPSILON) -> float:
    """Mean categorical cross-entropy of the true class, probabilities clipped to [eps, 1 - eps]."""
    y, p = check_probs(y_true, probs)
    picked = np.clip(p[np.arange(len(y)), y], eps, 1.0 - eps)
    return float(-np.mean(np.log(picked)))


def keras_counts(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Per-sample Keras counts (N, 3): true positives, false positives, false negatives of `p > threshold`."""
    target = np.zeros(p.shape, dtype=bool)
    target[np.arange(len(y)), y] = True
    predicted = p > threshold
    return np.stack(
        [(predicted & target).sum(axis=1), (predicted & ~target).sum(axis=1), (~predicted & target).sum(axis=1)],
        axis=1,
    )


def keras_precision_recall(y_true: Any, probs: Any, threshold: float = 0.5) -> tuple[float, float]:
    """Keras `Precision()` / `Recall()`: one-hot targets vs `probs > threshold`, micro over all N*C entries.

    Returns (precision, recall); each is 0.0 when its denominator is 0, as in Keras.
    """
    y, p = check_probs(y_true, probs)
    tp, fp, fn = (int(v) for v in keras_counts(y, p, threshold).sum(axis=0))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return float(precision), float(recall)


def macro_f1(y_true: Any, y_pred: Any) -> float:
    """Macro-F1 over the classes present in y_true or y_pred (sklearn's default `average='macro'`)."""
    return float(f1_score(y_true, y_pred, average="macro", zero_division=0))


def epoch_metrics(y_true: Any, probs: Any, loss: float | None = None) -> dict[str, float]:
    """The per-epoch row of history.csv: loss, accuracy, Keras precision/recall, macro-F1.

    `loss` is the training loss as the loop computed it (with class weights, label smoothing);
    when omitted, the plain cross-entropy of `probs` is used.
    """
    y, p = check_probs(y_true, probs)
    pred = p.argmax(axis=1)
    precision, recall = keras_precision_recall(y, p)
    return {
        "loss": float(loss) if loss is not None else cross_entropy(y, p),
        "accuracy": float(np.mean(pred == y)),
        "precision": precision,
        "recall": recall,
        "macro_f1": macro_f1(y, pred),
    }


def confidence_bin_index(confidence: np.ndarray, bins: int) -> np.ndarray:
    """Bin b of `bins` equal-width bins holds confidences in (b/bins, (b+1)/bins]; 0 goes to the first bin."""
    return np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)


def calibration_bins(y_true: Any, probs: Any, bins: int = 15) -> dict[str, list]:
    """Top-label reliability table over `bins` equal-width confidence bins of (0, 1].

    Returns edges (bins+1), count, confidence (mean top probability) and accuracy per bin;
    empty bins have count 0 and confidence/accuracy None.
    """
    bins = check_count(bins, "bins")
    y, p = check_probs(y_true, probs)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    index = confidence_bin_index(confidence, bins)
    count = np.bincount(index, minlength=bins)
    conf_sum = np.bincount(index, weights=confidence, minlength=bins)
    acc_sum = np.bincount(index, weights=correct, minlength=bins)
    nonempty = count > 0
    return {
        "edges": np.linspace(0.0, 1.0, bins + 1).tolist(),
        "count": count.astype(int).tolist(),
        "confidence": [float(c / n) if n else None for c, n in zip(conf_sum, count, strict=True)],
        "accuracy": [float(a / n) if n else None for a, n in zip(acc_sum, count, strict=True)],
        "nonempty": nonempty.tolist(),
    }


def expected_calibration_error(y_true: Any, probs: Any, bins: int = 15) -> float:
    """Top-label ECE: sum over equal-width bins of |accuracy - confidence| weighted by bin size."""
    table = calibration_bins(y_true, probs, bins)
    total = sum(table["count"])
    gaps = (
        n * abs(acc - conf)
        for n, acc, conf in zip(table["count"], table["accuracy"], table["confidence"], strict=True)
        if n
    )
    return float(sum(gaps) / total)


def _one_vs_rest(y: np.ndarray, p: np.ndarray, score: Any) -> list[float | None]:
    out: list[float | None] = []
    for c in range(p.shape[1]):
        positives = y == c
        if positives.all() or not positives.any():
            out.append(None)
        else:
            out.append(float(score(positives, p[:, c])))
    return out


def roc_auc_per_class(y_true: Any, probs: Any) -> list[float | None]:
    """One-vs-rest ROC-AUC per class; None where the class is absent (or is every sample)."""
    return _one_vs_rest(*check_probs(y_true, probs), roc_auc_score)


def average_precision_per_class(y_true: Any, probs: Any) -> list[float | None]:
    """One-vs-rest average precision (area under the PR curve, sklearn's step rule) per class; None
    where the class is absent (or is every sample, where it says nothing)."""
    return _one_vs_rest(*check_probs(y_true, probs), average_precision_score)


def normalise_confusion(cm: Any, by: str) -> np.ndarray:
    """Counts [true][pred] divided by column ("pred": share of each prediction) or row totals ("true":
    sensitivity per true class on the diagonal); an empty row/column stays 0."""
    counts = np.asarray(cm, dtype=np.float64)
    totals = counts.sum(axis=0 if by == "pred" else 1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros(counts.shape, dtype=np.float64), where=totals > 0)


def batched_confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion counts (B, C, C) of B label rows at once: [b, true, pred], via one bincount."""
    y_true = np.atleast_2d(y_true)
    y_pred = np.atleast_2d(y_pred)
    rows = y_true.shape[0]
    cells = num_classes * num_classes
    flat = (np.arange(rows)[:, None] * cells + y_true * num_classes + y_pred).ravel()
    return np.bincount(flat, minlength=rows * cells).reshape(rows, num_classes, num_classes)


def batch_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Accuracy of each row of (B, N) label arrays -> (B,)."""
    return np.mean(np.atleast_2d(y_true) == np.atleast_2d(y_pred), axis=1)


def batch_macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Macro-F1 of each row of (B, N) label arrays -> (B,), same definition as `macro_f1`."""
    num_classes = int(max(np.max(y_true), np.max(y_pred))) + 1
    cm = batched_confusion(y_true, y_pred, num_classes)
    tp = np.diagonal(cm, axis1=1, axis2=2).astype(np.float64)
    denom = cm.sum(axis=2) + cm.sum(axis=1)  # true count + predicted count = 2TP + FP + FN
    present = denom > 0
    f1 = np.divide(2.0 * tp, denom, out=np.zeros_like(tp), where=present)
    return f1.sum(axis=1) / present.sum(axis=1)
