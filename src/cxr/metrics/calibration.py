"""Temperature scaling (Guo et al. 2017): one T > 0 that divides the logits, fitted on validation.

A network's probabilities are often over-confident; dividing its logits by T > 1 softens them
without changing any argmax, so accuracy and the confusion matrix stay as they are while the NLL
and the ECE drop. The study keeps probabilities, not logits: log(softmax(z)) = z - logsumexp(z) is a
valid logit vector (softmax ignores the constant), so `kind="probs"` takes logs of clipped
probabilities and everything else is the same.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, logsumexp, softmax

from cxr.errors import CxrError
from cxr.metrics.checks import check_count, check_labels, check_probs, check_scores
from cxr.metrics.classification import EPSILON, calibration_bins, cross_entropy, expected_calibration_error
from cxr.metrics.intervals import stratified_weights

log = logging.getLogger(__name__)

SCORE_KINDS = ("logits", "log_probs", "probs")
TEMPERATURE_BOUNDS = (0.05, 20.0)  # a T outside this range means the scores are not logits of one model


def as_logits(scores: Any, kind: str = "logits") -> np.ndarray:
    """(N, C) logits from logits, log-probabilities (used as they are) or probabilities (logs of
    probabilities clipped to [1e-7, 1], so a 0 written to predictions.csv stays finite)."""
    if kind not in SCORE_KINDS:
        raise CxrError(f"kind must be one of {SCORE_KINDS}, got {kind!r}")
    z = check_scores(scores, name=kind)
    if kind == "probs":
        if z.min() < 0.0 or z.max() > 1.0:
            raise CxrError(f"probs must lie in [0, 1], got values in [{z.min():.4g}, {z.max():.4g}]")
        return np.log(np.clip(z, EPSILON, 1.0))
    return z


def _nll(z: np.ndarray, y: np.ndarray, inverse_t: float) -> float:
    return float(-np.mean(log_softmax(z * inverse_t, axis=1)[np.arange(len(y)), y]))


def fit_temperature(
    scores: Any,
    y_true: Any,
    *,
    kind: str = "logits",
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
) -> float:
    """The T in `bounds` that minimises the mean NLL of softmax(scores / T) on (scores, y_true).

    Fit it on the validation split, never on the test split it is judged on. The NLL is convex in
    1/T, so a bounded scalar search over 1/T finds the optimum; ~1.0 on calibrated scores. A T at a
    bound is logged (separable data keeps lowering the NLL as T -> 0).
    """
    z = as_logits(scores, kind)
    y = check_labels(y_true, z.shape[1])
    if len(y) != len(z):
        raise CxrError(f"y_true has {len(y)} labels but scores have {len(z)} rows")
    low, high = (float(b) for b in bounds)
    if not 0.0 < low < high or not np.isfinite(high):
        raise CxrError(f"bounds must be 0 < low < high (finite), got {bounds!r}")
    found = minimize_scalar(lambda b: _nll(z, y, b), bounds=(1.0 / high, 1.0 / low), method="bounded",
                            options={"xatol": 1e-6})
    temperature = float(1.0 / found.x)
    if np.isclose(temperature, low, rtol=1e-3) or np.isclose(temperature, high, rtol=1e-3):
        log.warning("fitted temperature %.4g is at the bound of %s; the validation scores may be "
                    "separable or not logits of one model", temperature, bounds)
    return temperature


def _weighted_inverse_t(z: np.ndarray, y: np.ndarray, w: np.ndarray, low: float, high: float) -> float:
    """The 1/T in [1/high, 1/low] minimising the `w`-weighted mean NLL of softmax(z / T)."""
    picked = z[np.arange(len(y)), y]

    def nll(b: float) -> float:
        return float(w @ (logsumexp(z * b, axis=1) - b * picked) / w.sum())

    return float(minimize_scalar(nll, bounds=(1.0 / high, 1.0 / low), method="bounded",
                                 options={"xatol": 1e-6}).x)


def temperature_interval(
    scores: Any,
    y_true: Any,
    *,
    kind: str = "logits",
    n_boot: int = 200,
    seed: int = 0,
    alpha: float = 0.05,
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
) -> list[float]:
    """Percentile interval [low, high] of the fitted T over stratified bootstrap resamples of the
    rows (within each true class): how well the data pin T down. An interval holding 1 means the
    data give no evidence that the scores are miscalibrated."""
    z = as_logits(scores, kind)
    y = check_labels(y_true, z.shape[1])
    if len(y) != len(z):
        raise CxrError(f"y_true has {len(y)} labels but scores have {len(z)} rows")
    n_boot = check_count(n_boot, "n_boot")
    low, high = (float(b) for b in bounds)
    weights = stratified_weights(y, n_boot, np.random.default_rng(seed))
    temps = [1.0 / _weighted_inverse_t(z, y, w, low, high) for chunk in weights for w in chunk]
    lo, hi = np.quantile(temps, [alpha / 2.0, 1.0 - alpha / 2.0])
    return [float(lo), float(hi)]


def apply_temperature(scores: Any, temperature: float, *, kind: str = "logits") -> np.ndarray:
    """softmax(logits / temperature) as (N, C) probabilities; `kind` as in `fit_temperature`."""
    if not isinstance(temperature, int | float | np.floating) or not 0.0 < float(temperature) < np.inf:
        raise CxrError(f"temperature must be a finite number > 0, got {temperature!r}")
    return softmax(as_logits(scores, kind) / float(temperature), axis=1)


def _summary(y: np.ndarray, probs: np.ndarray, bins: int) -> dict[str, Any]:
    return {
        "ece": expected_calibration_error(y, probs, bins),
        "nll": cross_entropy(y, probs),
        "accuracy": float(np.mean(probs.argmax(axis=1) == y)),
        "reliability": calibration_bins(y, probs, bins),
    }


def calibration_report(
    y_true: Any,
    probs_before: Any,
    probs_after: Any,
    bins: int = 15,
    temperature: float | None = None,
) -> dict[str, Any]:
    """ECE, NLL, accuracy and the reliability table (`calibration_bins`) before and after calibration.

    Returns {"bins", "temperature", "before": {ece, nll, accuracy, reliability}, "after": {...}},
    JSON-ready. Temperature scaling keeps every argmax, so the two accuracies are equal.
    """
    bins = check_count(bins, "bins")
    y, before = check_probs(y_true, probs_before)
    _, after = check_probs(y, probs_after)
    if before.shape != after.shape:
        raise CxrError(f"probs_before {before.shape} and probs_after {after.shape} must have the same shape")
    return {
        "bins": bins,
        "temperature": None if temperature is None else float(temperature),
        "before": _summary(y, before, bins),
        "after": _summary(y, after, bins),
    }


def calibrate(
    y_val: Any, probs_val: Any, y_test: Any, probs_test: Any, bins: int = 15
) -> tuple[float, np.ndarray, dict[str, Any]]:
    """Fit T on the validation probabilities, apply it to the test probabilities and report the test
    split before/after: (temperature, calibrated test probs (N, C), calibration_report)."""
    temperature = fit_temperature(probs_val, y_val, kind="probs")
    calibrated = apply_temperature(probs_test, temperature, kind="probs")
    return temperature, calibrated, calibration_report(y_test, probs_test, calibrated, bins, temperature)
