"""A checkpoint's conformal calibration: stored in best.pt after the temperature, read by predict,
serve, evaluate and the exports (`cxr.metrics.conformal` does the maths).

best.pt's `extra["conformal"]` holds the sorted true-label scores of the validation split (after
temperature scaling) for every method, overall and per class, and the defaults of the run's config
(`eval.conformal_method`, `eval.conformal_mondrian`, `eval.coverage`). A checkpoint without it (made
before, last.pt, a multi-label run) has no prediction sets: asking for them is a CxrError that says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxr.errors import CxrError
from cxr.metrics.conformal import ConformalCalibration, check_coverage
from cxr.temperature import update_extra

CONFORMAL_KEY = "conformal"  # checkpoint extra: ConformalCalibration.to_dict()
EXPORT_COVERAGES = (0.8, 0.9, 0.95)  # thresholds written into the exports' metadata beside the default's


def conformal_of(ckpt: Mapping[str, Any], source: str | Path = "checkpoint") -> ConformalCalibration | None:
    """The calibration stored in a checkpoint dict (None when it has none); a CxrError naming `source`
    for a record that does not read."""
    record = (ckpt.get("extra") or {}).get(CONFORMAL_KEY)
    if record is None:
        return None
    try:
        return ConformalCalibration.from_dict(record)
    except CxrError as exc:
        raise CxrError(f"{source}: {exc}") from None


def store_conformal(path: str | Path, calibration: ConformalCalibration) -> Path:
    """Write `calibration` into the extra of the checkpoint at `path`."""
    return update_extra(path, {CONFORMAL_KEY: calibration.to_dict()})


def require_conformal(calibration: ConformalCalibration | None, source: str) -> ConformalCalibration:
    """`calibration`, or a CxrError saying the checkpoint cannot give prediction sets."""
    if calibration is None:
        raise CxrError(f"{source} holds no conformal calibration, so it cannot give prediction sets: it was made "
                       "before them, is a last.pt or a multi-label model; use the best.pt of a newer single-label "
                       "run (cxr run)")
    return calibration


def set_labels(calibration: ConformalCalibration, probs: Any, coverage: float | None = None) -> list[tuple[str, ...]]:
    """Each row's prediction set as class names, most probable first, at `coverage` (default: the stored one)."""
    p = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    member = calibration.sets(p, coverage=coverage)
    names = calibration.classes
    return [tuple(names[j] for j in np.argsort(-row, kind="stable") if keep[j]) for row, keep in zip(p, member, strict=True)]


def format_set(labels: Sequence[str]) -> str:
    """'{COVID, Lung_Opacity}' ('{}' for an empty set)."""
    return "{" + ", ".join(labels) + "}"


def export_metadata(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """The exports' `conformal` metadata: how to form a set from the exported probabilities, the threshold
    per class at the default coverage and at EXPORT_COVERAGES; {} for a checkpoint without calibration."""
    calibration = conformal_of(ckpt)
    if calibration is None:
        return {}

    def thresholds(coverage: float) -> list[float | None]:
        return [float(t) if math.isfinite(t) else None for t in calibration.thresholds(coverage=coverage)]

    coverages = sorted({check_coverage(calibration.coverage), *EXPORT_COVERAGES})
    how = {"lac": "score(y) = 1 - p_y",
           "aps": "score(y) = sum of the probabilities of the labels ranked at or above y (by decreasing p)",
           "raps": (f"score(y) = APS score + {calibration.lam:g} * max(0, rank(y) - {calibration.k_reg}), rank 1-based "
                    "by decreasing p")}[calibration.method]
    return {"conformal": {
        "method": calibration.method, "mondrian": calibration.mondrian, "coverage": calibration.coverage,
        "k_reg": calibration.k_reg, "lambda": calibration.lam, "calibration_images": calibration.n,
        "quantile": thresholds(calibration.coverage),
        "quantiles": {f"{c:g}": thresholds(c) for c in coverages},
        "how": (f"{how}; the set holds every class y whose score <= quantile[y] (one value per class in `classes` "
                "order; null: every class); scores of the exported (calibrated) probabilities"),
    }}


class SetMaker:
    """One image's prediction set (class names, most probable first) from its calibrated probabilities,
    at a fixed coverage: what `Predictor` puts in `Prediction.prediction_set`."""

    def __init__(self, calibration: ConformalCalibration, coverage: float | None = None) -> None:
        self.calibration = calibration
        self.coverage = check_coverage(calibration.coverage if coverage is None else coverage)

    def __call__(self, probs: Any) -> tuple[str, ...]:
        return set_labels(self.calibration, probs, self.coverage)[0]


def set_maker(extra: Mapping[str, Any], coverage: float | None, source: str, *, multilabel: bool = False) -> SetMaker | None:
    """The SetMaker of a checkpoint's extra at `coverage` (None: no sets); a CxrError when sets are asked
    of a multi-label model or a checkpoint without calibration, or for a coverage outside (0, 1)."""
    if coverage is None:
        return None
    coverage = check_coverage(coverage, "--coverage")
    if multilabel:
        raise CxrError(f"{source} is multi-label: prediction sets over classes presume one true class per image, "
                       "so a multi-label model gives none (its findings have their own thresholds)")
    return SetMaker(require_conformal(conformal_of({"extra": extra}, source), source), coverage)
