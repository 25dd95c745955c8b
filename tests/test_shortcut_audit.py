"""The shortcut audit on trained models: a class marker in a corner (outside the lungs) must be flagged,
the same marker inside the lungs must not.

The models are a frozen, randomly initialised ResNet-50 (BatchNorm statistics calibrated on synthetic
images, so its features are well scaled) with the seed's head trained on cached features: cheap on a
CPU, and enough to learn a marker. Grad-CAM of such a random backbone is not a faithful explanation
(its heatmaps keep the same layout whatever the image), so these tests assert the masked-region test
and the verdict; where Grad-CAM energy goes is tested with a hand-built model (test_explain_masks.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr import study
from cxr.config import RunConfig
from cxr.data.synthetic import CLASSES, generate_dataset, make_image
from cxr.models.backbones import create_backbone
from cxr.study.audits import add_evaluations
from cxr.transforms import Preprocessing, to_input

SIZE = 128  # a 4x4 feature map: corners and lungs fall in different cells
PAIR = ["COVID", "Normal"]

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def calibrated_weights(tmp_path_factory) -> Path:
    """A random ResNet-50 whose BatchNorm running statistics come from synthetic chest images."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        backbone = create_backbone("resnet50")
        for module in backbone.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = None  # a cumulative average over the calibration batches
        pre = Preprocessing("imagenet", SIZE)
        images = [make_image(CLASSES[i % 4], np.random.default_rng([99, i]), SIZE) for i in range(32)]
        backbone.train()
        with torch.no_grad():
            for chunk in torch.stack([to_input(img, pre) for img in images]).split(16):
                backbone.forward_features(chunk)
    path = tmp_path_factory.mktemp("weights") / "resnet50-calibrated.pt"
    torch.save(backbone.state_dict(), path)
    return path


def _config(weights: Path) -> RunConfig:
    cfg = RunConfig(name="shortcut")
    cfg.model.backbone, cfg.model.weights, cfg.model.freeze, cfg.model.head = "resnet50", f"file:{weights}", "base", (64,)
    cfg.data.image_size, cfg.data.num_workers = SIZE, 0
    cfg.train.epochs, cfg.train.batch_size, cfg.train.lr, cfg.train.precision = 25, 16, 1e-3, "fp32"
    cfg.train.feature_views = 1
    cfg.augment.enabled = False
    cfg.eval.bootstrap = 200
    return cfg


def _audit(tmp_path: Path, weights: Path, marker: str) -> dict:
    data = generate_dataset(tmp_path / marker, n_per_class=24, size=SIZE, seed=1, classes=PAIR, masks=True,
                            marker=marker)
    run = tmp_path / f"run-{marker}"
    study.train(_config(weights), data, run, progress=False)
    added = add_evaluations(run, occlude=("lungs", "outside"), device="cpu", progress=False)
    stored = json.loads((run / "metrics.json").read_text())
    assert stored["shortcut"] == json.loads(json.dumps(added["shortcut"]))
    assert "Shortcut audit" in (run / "report.md").read_text()
    return added["shortcut"]


def test_a_marker_outside_the_lungs_is_flagged(tmp_path, calibrated_weights):
    audit = _audit(tmp_path, calibrated_weights, "corner")
    occlusion = audit["occlusion"]
    assert occlusion["none"]["accuracy"] >= 0.9  # the marker is learned
    assert occlusion["lungs"]["accuracy"] >= occlusion["none"]["accuracy"] - 0.1  # and kept without the lungs
    assert occlusion["lungs"]["ci"][0] > occlusion["chance"]
    assert occlusion["outside"]["drop"] > 0.2  # removing the marker costs accuracy
    covid = occlusion["blanked"]["per_class"]["COVID"]  # still called COVID, unlike blanked Normal images
    assert covid["flag"] is True and covid["difference_ci"][0] > occlusion["blanked"]["margin"]
    assert occlusion["control"]["source"] == "this set's Normal images"
    assert audit["verdict"]["flagged"] is True and audit["verdict"]["occlusion_flag"] is True
    assert 0 < audit["attention"]["mean_area"] < 0.5 and 0 <= audit["attention"]["mean_share"] <= 1


def test_the_same_marker_inside_the_lungs_is_not_flagged(tmp_path, calibrated_weights):
    audit = _audit(tmp_path, calibrated_weights, "lungs")
    occlusion = audit["occlusion"]
    assert occlusion["none"]["accuracy"] >= 0.75
    assert occlusion["lungs"]["drop"] > 0.2  # without the lungs the evidence is gone
    assert occlusion["blanked"]["per_class"]["COVID"]["flag"] is False  # called COVID no more than blanked Normals
    assert audit["verdict"]["flagged"] is False
