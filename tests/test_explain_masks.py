"""Grad-CAM against lung masks: the batched Grad-CAM, energy shares, outlines, and the shortcut audit
end to end with a hand-built model whose evidence lies where the test puts it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from cxr.config import ModelConfig
from cxr.explain import grad_cam
from cxr.explain_masks import (
    OUTLINE_RGB,
    area_fraction,
    cam_share,
    grad_cam_batch,
    outline,
    overlay_with_outline,
)
from cxr.rundir import SplitRow
from cxr.runtime import Compute
from cxr.study.shortcut import AuditSettings, select_rows, shortcut_audit
from cxr.transforms import Preprocessing

SIZE = 64
LUNGS = "box:16 16 48 48"  # a quarter of the image, in its middle


class Brightness(nn.Module):
    """Class B when the image holds a bright patch anywhere, else A: the evidence is the patch."""

    def __init__(self) -> None:
        super().__init__()
        self.preprocessing = Preprocessing("half", SIZE)
        self.head = nn.Linear(1, 2)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[0.0], [50.0]]))
            self.head.bias.copy_(torch.tensor([0.0, -1.0]))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(F.avg_pool2d(x[:, :1], 8) - 0.5)  # (N, 1, 8, 8): where it is bright

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(feats.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _set(root: Path, patch_at: tuple[int, int], n: int = 6) -> list[SplitRow]:
    rows = []
    for i in range(n):
        for label in ("Normal", "B"):  # Normal: the masked-region test's control
            img = np.full((SIZE, SIZE), 30 + i, np.uint8)
            if label == "B":
                top, left = patch_at
                img[top : top + 16, left : left + 16] = 255
            path = root / label / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(path)
            rows.append(SplitRow(f"{label}/{i}.png", label, "test", f"{label}{i}", LUNGS))
    return rows


def _audit(tmp_path: Path, patch_at: tuple[int, int]) -> dict:
    rows = _set(tmp_path / "data", patch_at)
    settings = AuditSettings(max_images=100, gallery=2, n_boot=200, batch_size=5)
    return shortcut_audit(Brightness().eval(), tmp_path / "data", rows, ["Normal", "B"], Compute(torch.device("cpu")),
                          settings, name="test", fig_dir=tmp_path / "figures")


def test_a_corner_marker_is_flagged_by_both_signals(tmp_path):
    audit = _audit(tmp_path, (0, 0))  # the patch in a corner, outside the lungs
    attention, occlusion = audit["attention"], audit["occlusion"]
    assert audit["images"] == 12 and attention["n"] == 6 and attention["undefined"] == 6  # Normal images: no energy
    assert attention["mean_share"] < 0.05 and attention["mean_area"] == pytest.approx(0.25)
    assert attention["flag"] is True
    assert occlusion["none"]["accuracy"] == 1.0 and occlusion["lungs"]["accuracy"] == 1.0
    assert occlusion["outside"]["accuracy"] == 0.5 and occlusion["flag"] is True
    assert audit["verdict"] == {**audit["verdict"], "flagged": True, "attention_flag": True, "occlusion_flag": True}
    assert [g["figure"] for g in audit["gallery"]] == ["figures/shortcut_test_00.png", "figures/shortcut_test_01.png"]
    picture = np.asarray(Image.open(tmp_path / audit["gallery"][0]["figure"]))
    assert (picture.reshape(-1, 3) == OUTLINE_RGB).all(axis=1).sum() > 50  # the lung outline is drawn


def test_evidence_inside_the_lungs_is_not_flagged(tmp_path):
    audit = _audit(tmp_path, (24, 24))  # the patch inside the lungs
    assert audit["attention"]["mean_share"] > 0.9 and audit["attention"]["flag"] is False
    assert audit["occlusion"]["lungs"]["accuracy"] == 0.5 and audit["occlusion"]["flag"] is False
    assert audit["occlusion"]["outside"]["accuracy"] == 1.0
    assert audit["verdict"]["flagged"] is False


def test_rows_without_a_region_are_left_out_and_the_selection_is_even_per_class(tmp_path):
    rows = [SplitRow(f"{c}/{i}.png", c, "test", "g", LUNGS if i % 2 else None) for c in "AB" for i in range(8)]
    chosen = select_rows(rows, 5)
    assert len(chosen) == 5 and all(r.mask for r in chosen)
    assert sorted(r.label for r in chosen).count("A") in (2, 3)
    assert shortcut_audit(Brightness(), tmp_path, [r for r in rows if not r.mask], ["A", "B"],
                          Compute(torch.device("cpu")), AuditSettings()) is None


def test_batched_grad_cam_equals_grad_cam_image_by_image(calibrated_model):
    model = calibrated_model(ModelConfig(backbone="efficientnet_lite0", weights="random", head=(16,)), 3, SIZE)
    x = torch.randn(3, 3, SIZE, SIZE)
    cams, chosen, probs = grad_cam_batch(model, x)
    for i in range(3):
        cam, index, p = grad_cam(model, x[i])
        peak = float(cams[i].max())
        np.testing.assert_allclose(cams[i].numpy() / peak if peak > 0 else cams[i].numpy(), cam, atol=1e-4)
        assert int(chosen[i]) == index
        np.testing.assert_allclose(probs[i].numpy(), p, atol=1e-5)
    other, chosen2, _ = grad_cam_batch(model, x, torch.tensor([0, 1, 2]))
    assert chosen2.tolist() == [0, 1, 2] and other.shape == (3, SIZE, SIZE)


def test_shares_areas_and_outlines():
    cam = np.zeros((10, 10))
    cam[0, 0], cam[5, 5] = 3.0, 1.0
    mask = np.zeros((10, 10), bool)
    mask[4:8, 4:8] = True
    assert cam_share(cam, mask)[0] == pytest.approx(0.25)
    assert area_fraction(mask)[0] == pytest.approx(0.16)
    assert np.isnan(cam_share(np.zeros((10, 10)), mask)[0])  # no energy
    assert np.isnan(cam_share(cam, np.zeros((10, 10), bool))[0])  # empty mask
    edge = outline(mask)
    assert edge[4, 4] and not edge[0, 9]
    rgb = overlay_with_outline(np.zeros((20, 20), np.uint8), cam, mask)  # the mask is resized to the image
    assert rgb.shape == (20, 20, 3) and (rgb.reshape(-1, 3) == OUTLINE_RGB).all(axis=1).any()
