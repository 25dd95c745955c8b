"""Fixtures of the lung segmenter's tests: one tiny untrained model file and tiny synthetic pairs."""

from __future__ import annotations

from pathlib import Path

import pytest

LUNGSEG = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "lungseg"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 64 px Lite0 U-Net with random weights (BatchNorm statistics as initialised), saved as a file."""
    import torch

    from cxr.lungs.model import LungModelSpec, build_model
    from cxr.lungs.store import save_model

    spec = LungModelSpec(size=64)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model(spec).eval()
    return save_model(model, spec, tmp_path_factory.mktemp("lungs") / "tiny.safetensors", dtype="fp32")


@pytest.fixture(scope="session")
def synthetic_pairs(tmp_path_factory) -> Path:
    """8 synthetic X-rays with lung masks in Kaggle's v4 layout (<Class>/images, <Class>/masks), 64 px."""
    from cxr.data.synthetic import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("lungpairs") / "data", n_per_class=4, size=64, seed=0,
                            masks=True, classes=("Normal", "COVID"))


@pytest.fixture
def lungseg() -> Path:
    """The real lungseg folder beside the checkout; skips the test when it is absent."""
    if not (LUNGSEG / "images").is_dir():
        pytest.skip("../shared/data/lungseg is not present")
    return LUNGSEG
