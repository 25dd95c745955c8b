"""The prediction-sets section: coverage with its interval, sizes and singletons on the test split and each
external set, per-class coverage, every variant, and a foreign set's coverage drop called out as shift."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from cxr.metrics import classification_metrics
from cxr.metrics.conformal import calibrate_conformal
from cxr.metrics.conformal_report import conformal_entry
from cxr.report.document import write_report
from cxr.rundir import write_json

CLASSES = ["COVID", "Lung_Opacity", "Normal"]


def _probs(rng: np.random.Generator, y: np.ndarray, strength: float) -> np.ndarray:
    logits = rng.normal(size=(len(y), 3))
    logits[np.arange(len(y)), y] += strength
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def _run(tmp_path: Path, conformal: bool = True) -> Path:
    run = tmp_path / "run"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"name": "t", "data": {"root": "/data/x"}}))
    rng = np.random.default_rng(1)
    y_val, y_test = rng.integers(0, 3, 400), rng.integers(0, 3, 300)
    calibration = calibrate_conformal(_probs(rng, y_val, 2.0), y_val, CLASSES, method="aps")
    test_probs = _probs(rng, y_test, 2.0)
    test = classification_metrics(y_test, test_probs, CLASSES, n_boot=10)
    metrics = {"test": test, "classes": CLASSES}
    if conformal:
        test["conformal"] = conformal_entry(calibration, test_probs, y_test)
        y_ext = rng.integers(0, 2, 250)  # a foreign set the model knows far less well: coverage drops
        foreign = conformal_entry(calibration, _probs(rng, y_ext, -1.0), y_ext)
        metrics["external"] = {"sets": {"elsewhere": {"data": "/data/y", "metrics": {}, "conformal": foreign}}}
    write_json(run / "metrics.json", metrics)
    return run


def _section(md: str) -> str:
    return md.split("## Prediction sets (conformal)")[1].split("\n## ")[0]


def test_section_gives_coverage_sizes_per_class_and_variants(tmp_path: Path) -> None:
    md = write_report(_run(tmp_path))[0].read_text()
    section = _section(md)
    assert "APS (adaptive" in section and "calibrated on the 400 validation images" in section
    assert "| Internal test | 300 |" in section and "| elsewhere (external) | 250 |" in section
    assert "Mean set size" in section and "Singletons" in section and "Share of sets by size" in section
    assert "Internal test: the coverage interval reaches the nominal 0.90." in section
    assert "**elsewhere (external): coverage below the nominal 0.90.**" in section
    assert "sign of distribution shift" in section
    assert "| Viral_Pneumonia" not in section and "| Normal |" in section and "absent" in section  # not in the foreign set
    assert "lac+mondrian" in section and "raps" in section and "Worst class coverage" in section


def test_section_without_sets_says_why(tmp_path: Path) -> None:
    md = write_report(_run(tmp_path, conformal=False))[0].read_text()
    assert "Prediction sets: not available (metrics.json has no test prediction sets" in _section(md)
