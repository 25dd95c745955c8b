"""A multi-label study end to end on a tiny NIH-style manifest: sigmoid outputs, masked BCE, an
iterative stratified split, per-finding metrics with intervals, thresholds stored with best.pt."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr import study
from cxr.checkpoint import load_checkpoint
from cxr.config import RunConfig

FINDINGS = ("Effusion", "Mass")
pytestmark = pytest.mark.usefixtures("one_thread")


def blob_manifest(folder: Path, n: int = 96, size: int = 48, seed: int = 0) -> Path:
    """Images with a bright blob on the left for Effusion, on the right for Mass (either, both, none)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    yy, xx = np.mgrid[0:size, 0:size]
    rows = []
    for i in range(n):
        present = [f for f in FINDINGS if rng.random() < 0.45]
        img = rng.normal(80, 12, (size, size))
        for name, cx in (("Effusion", size * 0.28), ("Mass", size * 0.72)):
            if name in present:
                img += 120 * np.exp(-(((xx - cx) ** 2 + (yy - size / 2) ** 2) / (2 * (size * 0.1) ** 2)))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
        rows.append((f"{i:03d}.png", "|".join(present) or "No Finding", f"p{i // 2}"))
    manifest = folder.parent / f"{folder.name}.csv"
    with manifest.open("w", newline="") as fh:
        csv.writer(fh).writerows([("path", "label", "group"), *rows])
    return manifest


@pytest.mark.slow
def test_a_multilabel_study_end_to_end(tmp_path, calibrated_backbone):
    manifest = blob_manifest(tmp_path / "images", n=240)
    cfg = RunConfig(name="ml")
    cfg.data.image_size = 48
    cfg.data.num_workers = 0
    cfg.model.backbone = "efficientnet_lite0"
    cfg.model.weights = f"file:{calibrated_backbone(tmp_path / 'backbone.pt', 48, batches=4)}"
    cfg.model.head = (32,)
    cfg.train.epochs = 40
    cfg.train.lr = 1e-2
    cfg.train.batch_size = 16
    cfg.train.feature_views = 1
    cfg.eval.bootstrap = 100
    cfg.eval.aug_samples = 1
    cfg.eval.grid_per_class = 1
    result = study.run_study(cfg, manifest, tmp_path / "run", cache_dir=tmp_path / "cache", progress=False)
    test = result.test
    assert test["task"] == "multilabel" and test["findings"] == list(FINDINGS)
    for name in FINDINGS:
        entry = test["per_label"][name]
        assert entry["auroc"] > 0.8, (name, entry["auroc"])
        lo, hi = entry["auroc_ci"]
        assert lo <= entry["auroc"] <= hi
    saved = json.loads((result.run_dir / "metrics.json").read_text())
    assert saved["split_counts"]["test"]["Effusion"] > 0 and "No Finding" in saved["split_counts"]["test"]
    assert (result.run_dir / "config.yaml").read_text().count("task: multilabel") == 1
    best = load_checkpoint(result.checkpoint)
    assert len(best["extra"]["thresholds"]) == 2 and best["config"]["data"]["task"] == "multilabel"
    with open(result.run_dir / "predictions.csv", newline="") as fh:
        preds = list(csv.DictReader(fh))
    assert set(preds[0]) == {"path", "true_label", "predicted_label", "prob_Effusion", "prob_Mass"}
    assert (result.run_dir / "figures" / "roc.png").is_file() and (result.run_dir / "report.html").is_file()
