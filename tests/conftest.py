"""Shared fixtures. Tests are cheap: tiny images made in the test or by the synthetic generator."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cxr4-dev"


@pytest.fixture(scope="session", autouse=True)
def isolated_feature_cache(tmp_path_factory):
    """Feature caches of the tests go to a temporary folder, never to the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CXR_CACHE_DIR", str(tmp_path_factory.mktemp("feature-cache")))
        yield


@pytest.fixture(autouse=True)
def cxr_logger():
    """The `cxr` logger as it was before the test: `cxr.cli.main` points it at the test's captured
    stderr, which is closed afterwards."""
    logger = logging.getLogger("cxr")
    state = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = state


@pytest.fixture
def shared_data() -> Path:
    """The real cxr4-dev folder beside the checkout; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data/cxr4-dev is not present")
    return SHARED_DATA


@pytest.fixture
def one_thread(monkeypatch):
    """One intra-op thread (OMP_NUM_THREADS=1), torch's thread count restored after: the CI box has
    2 shared cores, and training tests oversubscribe them otherwise. Use with `pytest.mark.usefixtures`."""
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def calibrated_model():
    """Factory: `build_model` with random init whose BatchNorm statistics are calibrated on random
    batches, so a tiny untrained model still gives non-uniform outputs. Leaves torch's RNG untouched."""
    import torch

    from cxr.models.build import build_model

    def make(model_cfg, num_classes: int, size: int):
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = build_model(model_cfg, num_classes=num_classes)
            for module in model.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.momentum = None  # cumulative average over the calibration batches
            model.train()
            with torch.no_grad():
                for _ in range(3):
                    model(torch.randn(8, 3, size, size))
        return model.eval()

    return make



def lung_ellipses(shape: tuple[int, int]):
    """Both lungs as two upright ellipses in the middle rows of an image of `shape` (bool)."""
    import numpy as np

    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.zeros((h, w), dtype=bool)
    for cx in (0.3 * w, 0.7 * w):
        out |= ((xx - cx) / (0.16 * w)) ** 2 + ((yy - 0.5 * h) / (0.3 * h)) ** 2 <= 1.0
    return out


class FakeSegmenter:
    """A stand-in for the built-in lung segmenter: two ellipses where the lungs of a frontal X-ray are,
    `ok`; a flat image (a blank page) gets an empty mask flagged `suspect`. Instant; `calls` counts
    the images it segmented."""

    ellipses = staticmethod(lung_ellipses)

    def __init__(self, digest: str = "f" * 64) -> None:
        self.digest = digest
        self.calls = 0

    def segment(self, images):
        import numpy as np

        from cxr.lungs.qc import LungQC
        from cxr.lungs.segmenter import LungResult

        out = []
        for image in images:
            self.calls += 1
            if int(np.ptp(image)) < 8:  # flat: not an X-ray
                qc = LungQC(0.0, 0, 0.0, 0.0, "suspect", "lung area 0.0% < 6%")
                out.append(LungResult(np.zeros(image.shape, dtype=bool), qc))
            else:
                mask = lung_ellipses(image.shape)
                out.append(LungResult(mask, LungQC(float(mask.mean()), 2, 1.0, 0.95, "ok", "")))
        return out


@pytest.fixture(scope="session", autouse=True)
def instant_lungs():
    """The built-in lung segmenter (`data.lungs: auto`, the default) replaced by an instant
    `FakeSegmenter` in every test, module fixtures included; `real_lungs` brings the real one back."""
    import cxr.lungs.auto

    fake = FakeSegmenter()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cxr.lungs.auto, "default_segmenter", lambda engine="auto": fake)
        yield fake


@pytest.fixture
def fake_lungs(monkeypatch, tmp_path):
    """A fresh `FakeSegmenter` as the built-in one, with an empty mask cache (in tmp_path): its
    `calls` count what was segmented in this test."""
    import cxr.lungs.auto

    fake = FakeSegmenter()
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path / "cxr-cache"))
    monkeypatch.setattr(cxr.lungs.auto, "default_segmenter", lambda engine="auto": fake)
    return fake


@pytest.fixture
def real_lungs(monkeypatch):
    """The packaged lung segmenter itself (PyTorch engine: no export to wait for), for the tests that
    must use it; returns it."""
    import cxr.lungs.auto
    from cxr.lungs.segmenter import LungSegmenter

    segmenter = LungSegmenter.default(engine="torch")
    monkeypatch.setattr(cxr.lungs.auto, "default_segmenter", lambda engine="auto": segmenter)
    return segmenter


@pytest.fixture(scope="session")
def calibrated_backbone():
    """Factory: `(path, size, batches)` -> `path`, a random Lite0 backbone whose BatchNorm statistics are
    calibrated on `batches` noise batches, saved as a state dict: frozen, it gives informative features
    (an uncalibrated random one gives nearly constant ones). Leaves torch's RNG untouched."""
    import torch

    from cxr.config import ModelConfig
    from cxr.models.build import build_model

    def make(path: Path, size: int, batches: int) -> Path:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = build_model(ModelConfig(backbone="efficientnet_lite0", weights="random", freeze="none"), 2)
            for module in model.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.momentum = None  # cumulative average over the calibration batches
            model.train()
            with torch.no_grad():
                for _ in range(batches):
                    model.backbone.forward_features(torch.randn(16, 3, size, size))
        torch.save(model.backbone.state_dict(), path)
        return path

    return make
