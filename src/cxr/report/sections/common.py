"""What several sections share: the figure names and captions, figure blocks, the class order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cxr.report.blocks import Block, Code, Image, Para, joined
from cxr.report.format import NOT_AVAILABLE, fmt, fmt_ci
from cxr.report.runfiles import RunFiles

FIGURE_CAPTIONS = {
    "bar_chart": "Images per class (all splits)",
    "pie_chart": "Class shares (all splits)",
    "dataset_images": "Sample images per class",
    "loss": "Training and validation loss per epoch",
    "accuracy": "Training and validation accuracy per epoch",
    "precision": "Training and validation precision (Keras semantics) per epoch",
    "recall": "Training and validation recall (Keras semantics) per epoch",
    "confusion_matrix": "Confusion matrix on the test split, normalised by predicted label (the seed's)",
    "confusion_matrix_by_true": "Confusion matrix on the test split, normalised by true label (diagonal: sensitivity)",
    "roc": "ROC curves on the test split, one class vs rest",
    "reliability": "Reliability diagram on the test split (top-label calibration, calibrated probabilities)",
    "reliability_calibrated": "Reliability on the test split before and after temperature scaling",
    "pr_curves": "Precision-recall curves on the test split, one class vs rest (dotted: prevalence)",
    "classification_report": "Classification report on the test split",
}
DATASET_FIGURES = ("bar_chart", "pie_chart", "dataset_images")
TRAINING_FIGURES = ("loss", "accuracy", "precision", "recall")
TEST_FIGURES = ("confusion_matrix", "confusion_matrix_by_true", "roc", "reliability")
CALIBRATION_FIGURES = ("reliability_calibrated",)
OPERATING_FIGURES = ("pr_curves",)
TEXT_FIGURES = ("classification_report",)  # the same content is in the report as text: not shown twice
SHOWN_FIGURES = (*DATASET_FIGURES, *TRAINING_FIGURES, *TEST_FIGURES, *CALIBRATION_FIGURES, *OPERATING_FIGURES,
                 *TEXT_FIGURES)


def figures(files: RunFiles, stems: Sequence[str]) -> list[Block]:
    """One image block per figure present, then one note naming those that are not."""
    blocks: list[Block] = []
    missing = []
    for stem in stems:
        path = files.figures.get(stem)
        if path is None:
            missing.append(f"{stem}.png")
        else:
            blocks.append(Image(path, files.rel(path), FIGURE_CAPTIONS.get(stem, stem)))
    if missing:
        blocks.append(Para(("Figures not available: ", *joined(Code(m) for m in missing), "."), missing=True))
    return blocks


def with_ci(metrics: dict[str, Any], key: str, ci_key: str | None = None) -> str:
    """'0.912 (0.850 – 0.950)', the value alone without an interval, or 'n/a'. The interval is
    metrics[ci_key], or metrics["ci"][key] without `ci_key`."""
    value = metrics.get(key)
    if value is None:
        return NOT_AVAILABLE
    ci = metrics.get(ci_key) if ci_key else (metrics.get("ci") or {}).get(key)
    return f"{fmt(value)} ({fmt_ci(ci)})" if ci else fmt(value)


def class_order(files: RunFiles) -> list[str]:
    """The classes of metrics.json in order, then any other class of the split counts, sorted."""
    known = [str(c) for c in (files.metrics or {}).get("classes") or []]
    counted = {label for per_class in (files.split_counts or {}).values() for label in per_class}
    return known + sorted(counted - set(known))


def test_metrics(files: RunFiles) -> dict | None:
    """metrics.json["test"] when it is a mapping, else None."""
    test = (files.metrics or {}).get("test")
    return test if isinstance(test, dict) else None


def synthetic_run(files: RunFiles) -> bool:
    """Whether the run says its data are synthetic (metrics.json "data", or the provenance record)."""
    for record in ((files.metrics or {}).get("data"), (files.provenance or {}).get("data")):
        if isinstance(record, dict) and record.get("synthetic") is True:
            return True
    return False
