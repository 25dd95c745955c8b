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
