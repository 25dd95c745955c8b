"""Result figures of a run: training curves, confusion matrix, ROC and PR curves, reliability
(also before/after calibration), report text.

Inputs are plain lists/arrays (history rows, metrics.json values), never torch objects. Each figure
is a `matplotlib.figure.Figure` saved through the Agg canvas, so nothing touches pyplot's global
state and figures can be drawn from worker threads or a server. Every figure is written as PNG (for
the report) and SVG (for papers) side by side: `formats` names the files, the first is returned.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import auc as area_under_curve
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_curve

from cxr.errors import CxrError
from cxr.metrics.classification import calibration_bins, expected_calibration_error

log = logging.getLogger(__name__)

DPI = 120
CURVE_METRICS = ("loss", "accuracy", "precision", "recall")  # the seed's four *_training_results.png
NORMALIZE_MODES = ("pred", "true", "all", None)
TRAIN_COLOR, VAL_COLOR = "#1f77b4", "#ff7f0e"
BEST_COLOR = "#2ca02c"
FIGURE_FORMATS = ("png", "svg")  # files written per figure: path with each suffix
ALLOWED_FORMATS = ("png", "svg", "pdf")


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path, *, tight: bool = False, formats: Sequence[str] = FIGURE_FORMATS) -> Path:
    """Write `fig` once per format, as `path` with that suffix; returns the file of the first format."""
    bad = [f for f in formats if f not in ALLOWED_FORMATS]
    if not formats or bad:
        raise CxrError(f"figure formats must be a non-empty subset of {ALLOWED_FORMATS}, got {tuple(formats)!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    extra: dict[str, Any] = {"bbox_inches": "tight", "pad_inches": 0.25} if tight else {}
    written = []
    for fmt in formats:
        target = path.with_suffix(f".{fmt}")
        fig.savefig(target, format=fmt, dpi=DPI, facecolor="white", **extra)
        written.append(target)
        log.debug("wrote %s", target)
    return written[0]


def _number(value: Any) -> float:
    """A history cell (float, int or CSV string) as float; blanks and junk become NaN (a gap)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def training_curves(
    history: Sequence[Mapping[str, Any]],
    out_dir: str | Path,
    best_epoch: int | None = None,
    *,
    formats: Sequence[str] = FIGURE_FORMATS,
) -> list[Path]:
    """Write loss.png, accuracy.png, precision.png, recall.png: train vs val per epoch.

    `history` holds history.csv rows (keys `epoch`, `train_<metric>`, `val_<metric>`; values may be
    strings as read by csv). A metric with no train or val column is skipped with a log message.
    `best_epoch` (metrics.json's, the checkpoint that was tested) is marked with a vertical line.
    Returns the file of the first format per figure (the PNG by default; the SVG lies beside it).
    """
    rows = list(history)
    if not rows:
        raise CxrError("training_curves needs at least one history row, got an empty history")
    epochs = [_number(r.get("epoch", i + 1)) for i, r in enumerate(rows)]
    out_dir = Path(out_dir)
    written: list[Path] = []
    for metric in CURVE_METRICS:
        series = {
            split: [_number(r.get(f"{split}_{metric}")) for r in rows]
            for split in ("train", "val")
            if any(f"{split}_{metric}" in r for r in rows)
        }
        if not series:
            log.info("history has no train_%s/val_%s columns; %s.png not drawn", metric, metric, metric)
            continue
        fig = _new_figure(6.4, 4.4)
        ax = fig.add_subplot()
        for split, values in series.items():
            label = "Training" if split == "train" else "Validation"
            color = TRAIN_COLOR if split == "train" else VAL_COLOR
            ax.plot(epochs, values, marker="o", markersize=3, color=color, label=f"{label} {metric}")
        if best_epoch is not None:
            ax.axvline(best_epoch, color=BEST_COLOR, linestyle="--", linewidth=1.2, label=f"Best epoch ({best_epoch})")
        ax.set_title(f"Training and validation {metric}")
        ax.set_xlabel("Epoch")
        ax.set_ylabel(metric.capitalize())
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
        written.append(_save(fig, out_dir / f"{metric}.png", formats=formats))
    return written


