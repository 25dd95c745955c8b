"""cxr.report.result_figures: every figure is written as a real, non-blank PNG; bad input is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr.errors import CxrError
from cxr.metrics import classification_metrics
from cxr.report.result_figures import (
    classification_report_figure,
    confusion_matrix_figure,
    reliability_diagram,
    roc_curves,
    training_curves,
)

CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral_Pneumonia"]


def assert_png(path: Path, min_side: int = 300) -> None:
    """A decodable PNG of reasonable size that is not one flat colour."""
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert min(im.size) >= min_side, im.size
        pixels = np.asarray(im.convert("L"))
    assert pixels.std() > 5, f"{path.name} looks blank"


@pytest.fixture
def predictions() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    logits = rng.normal(size=(200, 4))
    logits[np.arange(200), y] += 2.0
    probs = np.exp(logits)
    return y, probs / probs.sum(axis=1, keepdims=True)


def history_rows(epochs: int = 4, as_text: bool = False) -> list[dict]:
    rows = []
    for e in range(1, epochs + 1):
        row = {"epoch": e}
        for split, offset in (("train", 0.0), ("val", 0.05)):
            row |= {
                f"{split}_loss": 1.0 / e + offset,
                f"{split}_accuracy": 1 - 0.5 / e - offset,
                f"{split}_precision": 1 - 0.4 / e - offset,
                f"{split}_recall": 1 - 0.6 / e - offset,
            }
        rows.append({k: str(v) for k, v in row.items()} if as_text else row)
    return rows


@pytest.mark.parametrize("as_text", [False, True])  # dicts of floats, or csv.DictReader strings
def test_training_curves_writes_four_pngs(tmp_path: Path, as_text: bool) -> None:
    paths = training_curves(history_rows(as_text=as_text), tmp_path / "figures")
    assert [p.name for p in paths] == ["loss.png", "accuracy.png", "precision.png", "recall.png"]
    for path in paths:
        assert_png(path)


def test_training_curves_without_val_columns(tmp_path: Path) -> None:
    rows = [{k: v for k, v in r.items() if not k.startswith("val_")} for r in history_rows()]
    rows = [{k: v for k, v in r.items() if k != "train_recall"} for r in rows]
    paths = training_curves(rows, tmp_path)
    assert [p.name for p in paths] == ["loss.png", "accuracy.png", "precision.png"]


def test_training_curves_refuses_empty_history(tmp_path: Path) -> None:
    with pytest.raises(CxrError, match="empty history"):
        training_curves([], tmp_path)


@pytest.mark.parametrize("normalize", ["pred", "true", "all", None])
def test_confusion_matrix_figure(tmp_path: Path, predictions: tuple, normalize: str | None) -> None:
    y, probs = predictions
    confusion = classification_metrics(y, probs, CLASSES, n_boot=0)["confusion"]
    path = confusion_matrix_figure(confusion, CLASSES, tmp_path / "cm.png", normalize=normalize)
    assert_png(path)


def test_confusion_matrix_figure_checks_input(tmp_path: Path) -> None:
    with pytest.raises(CxrError, match="normalize"):
        confusion_matrix_figure([[1, 0], [0, 1]], ["a", "b"], tmp_path / "x.png", normalize="rows")
    with pytest.raises(CxrError, match="2x2"):
        confusion_matrix_figure([[1, 0, 0]], ["a", "b"], tmp_path / "x.png")


def test_roc_curves_with_absent_class(tmp_path: Path, predictions: tuple) -> None:
    y, probs = predictions
    assert_png(roc_curves(y, probs, CLASSES, tmp_path / "roc.png"))
    y_missing = np.where(y == 3, 0, y)
    assert_png(roc_curves(y_missing, probs, CLASSES, tmp_path / "roc_missing.png"))
    with pytest.raises(CxrError, match="shape"):
        roc_curves(y, probs[:, :3], CLASSES, tmp_path / "bad.png")


def test_reliability_diagram(tmp_path: Path, predictions: tuple) -> None:
    y, probs = predictions
    assert_png(reliability_diagram(y, probs, tmp_path / "nested" / "reliability.png", bins=10))


def test_classification_report_figure(tmp_path: Path, predictions: tuple) -> None:
    y, probs = predictions
    report = classification_metrics(y, probs, CLASSES, n_boot=0)["classification_report"]
    assert_png(classification_report_figure(report, tmp_path / "report.png"), min_side=200)
