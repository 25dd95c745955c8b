"""Prediction sets in a study: calibrated on the validation split after temperature scaling and stored
in best.pt (`cxr.prediction_sets`), then judged on the test split, on each external set and by
`cxr evaluate` (metrics["conformal"], `cxr.metrics.conformal_report`).

Multi-label runs get none: a prediction set over classes presumes one true class per image, and a
multi-label image holds any number of findings (per-finding conformal intervals are not built).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxr.checkpoint import load_checkpoint
from cxr.config import RunConfig
from cxr.metrics.conformal import ConformalCalibration, calibrate_conformal
from cxr.metrics.conformal_report import conformal_entry, with_temperature
from cxr.prediction_sets import conformal_of, store_conformal
from cxr.temperature import temperature_of

log = logging.getLogger(__name__)


def calibrate_sets(y: np.ndarray, probs: np.ndarray, classes: Sequence[str], cfg: RunConfig,
                   checkpoint: Path) -> ConformalCalibration | None:
    """Calibration scores of the validation split's calibrated probabilities, stored in `checkpoint`;
    None (nothing stored) without validation images."""
    if len(y) == 0:
        log.warning("prediction sets: no validation images to calibrate on; best.pt gets no conformal calibration")
        return None
    ev = cfg.eval
    calibration = calibrate_conformal(
        probs, y, classes, method=ev.conformal_method, mondrian=ev.conformal_mondrian, coverage=ev.coverage,
        k_reg=ev.raps_k_reg, lam=ev.raps_lambda, record={"fitted_on": "val", "after": "temperature scaling"})
    store_conformal(checkpoint, calibration)
    log.info("prediction sets: %s%s calibrated on %d validation images, stored in %s", ev.conformal_method,
             " (Mondrian)" if ev.conformal_mondrian else "", len(y), checkpoint)
    return calibration


def sets_entry(checkpoint: Path | dict[str, Any], y: np.ndarray, probs: np.ndarray, *, temperature: float = 1.0,
               name: str = "test") -> dict[str, Any] | None:
    """metrics["conformal"] of one labelled set from the calibration stored in `checkpoint` (a path or its
    dict); `temperature` turns raw softmax probabilities into the calibrated ones the sets were fitted on.
    None for a checkpoint without calibration (older ones, multi-label) or a set without images."""
    state = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    calibration = conformal_of(state, "checkpoint" if isinstance(checkpoint, dict) else checkpoint)
    if calibration is None or len(y) == 0 or np.ndim(y) != 1:
        return None
    entry = conformal_entry(calibration, with_temperature(probs, temperature), y)
    low, high = entry["coverage_ci"] or (float("nan"), float("nan"))
    log.info("prediction sets on %s (%s%s, nominal %.2f): coverage %.4f [%.4f, %.4f], mean set size %.3f, "
             "singletons %.3f%s", name, entry["method"], "+mondrian" if entry["mondrian"] else "", entry["nominal"],
             entry["coverage"], low, high, entry["mean_size"], entry["singletons"],
             f"; its interval lies BELOW the nominal coverage{'' if name == 'test' else ' (a sign of shift)'}"
             if entry["below_nominal"] else "")
    return entry


def external_sets_entry(state: dict[str, Any] | None, y: np.ndarray, probs: np.ndarray, name: str) -> dict[str, Any] | None:
    """`sets_entry` of an external set, whose probabilities are the model's raw softmax (T applied here)."""
    if state is None:
        return None
    return sets_entry(state, y, probs, temperature=temperature_of(state), name=name)