def _normalise(counts: np.ndarray, normalize: str | None) -> np.ndarray:
    if normalize is None:
        return counts.astype(np.float64)
    axis = {"pred": 0, "true": 1, "all": None}[normalize]
    totals = counts.sum(axis=axis, keepdims=axis is not None).astype(np.float64)
    return np.divide(counts, totals, out=np.zeros(counts.shape), where=np.asarray(totals) > 0)


def confusion_matrix_figure(
    confusion: Sequence[Sequence[float]],
    classes: Sequence[str],
    path: str | Path,
    normalize: str | None = "pred",
    *,
    formats: Sequence[str] = FIGURE_FORMATS,
) -> Path:
    """Draw a confusion matrix from counts ([true][pred]), like sklearn's ConfusionMatrixDisplay.

    normalize: "pred" divides each column by its predictions (the seed's figure), "true" each row,
    "all" the total; None shows raw counts. Normalised cells are written with 2 decimals.
    """
    if normalize not in NORMALIZE_MODES:
        raise CxrError(f"normalize must be one of {NORMALIZE_MODES}, got {normalize!r}")
    counts = np.asarray(confusion, dtype=np.float64)
    k = len(classes)
    if counts.shape != (k, k):
        raise CxrError(f"confusion must be {k}x{k} for classes {list(classes)}, got shape {counts.shape}")
    values = _normalise(counts, normalize)
    size = max(4.8, 1.3 * k + 2.2)
    fig = _new_figure(size + 1.0, size)
    ax = fig.add_subplot()
    vmax = 1.0 if normalize else max(float(values.max()), 1.0)
    image = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=vmax)
    fig.colorbar(image, ax=ax, shrink=0.8)
    for i in range(k):
        for j in range(k):
            text = f"{values[i, j]:.2f}" if normalize else f"{int(counts[i, j])}"
            color = "white" if values[i, j] > vmax / 2 else "black"
            ax.text(j, i, text, ha="center", va="center", color=color, fontsize=11)
    ax.set_xticks(range(k), labels=list(classes), rotation=30, ha="right")
    ax.set_yticks(range(k), labels=list(classes))
    ax.set_xlabel("Predicted label")
    ax.set_ylabel("True label")
    subtitle = {
        "pred": "normalised by predicted label (columns sum to 1)",
        "true": "normalised by true label (rows sum to 1, diagonal = sensitivity)",
        "all": "normalised by all samples",
        None: "counts",
    }[normalize]
    ax.set_title(f"Confusion matrix\n{subtitle}, n={int(counts.sum())}")
    return _save(fig, path, formats=formats)


def _binary_problems(y_true: Any, probs: Any, classes: Sequence[str]) -> tuple[int, list[tuple[np.ndarray, np.ndarray]]]:
    """(n, per class (positive (M,), score (M,))): one vs rest for class indices (N,), or per finding
    over its labelled rows for multi-label targets (N, C) (NaN = unlabelled)."""
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape != (len(y), len(classes)) or y.ndim not in (1, 2) or (y.ndim == 2 and y.shape != p.shape):
        raise CxrError(f"probs must have shape ({len(y)}, {len(classes)}), got {p.shape}")
    if y.ndim == 1:
        return len(y), [(y == c, p[:, c]) for c in range(len(classes))]
    rows = [~np.isnan(y[:, c]) for c in range(len(classes))]
    return len(y), [(y[r, c] == 1, p[r, c]) for c, r in enumerate(rows)]


CURVE_STYLES = ("-", "--", "-.", ":")  # one per class in turn, so a curve equal to another still shows
CURVE_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def curve_style(index: int) -> dict[str, Any]:
    """Line style, marker and width of the `index`-th class's curve: later curves are thinner, dashed and
    marked differently, so one drawn over an equal one leaves it visible around and between its marks."""
    return {"linestyle": CURVE_STYLES[index % len(CURVE_STYLES)], "marker": CURVE_MARKERS[index % len(CURVE_MARKERS)],
            "markevery": 0.1, "markersize": 6, "linewidth": max(1.2, 3.0 - 0.5 * index)}


