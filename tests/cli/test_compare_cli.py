"""`cxr compare`: registered on a parser, it prints the differences with intervals and p-values."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from cxr.cli import compare
from cxr.errors import CxrError

CLASSES = ["COVID", "Normal"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cxr")
    compare.register(p.add_subparsers(dest="command"))
    return p


def write_run(root: Path, correct: np.ndarray, seed: int) -> Path:
    """A run folder whose predictions.csv is right exactly where `correct` is True."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    with (root / "predictions.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "pred", *(f"prob_{c}" for c in CLASSES)])
        for i, ok in enumerate(correct):
            label = i % 2
            top = 0.5 + 0.5 * rng.random()
            p_label = top if ok else 1 - top
            probs = [p_label, 1 - p_label] if label == 0 else [1 - p_label, p_label]
            writer.writerow([f"img{i}.png", CLASSES[label], CLASSES[int(np.argmax(probs))], *probs])
    return root


def test_compare_prints_differences(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rng = np.random.default_rng(0)
    a = write_run(tmp_path / "a", rng.random(80) < 0.9, seed=1)
    b = write_run(tmp_path / "b", rng.random(80) < 0.6, seed=2)
    args = parser().parse_args(["compare", str(a), str(b), "--bootstrap", "100"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "80 images, 2 classes" in out
    for label in ("accuracy", "macro-F1", "ROC-AUC (macro)"):
        assert any(line.startswith(label) and " to " in line for line in out.splitlines()), label
    assert "McNemar exact" in out and "paired bootstrap" in out

    args = parser().parse_args(["compare", str(a), str(b / "predictions.csv"), "--bootstrap", "100", "--json"])
    args.func(args)
    result = json.loads(capsys.readouterr().out)
    assert result["accuracy"]["difference"] > 0 and result["bootstrap"]["n"] == 100


def test_compare_refuses_runs_on_different_images(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", np.ones(10, bool), seed=1)
    b = write_run(tmp_path / "b", np.ones(12, bool), seed=2)
    args = parser().parse_args(["compare", str(a), str(b)])
    with pytest.raises(CxrError, match="do not hold the same images"):
        args.func(args)
