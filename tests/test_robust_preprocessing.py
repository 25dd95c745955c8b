"""The robust recipe's levers: intensity standardisation carried by the checkpoint's preprocessing
record (and applied by Predictor without being told), and the scanner-imitating augmentations
(deterministic given their generator, shape and dtype kept, the seed's draws untouched)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr.checkpoint import load_checkpoint, save_checkpoint
from cxr.config import SCANNER_OPS, AugmentConfig, ModelConfig, RunConfig, load_config
from cxr.data.synthetic import CLASSES, make_image
from cxr.errors import CxrError
from cxr.intensity import standardize
from cxr.predict import Predictor
from cxr.scanner_augment import ScannerAugment, parse_ops, scanner_generator
from cxr.study.inputs import build_classifier
from cxr.transforms import Preprocessing, SeedAugment, resize_gray, to_input

SIZE = 64
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _xray(seed: int = 0, size: int = 96) -> np.ndarray:
    img = make_image("COVID", np.random.default_rng(seed), size=size)
    return np.clip(img.astype(np.float32) * 0.5 + 40, 0, 255).astype(np.uint8)  # low contrast, lifted


def test_standardisation_spreads_the_histogram_and_keeps_uint8():
    img = _xray()
    for method in ("equalize", "clahe"):
        out = standardize(img, method)
        assert out.dtype == np.uint8 and out.shape == img.shape
        assert np.ptp(out) > np.ptp(img)  # the squeezed range is stretched
    assert np.array_equal(standardize(img, "none"), img)
    flat = np.full((8, 8), 7, np.uint8)
    assert np.array_equal(standardize(flat, "clahe"), flat)
    with pytest.raises(CxrError, match="allowed: none, equalize, clahe"):
        standardize(img, "gamma")


def test_the_record_stores_intensity_only_when_used():
    assert "intensity" not in Preprocessing("half", 64).to_dict()  # old records read and write unchanged
    record = Preprocessing("half", 64, intensity="clahe")
    assert record.to_dict() == {"mode": "half", "size": 64, "intensity": "clahe"}
    assert Preprocessing.from_dict(record.to_dict()) == record and "clahe" in record.describe()
    with pytest.raises(CxrError, match="unknown preprocessing intensity"):
        Preprocessing("half", 64, intensity="bogus")
    img = _xray(1, SIZE)
    assert torch.equal(to_input(img, record), to_input(standardize(img, "clahe"), Preprocessing("half", 64)))


def test_a_clahe_checkpoint_makes_predictor_apply_it(tmp_path, calibrated_model):
    cfg = RunConfig(name="clahe", model=ModelConfig(backbone="efficientnet_lite0", weights="random", head=(8,)))
    cfg.data.image_size, cfg.data.intensity = SIZE, "clahe"
    pre = build_classifier(cfg, len(CLASSES), load_weights=False).preprocessing
    assert pre.intensity == "clahe" and pre.size == SIZE
    model = calibrated_model(cfg.model, len(CLASSES), SIZE)
    path = save_checkpoint(tmp_path / "c.pt", model=model, config=cfg, classes=list(CLASSES), preprocessing=pre,
                           epoch=1)
    assert load_checkpoint(path)["preprocessing"]["intensity"] == "clahe"
    predictor = Predictor.from_checkpoint(path, device="cpu", precision="fp32")
    img = _xray(2)
    expected = to_input(standardize(resize_gray(img, SIZE), "clahe"), dataclasses.replace(pre, intensity="none"))
    assert torch.allclose(predictor.preprocess(img), expected)
    plain = to_input(resize_gray(img, SIZE), dataclasses.replace(pre, intensity="none"))
    assert not torch.allclose(predictor.preprocess(img), plain)


@pytest.mark.parametrize("op", SCANNER_OPS)
def test_each_scanner_augmentation_is_deterministic_given_its_generator(op):
    img = _xray(3, SIZE).astype(np.float32)
    augment = ScannerAugment(op, p=1.0)
    a = augment(img, np.random.default_rng([5, 0, 1]))
    b = augment(img, np.random.default_rng([5, 0, 1]))
    c = augment(img, np.random.default_rng([5, 0, 2]))
    assert a.dtype == np.float32 and a.shape == img.shape and 0 <= a.min() and a.max() <= 255
    assert np.array_equal(a, b) and not np.array_equal(a, img)
    assert not np.array_equal(a, c)  # another draw, another image
    assert np.array_equal(ScannerAugment(op, p=0.0)(img, np.random.default_rng(0)), img)


def test_scanner_augmentations_leave_the_seed_draws_unchanged():
    img = _xray(4, SIZE)
    seed_only = SeedAugment(AugmentConfig())
    both = SeedAugment(AugmentConfig(scanner="all", scanner_p=1.0))
    rng_a, rng_b = np.random.default_rng([1, 2, 3]), np.random.default_rng([1, 2, 3])
    plain = seed_only(img, rng_a)
    changed = both(img, rng_b)
    assert rng_a.random() == rng_b.random()  # the scanner draws came from a generator of their own
    assert not np.array_equal(plain, changed)
    scanner = ScannerAugment("all", 1.0)
    assert np.array_equal(changed, scanner(plain, scanner_generator(np.random.default_rng([1, 2, 3]))))
    assert np.array_equal(both(img, np.random.default_rng([1, 2, 3])), changed)


def test_scanner_specs_are_checked():
    assert parse_ops("jpeg,gamma") == ("gamma", "jpeg") and parse_ops("none") == () and parse_ops("all") == SCANNER_OPS
    with pytest.raises(CxrError, match="augment.scanner"):
        load_config(overrides={"augment.scanner": "gamma,fisheye"})
    with pytest.raises(CxrError, match="data.intensity"):
        load_config(overrides={"data.intensity": "retinex"})


def test_the_robust_recipe_loads():
    cfg = load_config(CONFIGS / "robust.yaml")
    assert cfg.data.intensity == "equalize" and cfg.train.finetune_epochs > 0


def test_the_levers_keep_old_feature_cache_keys_and_run_on_the_cpu(tmp_path):
    from PIL import Image

    from cxr.rundir import SplitRow
    from cxr.runtime import Compute
    from cxr.study.inputs import with_device_augment
    from cxr.training.features_store import cache_key

    Image.fromarray(_xray(5, 16)).save(tmp_path / "a.png")
    model = torch.nn.Linear(1, 1)
    model.preprocessing = Preprocessing("half", 64)
    rows = [SplitRow("a.png", "COVID", "train", "")]
    cfg = RunConfig()
    base = cache_key(model, tmp_path, rows, list(CLASSES), cfg, 1, "fp32")
    cfg.augment.scanner_p = 0.9  # no scanner op: the key (and so every old cache entry) stays
    assert cache_key(model, tmp_path, rows, list(CLASSES), cfg, 1, "fp32") == base
    cfg.augment.scanner = "jpeg"
    assert cache_key(model, tmp_path, rows, list(CLASSES), cfg, 1, "fp32") != base
    cfg.data.decoded_cache = "on"  # the device pipeline has no per-image CPU work: refused for the levers
    compute = Compute.resolve("cpu", "fp32")
    assert with_device_augment(cfg, Preprocessing("half", 64), compute) is compute
    cfg.augment.scanner = "none"
    assert with_device_augment(cfg, Preprocessing("half", 64, intensity="equalize"), compute) is compute