def _same_as(drawn: list[tuple[str, np.ndarray, np.ndarray]], x: np.ndarray, y: np.ndarray) -> str:
    """' = NAME's curve' when an earlier class drew exactly this curve (a legend note), else ''."""
    for name, px, py in drawn:
        if px.shape == x.shape and np.allclose(px, x) and np.allclose(py, y):
            return f", same curve as {name}"
    return ""


def roc_curves(
    y_true: Sequence[int], probs: Any, classes: Sequence[str], path: str | Path, *,
    formats: Sequence[str] = FIGURE_FORMATS,
) -> Path:
    """One-vs-rest ROC curve per class (multi-label targets: per finding) with its AUC; classes
    absent from y_true are listed, not drawn."""
    n, problems = _binary_problems(y_true, probs, classes)
    fig = _new_figure(6.4, 5.6)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="Chance (AUC 0.500)")
    drawn: list[tuple[str, np.ndarray, np.ndarray]] = []
    for i, (name, (positives, score)) in enumerate(zip(classes, problems, strict=True)):
        if positives.all() or not positives.any():
            ax.plot([], [], linestyle="none", label=f"{name}: no ROC (class absent or the only class)")
            continue
        fpr, tpr, _ = roc_curve(positives, score)
        auc = float(area_under_curve(fpr, tpr))
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f}{_same_as(drawn, fpr, tpr)})", **curve_style(i))
        drawn.append((name, fpr, tpr))
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("False positive rate (1 - specificity)")
    ax.set_ylabel("True positive rate (sensitivity)")
    ax.set_title(f"ROC curves, one class vs rest (n={n})")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    return _save(fig, path, formats=formats)


def pr_curves_figure(
    y_true: Sequence[int], probs: Any, classes: Sequence[str], path: str | Path, *,
    formats: Sequence[str] = FIGURE_FORMATS,
) -> Path:
    """One-vs-rest precision-recall curve per class, average precision in the legend, and each
    class's prevalence (a chance classifier's precision) dotted; absent classes are listed, not drawn."""
    n, problems = _binary_problems(y_true, probs, classes)
    fig = _new_figure(6.4, 5.6)
    ax = fig.add_subplot()
    drawn: list[tuple[str, np.ndarray, np.ndarray]] = []
    for i, (name, (positives, score)) in enumerate(zip(classes, problems, strict=True)):
        if positives.all() or not positives.any():
            ax.plot([], [], linestyle="none", label=f"{name}: no PR curve (class absent or the only class)")
            continue
        precision, recall, _ = precision_recall_curve(positives, score)
        ap = float(average_precision_score(positives, score))
        (line,) = ax.step(recall, precision, where="post", label=f"{name} (AP {ap:.3f}{_same_as(drawn, recall, precision)})",
                          **curve_style(i))
        drawn.append((name, recall, precision))
        ax.axhline(float(positives.mean()), color=line.get_color(), linestyle=":", linewidth=1)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("Recall (sensitivity)")
    ax.set_ylabel("Precision (positive predictive value)")
    ax.set_title(f"Precision-recall curves, one class vs rest (n={n})\ndotted: prevalence (chance)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=9)
    return _save(fig, path, formats=formats)


def reliability_diagram(
    y_true: Sequence[int], probs: Any, path: str | Path, bins: int = 15, *,
    formats: Sequence[str] = FIGURE_FORMATS,
) -> Path:
    """Top-label reliability diagram: accuracy vs mean confidence per bin, sample histogram below."""
    table = calibration_bins(y_true, probs, bins)
    ece = expected_calibration_error(y_true, probs, bins)
    edges = np.asarray(table["edges"])
    width = edges[1] - edges[0]
    centers = edges[:-1] + width / 2
    count = np.asarray(table["count"])
    filled = count > 0
    acc = np.array([a for a in table["accuracy"] if a is not None])
    conf = np.array([c for c in table["confidence"] if c is not None])

    fig = _new_figure(6.0, 6.4)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="Perfect calibration")
    top.bar(centers[filled], acc, width=width * 0.9, color=TRAIN_COLOR, alpha=0.85, edgecolor="black",
            linewidth=0.5, label="Accuracy in bin")
    top.vlines(centers[filled], np.minimum(acc, conf), np.maximum(acc, conf), color="#d62728", linewidth=1)
    top.plot(centers[filled], conf, linestyle="none", marker="_", markersize=14, markeredgewidth=2.5,
             color="#d62728", label="Mean confidence in bin")
    top.set_ylim(0, 1.02)
    top.set_ylabel("Accuracy")
    fig.suptitle(f"Reliability diagram (top label)\nECE = {ece:.3f}, {bins} equal-width bins, n={int(count.sum())}")
    fig.legend(loc="outside lower center", ncol=3, fontsize=9, frameon=False)
    top.grid(alpha=0.3)
    bottom.bar(centers, count / count.sum(), width=width * 0.9, color="grey", edgecolor="black", linewidth=0.5)
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("Confidence (top predicted probability)")
    bottom.set_ylabel("Share of samples")
    bottom.grid(alpha=0.3)
    return _save(fig, path, formats=formats)


