"""The synthetic generator's lung masks (Kaggle v4 layout) and class markers (the shortcut and its control)."""

from __future__ import annotations

import numpy as np
import pytest

from cxr.data.discover import discover
from cxr.data.synthetic import CLASSES, SHORTCUT_CORNERS, generate_dataset, make_image, make_image_and_mask
from cxr.errors import CxrError

SIZE = 96


def test_the_mask_covers_the_dark_lung_fields():
    image, mask = make_image_and_mask("Normal", np.random.default_rng(0), SIZE)
    lungs = mask > 0
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}
    assert 0.15 < lungs.mean() < 0.4
    assert image[lungs].mean() < image[~lungs & (image > 60)].mean()  # lungs are darker than the body
    np.testing.assert_array_equal(image, make_image("Normal", np.random.default_rng(0), SIZE))


@pytest.mark.parametrize("k", range(len(CLASSES)))
def test_a_corner_marker_changes_only_its_corner_outside_the_lungs(k):
    label = CLASSES[k]
    plain = make_image(label, np.random.default_rng(5), SIZE).astype(int)
    marked, mask = make_image_and_mask(label, np.random.default_rng(5), SIZE, marker="corner")
    changed = np.argwhere(marked.astype(int) != plain)
    assert changed.size and not (mask > 0)[tuple(changed.T)].any()  # never inside the lungs
    rows, cols = changed[:, 0].mean(), changed[:, 1].mean()
    top_bottom, left_right = SHORTCUT_CORNERS[k]
    assert (rows < SIZE / 4) == (top_bottom == "top") and (cols < SIZE / 4) == (left_right == "left")


def test_a_lung_marker_lies_inside_the_lungs():
    plain = make_image("COVID", np.random.default_rng(2), SIZE).astype(int)
    marked, mask = make_image_and_mask("COVID", np.random.default_rng(2), SIZE, marker="lungs")
    changed = marked.astype(int) != plain
    assert changed.any() and (mask[changed] > 0).mean() > 0.95
    with pytest.raises(CxrError, match="marker"):
        make_image("COVID", np.random.default_rng(0), SIZE, marker="elsewhere")


def test_masks_are_written_in_the_kaggle_v4_layout(tmp_path):
    out = generate_dataset(tmp_path, n_per_class=2, size=32, classes=["COVID", "Normal"], masks=True, marker="corner")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "COVID/images/covid_0000.png", "COVID/images/covid_0001.png", "COVID/masks/covid_0000.png",
        "COVID/masks/covid_0001.png", "Normal/images/normal_0000.png", "Normal/images/normal_0001.png",
        "Normal/masks/normal_0000.png", "Normal/masks/normal_0001.png",
    ]
    found = discover(out)
    assert found.layout == "kaggle-v4" and all(s.mask for s in found.samples)
