"""The report sections of a study you can trust: the first screen (data source, synthetic data, an
untrained backbone), calibration, operating points, error gallery, provenance and the history table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from cxr.metrics import classification_metrics
from cxr.report.blocks import Banner, Gallery, Table
from cxr.report.document import write_report
from cxr.report.runfiles import read_run
from cxr.report.sections import build_blocks
from cxr.report.sections.training import overfitting
from cxr.rundir import write_history_csv, write_json

CLASSES = ["COVID", "Lung_Opacity", "Normal"]


def _png(path: Path, text: dict[str, str] | None = None) -> None:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((12, 12), 90, dtype=np.uint8)).save(path, pnginfo=info)


def _run(tmp_path: Path, *, weights: str = "lite0-imagenet", synthetic: bool = False) -> Path:
    run = tmp_path / "run"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({
        "name": "t", "data": {"root": "/data/x"},
        "model": {"backbone": "resnet50", "weights": weights, "freeze": "base"}, "train": {"finetune_epochs": 0},
    }))
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    probs = rng.dirichlet(np.ones(3), 60)
    test = classification_metrics(y, probs, CLASSES, n_boot=20)
    write_json(run / "metrics.json", {"test": test, "classes": CLASSES, "best_epoch": 2,
                                      "data": {"root": "/data/x", "images": 300, "synthetic": synthetic}})
    return run


def _banners(run: Path) -> list[Banner]:
    return [b for b in build_blocks(read_run(run))[1] if isinstance(b, Banner)]


def test_first_screen_names_the_data_and_warns_about_synthetic_data(tmp_path: Path) -> None:
    run = _run(tmp_path)
    md = write_report(run)[0].read_text()
    first = md.split("## Run summary")[0]
    assert "**Data:** `/data/x` (300 images)" in first and not _banners(run)
    assert "0.928" in md  # real data: compared with the seed's published numbers
    synthetic = _run(tmp_path / "s", synthetic=True)
    md = write_report(synthetic)[0].read_text()
    first = md.split("## Run summary")[0]
    assert "Synthetic data, no medical meaning" in first and "300 images" in first
    assert "0.928" not in md and "Seed (published)" not in md and "No comparison with the seed" in md


def test_random_weights_with_a_frozen_base_get_a_danger_banner_on_the_first_screen(tmp_path: Path) -> None:
    run = _run(tmp_path, weights="random")
    (banner,) = _banners(run)
    assert banner.level == "danger"
    blocks = build_blocks(read_run(run))[1]
    assert blocks.index(banner) <= 2  # right below the title and the data line
    md = write_report(run)[0].read_text()
    assert "frozen, untrained backbone: not transfer learning" in md.split("## Run summary")[0].lower()


def test_calibration_and_operating_points_sections(tmp_path: Path) -> None:
    run = _run(tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["test"]["calibration"] = {
        "temperature": 1.7, "bins": 15, "how": "fitted on the 30 validation images",
        "before": {"ece": 0.21, "ece_ci": [0.15, 0.27], "nll": 0.9},
        "after": {"ece": 0.06, "ece_ci": [0.03, 0.1], "nll": 0.7},
    }
    rule = {"sensitivity": 0.8, "sensitivity_ci": [0.6, 0.9], "specificity": 0.9, "specificity_ci": [0.8, 0.95],
            "tp": 8, "fn": 2, "tn": 45, "fp": 5}
    metrics["test"]["operating_points"] = {"per_class": {c: {
        "threshold": 0.4, "argmax": {**rule, "threshold": None}, "threshold_rule": {**rule, "threshold": 0.4},
        "average_precision": 0.7, "prevalence": 0.3} for c in CLASSES}}
    write_json(run / "metrics.json", metrics)
    md = write_report(run)[0].read_text()
    calibration = md.split("## Calibration")[1].split("## Operating points")[0]
    assert "T = 1.700" in calibration and "| Before calibration (T = 1) | 0.210 | 0.150 – 0.270 | 0.9000 |" in calibration
    assert "lowered the test ECE (0.210 -\\> 0.060)" in calibration
    operating = md.split("## Operating points")[1].split("## Error analysis")[0]
    assert "| COVID | argmax | - | 0.800 \\[0.600 – 0.900\\] | 0.900 \\[0.800 – 0.950\\] | 8/2/45/5 |" in operating
    assert "| COVID | P \\>= threshold (Youden, val) | 0.400 |" in operating
    assert "Average precision" in operating and "`pr_curves.png`" in operating  # the missing figure is named


def test_error_gallery_section(tmp_path: Path) -> None:
    run = _run(tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    items = [{"path": f"COVID/{i}.png", "true": "COVID", "predicted": "Normal", "probability": 0.9 - i / 10,
              "true_probability": 0.05, "figure": f"figures/errors/COVID_as_Normal_{i + 1}.png"} for i in range(2)]
    metrics["errors"] = {"per_pair": 3, "mistakes": 5, "n": 60, "items": items}
    write_json(run / "metrics.json", metrics)
    for item in items:
        _png(run / item["figure"])
    blocks = build_blocks(read_run(run))[1]
    (gallery,) = [b for b in blocks if isinstance(b, Gallery) and "errors" in b.images[0].rel]
    assert [i.caption for i in gallery.images] == ["COVID predicted as Normal (0.900)", "COVID predicted as Normal (0.800)"]
    md, page = (p.read_text() for p in write_report(run))
    assert "2 shown of 5 mistakes in 60 images" in md and 'src="figures/errors/COVID_as_Normal_1.png"' in md
    assert "<figcaption>COVID predicted as Normal (0.900)</figcaption>" in page


def test_provenance_block_lists_versions_commit_data_and_every_attempt(tmp_path: Path) -> None:
    run = _run(tmp_path)
    attempt = {"started": "2026-01-01T10:00:00+00:00", "versions": {"cxr": "0.1.0", "torch": "2.14.1",
               "torchvision": "0.29.1", "python": "3.11.7"}, "git": {"commit": "a" * 40, "dirty": True},
               "host": "box", "platform": "Linux", "device": "CPU", "command": ["cxr", "run"], "seconds": 65.0}
    resumed = {**attempt, "started": "2026-01-01T11:00:00+00:00", "git": {"commit": "b" * 40, "dirty": False},
               "command": ["cxr", "run", "--resume"], "seconds": 30.0}
    write_json(run / "provenance.json", {"attempts": [attempt, resumed],
                                         "data": {"root": "/data/x", "images": 300, "split_sha256": "c" * 64}})
    md = write_report(run)[0].read_text()
    block = md.split("## Provenance")[1]
    for text in ("| torch | 2.14.1 |", "| torchvision | 0.29.1 |", "| python | 3.11.7 |", "bbbbbbbbbbbb (clean)",
                 "c" * 64, "Attempts: 2", "aaaaaaaaaaaa (uncommitted changes)", "cxr run --resume", "1 min 05 s"):
        assert text in block, text


def test_history_table_is_formatted_and_overfitting_is_said(tmp_path: Path) -> None:
    run = _run(tmp_path)
    rows = [{"epoch": e, "lr": 1e-4, "train_loss": 1.0 / e, "val_loss": v, "seconds": 2.0, "phase": 1 if e < 3 else 2}
            for e, v in ((1, 0.9), (2, 0.5), (3, 0.62), (4, 0.7))]
    write_history_csv(rows, run / "history.csv")
    blocks = build_blocks(read_run(run))[1]
    (table,) = [b for b in blocks if isinstance(b, Table) and b.header[:2] == ("epoch", "lr")]
    assert table.rows[0][:2] == ("1", "1.00e-04") and table.rows[3][-1] == "2"  # phase as an integer
    md, page = (p.read_text() for p in write_report(run))
    assert "validation loss rose after the best epoch 2 (0.5000) by 0.2000 (to 0.7000 at epoch 4, the last)" in md
    rows[3]["val_loss"] = 0.55  # the peak before the end
    write_history_csv(rows, run / "history.csv")
    md = write_report(run)[0].read_text()
    assert "by up to 0.1200 (to 0.6200 at epoch 3; at the last epoch, 4, 0.0500 above it)" in md
    assert '<div class="table-wrap"><table><thead><tr><th>epoch</th>' in page  # scrolls instead of overflowing
    history = [{"epoch": 1.0, "val_loss": 0.9}, {"epoch": 2.0, "val_loss": 0.5}]
    assert "did not rise" in " ".join(str(p) for p in overfitting(history, 1).parts)
    assert overfitting(history, 2) is None


def test_augmented_samples_are_labelled_with_their_class(tmp_path: Path) -> None:
    run = _run(tmp_path)
    _png(run / "aug_images" / "aug_0_1.png", {"cxr:label": "Lung_Opacity"})
    _png(run / "aug_images" / "aug_1_2.png")  # an older run's file without a label: its name is shown
    md, page = (p.read_text() for p in write_report(run))
    assert "<br/>Lung_Opacity</td>" in md and "<figcaption>Lung_Opacity</figcaption>" in page
    assert "<figcaption>aug_1_2</figcaption>" in page


@pytest.mark.parametrize("stem", ["loss", "roc"])
def test_markdown_links_the_svg_beside_a_figure(tmp_path: Path, stem: str) -> None:
    run = _run(tmp_path)
    _png(run / "figures" / f"{stem}.png")
    (run / "figures" / f"{stem}.svg").write_text("<svg/>")
    md = write_report(run)[0].read_text()
    assert f"([SVG](figures/{stem}.svg))" in md