def reliability_comparison(
    y_true: Sequence[int],
    probs_before: Any,
    probs_after: Any,
    path: str | Path,
    bins: int = 15,
    temperature: float | None = None,
    *,
    formats: Sequence[str] = FIGURE_FORMATS,
) -> Path:
    """Reliability before and after calibration on one figure: accuracy vs mean confidence per bin
    for both (ECE in the legend, T when given), the share of samples per bin below."""
    fig = _new_figure(6.0, 6.4)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="Perfect calibration")
    after_label = "After calibration" + (f" (T = {temperature:.3g})" if temperature is not None else "")
    if np.allclose(np.asarray(probs_before, dtype=np.float64), np.asarray(probs_after, dtype=np.float64)):
        after_label += ": the same as before"  # T = 1: drawn dashed over "before", which stays visible
    styles = ({"marker": "s", "markersize": 7, "linewidth": 3.0, "linestyle": "-"},
              {"marker": "o", "markersize": 4, "linewidth": 1.5, "linestyle": "--"})
    for (probs, label, color), style in zip(((probs_before, "Before calibration", "#d62728"),
                                             (probs_after, after_label, TRAIN_COLOR)), styles, strict=True):
        table = calibration_bins(y_true, probs, bins)
        ece = expected_calibration_error(y_true, probs, bins)
        filled = [i for i, n in enumerate(table["count"]) if n]
        conf = [table["confidence"][i] for i in filled]
        acc = [table["accuracy"][i] for i in filled]
        top.plot(conf, acc, color=color, label=f"{label}, ECE {ece:.3f}", **style)
        edges = np.asarray(table["edges"])
        count = np.asarray(table["count"], dtype=np.float64)
        bottom.stairs(count / count.sum(), edges, color=color, linewidth=style["linewidth"], linestyle=style["linestyle"])
    top.set_xlim(0, 1)
    top.set_ylim(0, 1.02)
    top.set_ylabel("Accuracy")
    top.grid(alpha=0.3)
    top.legend(loc="upper left", fontsize=9)
    top.set_title(f"Reliability before and after calibration (top label)\n{bins} equal-width bins, n={len(y_true)}")
    bottom.set_xlabel("Confidence (top predicted probability)")
    bottom.set_ylabel("Share of samples")
    bottom.grid(alpha=0.3)
    return _save(fig, path, formats=formats)


def classification_report_figure(
    report_text: str, path: str | Path, *, formats: Sequence[str] = FIGURE_FORMATS
) -> Path:
    """Render sklearn's classification_report text as an image (the seed's classification_report.png)."""
    lines = report_text.rstrip("\n").splitlines() or ["(empty report)"]
    width_chars = max(len(line) for line in lines)
    # Sized generously from the text, then cropped to the drawn content by bbox_inches="tight".
    fig = _new_figure(max(4.0, 0.1 * width_chars + 0.5), 0.22 * len(lines) + 0.8)
    fig.text(0.02, 0.98, "Classification report (test split)", fontsize=12, fontweight="bold", va="top")
    fig.text(0.02, 0.9, "\n".join(lines), family="monospace", fontsize=10, va="top", ha="left")
    return _save(fig, path, tight=True, formats=formats)
