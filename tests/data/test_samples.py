"""Augmented sample images, like the seed's aug_images/ folder."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr.config import AugmentConfig
from cxr.data.discover import Sample
from cxr.data.samples import pick_indices, write_augmented_samples
from cxr.errors import CxrError

SIZE = 32


@pytest.fixture
def samples(tmp_path: Path) -> list[Sample]:
    root = tmp_path / "data"
    (root / "x").mkdir(parents=True)
    out = []
    for i in range(5):
        img = np.full((40, 48), 20 + 40 * i, dtype=np.uint8)
        img[10:20, 10:30] = 250
        Image.fromarray(img).save(root / "x" / f"{i}.png")
        out.append(Sample(path=f"x/{i}.png", label="x"))
    return out


def test_writes_n_augmented_pngs_named_like_keras(tmp_path: Path, samples: list[Sample]) -> None:
    paths = write_augmented_samples(tmp_path / "data", samples, 3, tmp_path / "aug", AugmentConfig(), size=SIZE)
    assert len(paths) == 3 and len(set(paths)) == 3
    assert sorted(paths) == sorted((tmp_path / "aug").iterdir())
    for path in paths:
        match = re.fullmatch(r"aug_(\d+)_(\d+)\.png", path.name)
        assert match and int(match[1]) < len(samples)
        with Image.open(path) as im:
            assert im.mode == "L" and im.size == (SIZE, SIZE)
    indices = [int(p.name.split("_")[1]) for p in paths]
    assert len(set(indices)) == 3  # distinct samples while there are enough


def test_output_is_deterministic_for_a_seed(tmp_path: Path, samples: list[Sample]) -> None:
    def run(name: str, seed: int) -> list[tuple[str, bytes]]:
        paths = write_augmented_samples(tmp_path / "data", samples, 4, tmp_path / name, AugmentConfig(), SIZE, seed)
        return [(p.name, p.read_bytes()) for p in paths]

    assert run("a", 0) == run("b", 0)
    assert run("a2", 0) != run("c", 1)


def test_images_are_augmented_not_copies(tmp_path: Path, samples: list[Sample]) -> None:
    paths = write_augmented_samples(tmp_path / "data", samples, 5, tmp_path / "aug", AugmentConfig(), SIZE)
    plain = write_augmented_samples(
        tmp_path / "data", samples, 5, tmp_path / "plain", AugmentConfig(enabled=False), SIZE
    )
    changed = [not np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b))) for a, b in zip(paths, plain, strict=True)]
    assert sum(changed) >= 4


def test_more_images_than_samples_repeats_samples(tmp_path: Path, samples: list[Sample]) -> None:
    paths = write_augmented_samples(tmp_path / "data", samples, 12, tmp_path / "aug", AugmentConfig(), SIZE)
    assert len(paths) == 12 and len(list((tmp_path / "aug").iterdir())) == 12
    picked = pick_indices(5, 12, np.random.default_rng(0))
    assert sorted(picked[:5]) == list(range(5)) and sorted(picked[5:10]) == list(range(5))


def test_zero_and_bad_counts(tmp_path: Path, samples: list[Sample]) -> None:
    assert write_augmented_samples(tmp_path / "data", samples, 0, tmp_path / "aug", AugmentConfig(), SIZE) == []
    with pytest.raises(CxrError, match="-1"):
        write_augmented_samples(tmp_path / "data", samples, -1, tmp_path / "aug", AugmentConfig(), SIZE)
    with pytest.raises(CxrError, match="no training samples"):
        write_augmented_samples(tmp_path / "data", [], 2, tmp_path / "aug", AugmentConfig(), SIZE)
