"""Grad-CAM: it finds a planted class-specific pattern; overlays; `cxr explain`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cxr.checkpoint import save_checkpoint
from cxr.cli import main
from cxr.config import ModelConfig, RunConfig
from cxr.data.synthetic import CLASSES, make_image
from cxr.explain import explain, grad_cam, overlay
from cxr.predict import Predictor
from cxr.transforms import Preprocessing

BLOB_SIDE = 32
BLOB_SIGMA = 1.5
BLOB_RADIUS = 4  # pixels around the blob centre counted as "inside"


class TinyCNN(nn.Module):
    """Three convolutions (feature map at half resolution) and a GAP + linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        )
        self.fc = nn.Linear(16, 2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.fc(feats.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def blob_batch(n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Noise images; label 1 adds a bright blob at a random position. Returns (x, y, centres)."""
    yy, xx = np.mgrid[0:BLOB_SIDE, 0:BLOB_SIDE]
    images = rng.normal(0.0, 0.3, (n, BLOB_SIDE, BLOB_SIDE))
    labels = rng.integers(0, 2, n)
    centres = rng.integers(5, BLOB_SIDE - 5, (n, 2))
    for i in np.flatnonzero(labels):
        cy, cx = centres[i]
        images[i] += 2.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * BLOB_SIGMA**2))
    x = torch.from_numpy(images[:, None].astype(np.float32))
    return x, torch.from_numpy(labels), centres


@pytest.fixture(scope="module")
def blob_model() -> TinyCNN:
    """Trained for 80 Adam steps (a few seconds). One thread: these ops are too small to share, and
    OpenMP threads on a busy machine make it 5-10x slower."""
    rng = np.random.default_rng(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = TinyCNN()
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(80):
            x, y, _ = blob_batch(32, rng)
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


@pytest.mark.slow
def test_grad_cam_is_high_on_the_planted_blob(blob_model: TinyCNN) -> None:
    rng = np.random.default_rng(1)
    x, y, centres = blob_batch(64, rng)
    with torch.no_grad():
        accuracy = float((blob_model(x).argmax(1) == y).float().mean())
    assert accuracy > 0.9, f"the tiny model did not learn the blob (accuracy {accuracy:.2f})"
    yy, xx = np.mgrid[0:BLOB_SIDE, 0:BLOB_SIDE]
    ratios, argmax_inside = [], []
    for i in np.flatnonzero(y.numpy() == 1):
        cam, index, probs = grad_cam(blob_model, x[i], class_index=1)
        assert index == 1 and cam.shape == (BLOB_SIDE, BLOB_SIDE)
        assert probs.sum() == pytest.approx(1.0)
        assert 0.0 <= cam.min() and cam.max() == pytest.approx(1.0)
        cy, cx = centres[i]
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= BLOB_RADIUS**2
        ratios.append(cam[inside].mean() / max(cam[~inside].mean(), 1e-6))
        py, px = np.unravel_index(np.argmax(cam), cam.shape)
        argmax_inside.append(bool(inside[py, px]))
    ratios = np.array(ratios)
    assert np.mean(ratios > 2.0) >= 0.8, f"CAM inside/outside ratios: {np.round(ratios, 2)}"
    assert np.mean(argmax_inside) >= 0.8


def test_grad_cam_default_class_is_the_prediction(blob_model: TinyCNN) -> None:
    x, _, _ = blob_batch(1, np.random.default_rng(2))
    _, index, probs = grad_cam(blob_model, x)
    assert index == int(np.argmax(probs))


def test_overlay_blends_colormap() -> None:
    gray = np.full((40, 30), 100, dtype=np.uint8)
    cam = np.zeros((10, 10), dtype=np.float32)
    cam[:, 5:] = 1.0  # hot on the right half
    rgb = overlay(gray, cam)
    assert rgb.shape == (40, 30, 3) and rgb.dtype == np.uint8
    assert rgb[20, 28, 0] > rgb[20, 1, 0] + 50  # red where hot
    assert rgb[20, 1, 2] > rgb[20, 28, 2] + 50  # blue where cold
    np.testing.assert_array_equal(overlay(gray, cam, alpha=0.0), np.repeat(gray[..., None], 3, axis=2))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, calibrated_model) -> Path:
    cfg = RunConfig(name="tiny", model=ModelConfig(backbone="efficientnet_lite0", weights="random", head=(32,), freeze="none"))
    model = calibrated_model(cfg.model, len(CLASSES), 64)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", model=model, config=cfg,
                           classes=list(CLASSES), preprocessing=Preprocessing(mode="half", size=64), epoch=1)


def test_explain_with_a_checkpoint_model(checkpoint: Path) -> None:
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu", precision="fp32")
    image = make_image("COVID", np.random.default_rng(0), size=120)
    result = explain(predictor, image, "Normal")
    assert result.class_name == "Normal" and result.class_index == CLASSES.index("Normal")
    assert result.cam.shape == (64, 64)
    assert result.overlay().shape == (120, 120, 3)
    assert result.overlay(max_side=60).shape == (60, 60, 3)
    plain = predictor.predict([image])[0]
    np.testing.assert_allclose(list(result.prediction.probabilities.values()),
                               list(plain.probabilities.values()), atol=1e-5)


def test_cli_explain_writes_png_and_rejects_bad_class(checkpoint: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "x.png"
    Image.fromarray(make_image("Normal", np.random.default_rng(1), size=100)).save(image)
    out = tmp_path / "heat.png"
    assert main(["explain", str(checkpoint), str(image), "--out", str(out), "--class", "COVID"]) == 0
    with Image.open(out) as im:
        assert im.mode == "RGB" and im.size == (100, 100)
    assert "heatmap for COVID" in capsys.readouterr().out
    assert main(["explain", str(checkpoint), str(image), "--out", str(out), "--class", "Cat"]) == 2
    err = capsys.readouterr().err
    assert "'Cat'" in err and all(c in err for c in CLASSES)
