"""The report of an evaluation folder (`cxr evaluate --checkpoint ... --out DIR`): what was evaluated and
the sections it has data for, the synthetic-model banner, and no log of missing run files."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from cxr.report.document import write_report

CLASSES = ["COVID", "Normal"]


def _external_entry() -> dict:
    metrics = {"n": 4, "classes_present": CLASSES, "accuracy": 0.5, "ci": {}}
    return {"data": "/data/hospB", "layout": "class-folders", "n": 4, "classes_present": CLASSES,
            "metrics": metrics, "label_map": {}}


def _folder(root: Path, **metrics) -> Path:
    root.mkdir(parents=True)
    doc = {"checkpoint": "runs/demo/checkpoints/best.pt", "classes": CLASSES,
           "external": {"sets": {"hospB": _external_entry()}}, **metrics}
    (root / "metrics.json").write_text(json.dumps(doc))
    return root


def test_an_evaluation_folder_gets_its_own_report(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = _folder(tmp_path / "D2", synthetic_model=True)
    with caplog.at_level(logging.INFO, logger="cxr"):
        md, _ = write_report(out)
    assert "missing from the run directory" not in caplog.text  # no config.yaml, split.csv, ... to miss
    text = md.read_text()
    first_screen = text.split("## Evaluated checkpoint")[0]
    assert "Model trained on synthetic data, no medical meaning" in first_screen
    assert "`runs/demo/checkpoints/best.pt` (classes COVID, Normal)" in text
    assert "| External: hospB | 4 | COVID, Normal |" in text
    for absent in ("## Run summary", "## Dataset", "## Test results", "## Training", "not available"):
        assert absent not in text, absent


def test_a_real_model_has_no_banner_and_a_run_keeps_the_full_report(tmp_path: Path) -> None:
    md, _ = write_report(_folder(tmp_path / "D3", synthetic_model=False))
    assert "synthetic" not in md.read_text().lower()
    run = _folder(tmp_path / "run")
    (run / "config.yaml").write_text("name: run\n")  # a training run: every section, as before
    md, _ = write_report(run)
    assert "## Run summary" in md.read_text() and "## Evaluated checkpoint" not in md.read_text()
