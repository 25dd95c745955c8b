"""Segmentation scores of boolean masks: Dice, IoU and the 95% Hausdorff distance, with intervals.

HD95 is the 95th percentile of the symmetric boundary-to-boundary distances in pixels of the
reference mask's size (the larger of the two directed 95th percentiles' union, as in MONAI's
`compute_hausdorff_distance(percentile=95)`); it is NaN when either mask is empty. Intervals are the
project's percentile bootstrap over images (`cxr.metrics.intervals.bootstrap_ci`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from cxr.metrics.intervals import bootstrap_ci

METRICS = ("dice", "iou", "hd95")


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    total = int(pred.sum()) + int(ref.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(pred, ref).sum()) / total


def iou(pred: np.ndarray, ref: np.ndarray) -> float:
    union = int(np.logical_or(pred, ref).sum())
    return 1.0 if union == 0 else int(np.logical_and(pred, ref).sum()) / union


def _boundary(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=np.ones((3, 3), dtype=bool), border_value=0)


def hd95(pred: np.ndarray, ref: np.ndarray) -> float:
    """95th percentile of the symmetric surface distances (pixels); NaN when a mask is empty."""
    if not pred.any() or not ref.any():
        return float("nan")
    bp, br = _boundary(pred), _boundary(ref)
    to_ref = ndimage.distance_transform_edt(~br)[bp]
    to_pred = ndimage.distance_transform_edt(~bp)[br]
    return float(np.percentile(np.concatenate([to_ref, to_pred]), 95))


def per_image(preds: Sequence[np.ndarray], refs: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Dice, IoU and HD95 of each (prediction, reference) pair."""
    rows = [(dice(p, r), iou(p, r), hd95(p, r)) for p, r in zip(preds, refs, strict=True)]
    values = np.asarray(rows, dtype=np.float64).reshape(-1, 3)
    return {name: values[:, i] for i, name in enumerate(METRICS)}


def _batch_mean(_yt: np.ndarray, yp: np.ndarray) -> np.ndarray:
    return np.nanmean(yp, axis=1)


def summarise(values: dict[str, np.ndarray], n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Mean, median and 95% bootstrap interval of each score over images (NaN HD95s left out)."""
    out: dict[str, Any] = {"n": int(len(next(iter(values.values()))))}
    for name, v in values.items():
        finite = v[np.isfinite(v)]
        if finite.size == 0:
            out[name] = {"mean": None, "median": None, "ci": None}
            continue
        ci = bootstrap_ci(np.zeros(finite.size), finite, _batch_mean, n=n_boot, seed=seed) if finite.size > 1 else None
        out[name] = {"mean": float(finite.mean()), "median": float(np.median(finite)),
                     "ci": [float(ci[0]), float(ci[1])] if ci else None}
    return out
