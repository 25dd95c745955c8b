"""cxr.report.result_figures: every figure is written as a real, non-blank PNG (and an SVG); bad input is refused."""

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
    pr_curves_figure,
    reliability_comparison,
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


# --- figures of the trust issue: PR curves, calibration before/after, by-true confusion, SVG --------


def test_every_figure_is_also_written_as_svg(tmp_path: Path, predictions: tuple) -> None:
    y, probs = predictions
    m = classification_metrics(y, probs, CLASSES, n_boot=0)
    paths = [
        *training_curves(history_rows(), tmp_path),
        confusion_matrix_figure(m["confusion"], CLASSES, tmp_path / "cm.png"),
        roc_curves(y, probs, CLASSES, tmp_path / "roc.png"),
        pr_curves_figure(y, probs, CLASSES, tmp_path / "pr.png"),
        reliability_diagram(y, probs, tmp_path / "rel.png"),
        reliability_comparison(y, probs, probs, tmp_path / "rel2.png"),
        classification_report_figure(m["classification_report"], tmp_path / "report.png"),
    ]
    for path in paths:
        assert path.suffix == ".png"
        svg = path.with_suffix(".svg").read_text()
        assert svg.lstrip().startswith("<?xml") and "<svg" in svg and len(svg) > 2000
    only_png = roc_curves(y, probs, CLASSES, tmp_path / "png_only" / "roc.png", formats=("png",))
    assert [p.name for p in only_png.parent.iterdir()] == ["roc.png"]
    with pytest.raises(CxrError, match="formats"):
        roc_curves(y, probs, CLASSES, tmp_path / "x.png", formats=("jpeg",))


def test_pr_curves_figure_with_absent_class(tmp_path: Path, predictions: tuple) -> None:
    y, probs = predictions
    assert_png(pr_curves_figure(y, probs, CLASSES, tmp_path / "pr.png"))
    assert_png(pr_curves_figure(np.where(y == 3, 0, y), probs, CLASSES, tmp_path / "pr_missing.png"))
    with pytest.raises(CxrError, match="shape"):
        pr_curves_figure(y, probs[:, :3], CLASSES, tmp_path / "bad.png")


def test_reliability_before_and_after_calibration(tmp_path: Path, predictions: tuple) -> None:
    y, probs = predictions
    sharp = probs**3 / (probs**3).sum(axis=1, keepdims=True)  # over-confident version
    path = reliability_comparison(y, sharp, probs, tmp_path / "calibration.png", bins=10, temperature=3.0)
    assert_png(path)


def test_training_curves_mark_the_best_epoch(tmp_path: Path) -> None:
    plain = training_curves(history_rows(), tmp_path / "plain", formats=("png",))
    marked = training_curves(history_rows(), tmp_path / "marked", best_epoch=3, formats=("png",))
    for a, b in zip(plain, marked, strict=True):
        assert_png(b)
        with Image.open(a) as im_a, Image.open(b) as im_b:
            diff = np.abs(np.asarray(im_a.convert("RGB"), int) - np.asarray(im_b.convert("RGB"), int))
        assert diff.sum() > 0  # the vertical line and its legend entry were drawn
    svg = training_curves(history_rows(), tmp_path / "svg", best_epoch=3)[0].with_suffix(".svg").read_text()
    assert "Best epoch (3)" in svg  # matplotlib keeps each text as a comment beside its glyph paths


def test_confusion_by_true_label_rows(tmp_path: Path, predictions: tuple) -> None:
    y, probs = predictions
    m = classification_metrics(y, probs, CLASSES, n_boot=0)
    assert_png(confusion_matrix_figure(m["confusion"], CLASSES, tmp_path / "cm_true.png", normalize="true"))
    np.testing.assert_allclose(np.sum(m["confusion_by_true"], axis=1), 1.0)
