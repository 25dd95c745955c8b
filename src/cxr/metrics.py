"""Metrics from predictions: plain arrays in, plain (JSON-ready) Python values out.

Everything here works on integer labels `y_true` (N,) and class probabilities `probs` (N, C), so the
same code scores a training epoch, a test split, or a saved predictions file, without torch.

Precision and recall follow Keras' `Precision()` / `Recall()` (what the seed reported): every one of
the N*C entries of the one-hot target is compared with `probs > 0.5`, and the counts are pooled
(micro average). With softmax outputs that differs from accuracy: a sample whose top probability is
below 0.5 adds a false negative and no prediction at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    classification_report,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from cxr.errors import CxrError

log = logging.getLogger(__name__)

EPSILON = 1e-7  # Keras' backend epsilon: probabilities are clipped to [eps, 1 - eps] in the loss
BOOTSTRAP_CHUNK = 4_000_000  # resampled labels scored per step, bounds the bootstrap's memory

BatchMetric = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _check(y_true: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert labels (N,) and probabilities (N, C); CxrError names what is wrong."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] == 0:
        raise CxrError(f"probs must be a non-empty 2-D array (samples, classes), got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        raise CxrError("probs contains NaN or infinite values; expected probabilities in [0, 1]")
    y = np.asarray(y_true)
    if y.ndim != 1 or y.shape[0] != p.shape[0]:
        raise CxrError(f"y_true must have shape ({p.shape[0]},) to match probs {p.shape}, got {y.shape}")
    integral = y.dtype.kind in "iu" or (y.dtype.kind == "f" and bool(np.all(np.mod(y, 1) == 0)))
    if not integral:
        raise CxrError(f"y_true must hold integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise CxrError(
            f"y_true holds class index {int(y.min()) if y.min() < 0 else int(y.max())}; "
            f"allowed: 0..{p.shape[1] - 1}"
        )
    return y, p


def cross_entropy(y_true: Any, probs: Any, eps: float = EPSILON) -> float:
    """Mean categorical cross-entropy of the true class, probabilities clipped to [eps, 1 - eps]."""
    y, p = _check(y_true, probs)
    picked = np.clip(p[np.arange(len(y)), y], eps, 1.0 - eps)
    return float(-np.mean(np.log(picked)))


def keras_precision_recall(y_true: Any, probs: Any, threshold: float = 0.5) -> tuple[float, float]:
    """Keras `Precision()` / `Recall()`: one-hot targets vs `probs > threshold`, micro over all N*C entries.

    Returns (precision, recall); each is 0.0 when its denominator is 0, as in Keras.
    """
    y, p = _check(y_true, probs)
    target = np.zeros(p.shape, dtype=bool)
    target[np.arange(len(y)), y] = True
    predicted = p > threshold
    tp = int(np.count_nonzero(predicted & target))
    fp = int(np.count_nonzero(predicted & ~target))
    fn = int(np.count_nonzero(~predicted & target))
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
    y, p = _check(y_true, probs)
    pred = p.argmax(axis=1)
    precision, recall = keras_precision_recall(y, p)
    return {
        "loss": float(loss) if loss is not None else cross_entropy(y, p),
        "accuracy": float(np.mean(pred == y)),
        "precision": precision,
        "recall": recall,
        "macro_f1": macro_f1(y, pred),
    }


def calibration_bins(y_true: Any, probs: Any, bins: int = 15) -> dict[str, list]:
    """Top-label reliability table over `bins` equal-width confidence bins of (0, 1].

    Returns edges (bins+1), count, confidence (mean top probability) and accuracy per bin;
    empty bins have count 0 and confidence/accuracy None.
    """
    if not isinstance(bins, int | np.integer) or bins < 1:
        raise CxrError(f"bins must be a positive integer, got {bins!r}")
    y, p = _check(y_true, probs)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    # Bin b holds confidences in (b/bins, (b+1)/bins]; a confidence of exactly 0 goes to the first bin.
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
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


def bootstrap_ci(
    y_true: Any,
    y_pred: Any,
    metric_fn: BatchMetric,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) interval of a metric of (y_true, y_pred).

    All n index sets are drawn at once from `np.random.default_rng(seed)`, so the interval is a
    pure function of the inputs and the seed. `metric_fn` is vectorised: it takes (B, N) arrays of
    resampled labels and returns B values (see `batch_accuracy`, `batch_macro_f1`).
    """
    if not isinstance(n, int | np.integer) or n < 1:
        raise CxrError(f"bootstrap resamples n must be a positive integer, got {n!r}")
    if not 0.0 < alpha < 1.0:
        raise CxrError(f"alpha must be in (0, 1), got {alpha!r}")
    yt = np.asarray(y_true)
    yp = np.asarray(y_pred)
    if yt.ndim != 1 or yt.shape != yp.shape or yt.size == 0:
        raise CxrError(f"y_true and y_pred must be equal-length non-empty 1-D arrays, got {yt.shape}, {yp.shape}")
    size = yt.size
    index_dtype = np.int32 if size < np.iinfo(np.int32).max else np.int64
    index = np.random.default_rng(seed).integers(0, size, size=(n, size), dtype=index_dtype)
    step = max(1, BOOTSTRAP_CHUNK // size)
    values = np.concatenate(
        [np.asarray(metric_fn(yt[index[i : i + step]], yp[index[i : i + step]])) for i in range(0, n, step)]
    )
    lo, hi = np.quantile(values, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)


def _roc_auc_per_class(y: np.ndarray, p: np.ndarray) -> list[float | None]:
    """One-vs-rest ROC-AUC per class; None where the class is absent (or is every sample)."""
    out: list[float | None] = []
    for c in range(p.shape[1]):
        positives = y == c
        if positives.all() or not positives.any():
            out.append(None)
        else:
            out.append(float(roc_auc_score(positives, p[:, c])))
    return out


def _by_prediction(cm: np.ndarray) -> np.ndarray:
    """Column-normalise counts (sklearn's normalize='pred'); columns never predicted stay 0."""
    totals = cm.sum(axis=0, keepdims=True).astype(np.float64)
    return np.divide(cm, totals, out=np.zeros(cm.shape, dtype=np.float64), where=totals > 0)


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
    the defined per-class AUCs), ece, confusion (counts, [true][pred]), confusion_by_prediction,
    classification_report (sklearn text), ci {accuracy, macro_f1} (None when n_boot is 0), bootstrap.
    """
    y, p = _check(y_true, probs)
    classes = [str(c) for c in classes]
    if len(classes) != p.shape[1]:
        raise CxrError(f"got {len(classes)} class names {classes} for probabilities with {p.shape[1]} columns")
    if not isinstance(n_boot, int | np.integer) or n_boot < 0:
        raise CxrError(f"n_boot must be an integer >= 0, got {n_boot!r}")
    labels = list(range(len(classes)))
    pred = p.argmax(axis=1)

    base = epoch_metrics(y, p, loss)
    prec, rec, f1, support = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    aucs = _roc_auc_per_class(y, p)
    defined = [a for a in aucs if a is not None]
    cm = confusion_matrix(y, pred, labels=labels)

    ci: dict[str, list[float] | None] = {"accuracy": None, "macro_f1": None}
    if n_boot:
        ci["accuracy"] = list(bootstrap_ci(y, pred, batch_accuracy, n=n_boot, seed=seed))
        ci["macro_f1"] = list(bootstrap_ci(y, pred, batch_macro_f1, n=n_boot, seed=seed))

    return {
        "n": int(len(y)),
        **base,
        "per_class": {
            name: {
                "precision": float(prec[i]),
                "recall": float(rec[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
                "roc_auc": aucs[i],
            }
            for i, name in enumerate(classes)
        },
        "roc_auc_macro": float(np.mean(defined)) if defined else None,
        "ece": expected_calibration_error(y, p, ece_bins),
        "ece_bins": int(ece_bins),
        "confusion": cm.astype(int).tolist(),
        "confusion_by_prediction": _by_prediction(cm).tolist(),
        "classification_report": classification_report(
            y, pred, labels=labels, target_names=classes, digits=3, zero_division=0
        ),
        "ci": ci,
        "bootstrap": {"n": int(n_boot), "seed": int(seed), "alpha": 0.05, "method": "percentile"},
    }
