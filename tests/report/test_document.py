"""cxr.report.document: report.md + self-contained report.html from a (possibly partial) run directory."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from cxr.errors import CxrError
from cxr.metrics import classification_metrics, epoch_metrics
from cxr.report.document import write_report
from cxr.report.markdown import md_escape

CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral_Pneumonia"]
HISTORY_COLUMNS = [
    "epoch", "lr", "train_loss", "train_accuracy", "train_precision", "train_recall", "train_macro_f1",
    "val_loss", "val_accuracy", "val_precision", "val_recall", "val_macro_f1", "seconds",
]


def write_png(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (24, 24), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def make_run(run: Path, name: str = "tiny") -> dict:
    """A complete fake run directory; returns the test metrics written to metrics.json."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 80)
    logits = rng.normal(size=(80, 4))
    logits[np.arange(80), y] += 2.5
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    test = classification_metrics(y, probs, CLASSES, n_boot=100)
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps(
        {"test": test, "classes": CLASSES, "best_epoch": 2, "wall_seconds": 75.0}
    ))
    (run / "config.yaml").write_text(yaml.safe_dump({
        "name": name,
        "data": {"root": "/data/cxr4-dev", "ratios": [0.7, 0.1, 0.2], "split_seed": 123},
        "model": {"backbone": "efficientnet_lite0", "weights": "lite0-imagenet", "freeze": "base"},
        "train": {"epochs": 2, "batch_size": 32, "lr": 1e-4, "optimizer": "adam", "seed": 123},
    }))
    with open(run / "history.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, HISTORY_COLUMNS)
        writer.writeheader()
        for epoch in (1, 2):
            row = {"epoch": epoch, "lr": 1e-4, "seconds": 3.5}
            for split in ("train", "val"):
                row |= {f"{split}_{k}": v for k, v in epoch_metrics(y, probs ** (1 / epoch)).items()}
            writer.writerow(row)
    with open(run / "split.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "split", "group"])
        for i in range(40):  # COVID: 7 train / 2 val / 1 test per 10 rows, the rest Normal
            label = "COVID" if i < 10 else "Normal"
            split = "train" if i % 10 < 7 else ("val" if i % 10 < 9 else "test")
            writer.writerow([f"{label}/{i}.png", label, split, str(i)])
    for stem in ("loss", "accuracy", "precision", "recall", "confusion_matrix", "roc", "bar_chart", "extra_plot"):
        write_png(run / "figures" / f"{stem}.png")
    for i in range(3):
        write_png(run / "aug_images" / f"aug_{i}.png", seed=i)
    return test


def test_full_report(tmp_path: Path) -> None:
    run = tmp_path / "run"
    test = make_run(run)
    md_path, html_path = write_report(run)
    assert (md_path, html_path) == (run / "report.md", run / "report.html")
    md, page = md_path.read_text(), html_path.read_text()

    for text in (md, page):
        assert f"{test['accuracy']:.3f}" in text
        assert f"{test['macro_f1']:.3f}" in text
        assert f"{test['ci']['accuracy'][0]:.3f} – {test['ci']['accuracy'][1]:.3f}" in text
        assert f"{test['ece']:.3f}" in text
        assert "0.928" in text and "0.933" in text and "0.926" in text and "0.207" in text  # the seed
        assert "efficientnet_lite0" in text
        assert "1 min 15 s" in text  # wall time
        assert "not a medical device" in text.lower()
        assert "precision    recall  f1-score   support" in text  # sklearn's report text

    # Dataset table: COVID 7/2/1, Normal 21/6/3, and the totals.
    assert "| COVID | 7 | 2 | 1 | 10 |" in md
    assert "| Normal | 21 | 6 | 3 | 30 |" in md
    assert "| Total | 28 | 8 | 4 | 40 |" in md
    # Markdown links figures relatively; HTML embeds every one of them.
    assert "](figures/loss.png)" in md and 'src="aug_images/aug_0.png"' in md
    assert "extra_plot" in md  # unknown figures are still shown
    assert page.count("data:image/png;base64,") == 8 + 3
    assert not re.search(r'(src|href)="(?!data:)', page)  # no external assets
    assert "Figures not available" in md  # reliability.png, classification_report.png, ...
    # The training history table holds both epochs.
    assert re.search(r"^\| 1 \| 1\.00e-04 \|", md, re.M) and re.search(r"^\| 2 \| 1\.00e-04 \|", md, re.M)


def test_html_escapes_text(tmp_path: Path) -> None:
    run = tmp_path / "run"
    make_run(run, name="<script>alert('x')</script> & co")
    _, html_path = write_report(run)
    page = html_path.read_text()
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; co" in page


def test_empty_run_dir_still_writes_a_report(tmp_path: Path) -> None:
    md_path, html_path = write_report(tmp_path)
    md, page = md_path.read_text(), html_path.read_text()
    for missing in ("config.yaml is missing", "metrics.json is missing", "history.csv is missing",
                    "split.csv is missing", "aug_images/ holds no PNG files"):
        assert missing in md
        assert missing in page
    assert "data:image" not in page
    assert f"# cxr report: {tmp_path.name}" in md


def test_partial_and_broken_files(tmp_path: Path) -> None:
    run = tmp_path / "run"
    make_run(run)
    (run / "metrics.json").write_text("{not json")
    (run / "history.csv").unlink()
    (run / "split.csv").write_text("path,label\nx.png,COVID\n")
    (run / "figures" / "roc.png").write_bytes(b"not a png")
    md, page = (p.read_text() for p in write_report(run))
    assert "metrics.json is not valid" in md
    assert "history.csv is missing" in md
    assert "expected label and split" in md
    assert "figures/roc.png: not available" in page  # corrupt figure is named, not embedded
    assert "efficientnet_lite0" in md  # config still used


def test_split_counts_fall_back_to_metrics(tmp_path: Path) -> None:
    run = tmp_path / "run"
    make_run(run)
    (run / "split.csv").unlink()
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["split_counts"] = {"train": {"COVID": 5, "Normal": 6}, "val": {"COVID": 1}, "test": {"Normal": 2}}
    (run / "metrics.json").write_text(json.dumps(metrics))
    md = write_report(run)[0].read_text()
    assert "| COVID | 5 | 1 | 0 | 6 |" in md
    assert "| Normal | 6 | 0 | 2 | 8 |" in md


def test_missing_run_dir_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(CxrError, match="run directory not found"):
        write_report(tmp_path / "nope")


@pytest.mark.parametrize(
    ("text", "escaped"),
    [("a|b", "a\\|b"), ("Lung_Opacity", "Lung_Opacity"), ("_x_", "\\_x\\_"), ("<b>*", "\\<b\\>\\*")],
)
def test_md_escape(text: str, escaped: str) -> None:
    assert md_escape(text) == escaped
