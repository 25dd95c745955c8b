"""The GPU input pipeline, on the CPU: decoded uint8 images once, the seed's augmentation for whole
batches on the device, and the same images (and the same training) as the per-image CPU path."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr import study
from cxr.config import AugmentConfig, RunConfig
from cxr.data import image_cache
from cxr.data.dataset import SplitDataset
from cxr.data.image_cache import DecodedImages, build_image_cache
from cxr.data.synthetic import generate_dataset
from cxr.device_augment import IDENTITY, DeviceAugment, pack_params
from cxr.errors import CxrError
from cxr.io import read_image
from cxr.rundir import SplitRow
from cxr.transforms import Preprocessing, SeedAugment, resize_gray, to_input

SIZE = 40
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("gpu-input") / "data", n_per_class=6, size=48, seed=1)


@pytest.fixture(scope="module")
def rows(data) -> list[SplitRow]:
    return [SplitRow(p.relative_to(data).as_posix(), p.parent.name, "train", p.name)
            for p in sorted(data.glob("*/*.png"))]


def test_batched_device_augmentation_equals_the_per_image_seed_augmentation():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, SIZE, SIZE), dtype=np.uint8)
    augment = SeedAugment(AugmentConfig(rotation=20, zoom=(0.8, 1.2)))
    pre = Preprocessing("imagenet", size=SIZE)
    draws = [augment.sample_params(np.random.default_rng([3, i]), (SIZE, SIZE)) for i in range(len(images))]
    expected = torch.stack([to_input(augment.apply(img, p), pre) for img, p in zip(images, draws, strict=True)])
    batch = {"image": torch.from_numpy(images), "params": torch.stack([pack_params(p) for p in draws])}
    got = DeviceAugment(pre)(batch)
    assert got.shape == (6, 3, SIZE, SIZE)
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-4)
    assert any(p["flip"] for p in draws) and any(not p["flip"] for p in draws)


def test_unaugmented_batches_are_only_normalised_and_tensors_pass_through():
    images = np.random.default_rng(1).integers(0, 256, (2, SIZE, SIZE), dtype=np.uint8)
    pre = Preprocessing("half", size=SIZE)
    batch = {"image": torch.from_numpy(images), "params": torch.tensor([IDENTITY, IDENTITY])}
    got = DeviceAugment(pre, channels_last=True)(batch)
    torch.testing.assert_close(got, torch.stack([to_input(img, pre) for img in images]))
    assert got.is_contiguous(memory_format=torch.channels_last)
    features = torch.randn(2, 8, 1, 1)
    assert DeviceAugment(pre)(features) is features


def test_fill_modes_the_device_cannot_do_are_refused_by_name():
    with pytest.raises(CxrError, match="fill_mode 'reflect' cannot run on the device.*nearest, constant"):
        DeviceAugment(Preprocessing(), "reflect")


def test_decoded_images_give_the_cpu_datasets_images_and_draws(data, rows, tmp_path):
    images = build_image_cache(data, rows, SIZE, tmp_path / "cache", progress=False)
    assert images.shape == (len(rows), SIZE, SIZE) and images.dtype == np.uint8
    augment = SeedAugment(AugmentConfig())
    decoded = DecodedImages(images, np.zeros(len(rows)), augment, seed=7)
    cpu = SplitDataset(data, rows, sorted({r.label for r in rows}), Preprocessing(size=SIZE), augment, seed=7)
    for epoch in (0, 3):
        decoded.set_epoch(epoch)
        cpu.set_epoch(epoch)
        for i in (0, 5):
            item, _ = decoded[i]
            assert np.array_equal(item["image"].numpy(), resize_gray(read_image(data / rows[i].path), SIZE))
            expected = augment.sample_params(np.random.default_rng([7, epoch, i]), (SIZE, SIZE))
            assert item["params"].tolist() == pytest.approx(pack_params(expected).tolist())
            got = DeviceAugment(Preprocessing(size=SIZE))({k: v[None] for k, v in item.items()})[0]
            torch.testing.assert_close(got, cpu[i][0], rtol=0, atol=2e-4)


def test_a_second_build_decodes_nothing(data, rows, tmp_path, monkeypatch, caplog):
    first = build_image_cache(data, rows, SIZE, tmp_path, progress=False)
    monkeypatch.setattr(image_cache, "read_image", lambda path: pytest.fail(f"decoded {path} again"))
    caplog.set_level(logging.INFO, logger="cxr")
    second = build_image_cache(data, rows, SIZE, tmp_path, progress=False)
    assert np.array_equal(first, second) and "image cache hit" in caplog.text
    assert not [p for p in (tmp_path / "images").iterdir() if p.name.startswith(".tmp")]


def _config(decoded: str) -> RunConfig:
    cfg = RunConfig(name=f"decoded-{decoded}")
    cfg.data.image_size = 32
    cfg.data.num_workers = 0
    cfg.data.decoded_cache = decoded
    cfg.model.backbone = "efficientnet_lite0"
    cfg.model.weights = "random"
    cfg.model.head = (8,)
    cfg.train.epochs = 2
    cfg.train.batch_size = 8
    cfg.train.feature_cache = False
    cfg.train.channels_last = False
    cfg.eval.bootstrap = 10
    cfg.eval.aug_samples = 1
    cfg.eval.grid_per_class = 1
    return cfg


def _history(run: Path) -> list[dict[str, str]]:
    with open(run / "history.csv", newline="") as fh:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(fh)]


@pytest.mark.slow
def test_a_study_on_the_decoded_cache_trains_like_the_per_image_path(data, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="cxr")
    on = study.run_study(_config("on"), data, tmp_path / "on", cache_dir=tmp_path / "cache", progress=False)
    assert "decoded image cache and augmentation on cpu" in caplog.text
    off = study.run_study(_config("off"), data, tmp_path / "off", progress=False)
    a, b = _history(on.run_dir), _history(off.run_dir)
    assert [r["epoch"] for r in a] == ["1", "2"]
    for row_a, row_b in zip(a, b, strict=True):
        for key in row_a:
            assert float(row_a[key]) == pytest.approx(float(row_b[key]), abs=2e-4), key
    assert on.test["accuracy"] == pytest.approx(off.test["accuracy"])
