"""QC of lung probability maps: the four numbers and the flag (numpy only, no model)."""

from __future__ import annotations

import numpy as np
import pytest

from cxr.lungs.qc import LungQC, lung_qc


def two_lungs(size: int = 128, soft: bool = False) -> np.ndarray:
    """A probability map with two upright ellipses, one per image half (about 25% of the image)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    prob = np.zeros((size, size), np.float32)
    for cx in (0.3, 0.7):
        inside = ((xx - cx) / 0.13) ** 2 + ((yy - 0.5) / 0.3) ** 2 <= 1
        prob[inside] = 0.6 if soft else 0.99
    prob[~(prob > 0)] = 0.01
    return prob


def test_two_crisp_lungs_are_ok_and_numbers_are_right():
    qc = lung_qc(two_lungs())
    assert isinstance(qc, LungQC) and qc.flag == "ok" and qc.reason == ""
    assert qc.parts == 2
    assert 0.2 < qc.area_fraction < 0.3
    assert qc.balance == pytest.approx(1.0, abs=0.05)
    assert qc.confidence > 0.95
    assert qc.to_dict()["flag"] == "ok"


@pytest.mark.parametrize("prob, why", [
    (np.zeros((64, 64), np.float32), "area"),
    (np.ones((64, 64), np.float32), "area"),
    (np.where(np.arange(128)[None, :] < 50, two_lungs(), 0.0).astype(np.float32), "balance"),
    (two_lungs(soft=True), "confidence"),
])
def test_implausible_masks_are_suspect_with_a_reason(prob, why):
    qc = lung_qc(prob)
    assert qc.flag == "suspect" and why in qc.reason


def test_many_scattered_parts_are_suspect():
    prob = np.full((100, 100), 0.01, np.float32)
    for y in range(5, 95, 20):
        for x in range(5, 95, 20):
            prob[y:y + 12, x:x + 12] = 0.99
    qc = lung_qc(prob)
    assert qc.parts == 25 and qc.flag == "suspect" and "parts" in qc.reason


def test_a_map_that_is_not_2d_is_refused():
    with pytest.raises(ValueError, match="2-D"):
        lung_qc(np.zeros((2, 8, 8)))
