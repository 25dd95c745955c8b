"""How prediction sets did on labelled images: empirical coverage with a Wilson interval, per-class
coverage, the distribution of set sizes, the share of singletons (torch-free).

`conformal_entry` is what metrics.json holds for the test split and for each external set: the
configured method in full, and a one-line summary of every stored method with and without Mondrian
calibration, all from the scores stored at calibration time. A set whose coverage interval lies
wholly below the nominal coverage is marked `below_nominal`: on exchangeable images that happens
about 2.5% of the time, so on a foreign set it is a sign of distribution shift.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cxr.metrics.conformal import ConformalCalibration
from cxr.metrics.intervals import wilson_interval

SUMMARY_KEYS = ("coverage", "coverage_ci", "below_nominal", "mean_size", "singletons", "empty", "worst_class_coverage")


def with_temperature(probs: Any, temperature: float) -> np.ndarray:
    """Softmax probabilities rescaled as if their logits were divided by `temperature`: p^(1/T), renormalised
    (exact for a softmax; for averaged test-time-augmentation views an approximation)."""
    p = np.asarray(probs, dtype=np.float64)
    if temperature == 1.0:
        return p
    scaled = np.power(np.clip(p, 0.0, None), 1.0 / temperature)
    return scaled / scaled.sum(axis=1, keepdims=True)


def _coverage(covered: np.ndarray, nominal: float) -> dict[str, Any]:
    n, hits = int(covered.size), int(covered.sum())
    ci = wilson_interval(hits, n)
    return {"n": n, "covered": hits, "coverage": hits / n if n else None, "coverage_ci": ci,
            "below_nominal": bool(ci is not None and ci[1] < nominal)}


def coverage_report(sets: np.ndarray, y: Any, classes: Sequence[str], nominal: float) -> dict[str, Any]:
    """Coverage (Wilson 95% interval), per-class coverage of the classes present, set sizes of boolean
    (N, C) sets against labels `y` (class indices)."""
    y = np.asarray(y, dtype=np.int64)
    sets = np.asarray(sets, dtype=bool)
    covered = sets[np.arange(len(y)), y]
    sizes = sets.sum(axis=1)
    per_class = {}
    for i, name in enumerate(classes):
        mine = y == i
        if mine.any():
            per_class[name] = {**_coverage(covered[mine], nominal), "mean_size": float(sizes[mine].mean())}
    worst = min((v["coverage"] for v in per_class.values()), default=None)
    return {
        "nominal": nominal, **_coverage(covered, nominal),
        "mean_size": float(sizes.mean()) if len(y) else None,
        "singletons": float(np.mean(sizes == 1)) if len(y) else None,
        "empty": float(np.mean(sizes == 0)) if len(y) else None,
        "size_counts": {str(k): int(np.sum(sizes == k)) for k in range(len(classes) + 1)},
        "worst_class_coverage": worst,
        "per_class": per_class,
    }


def variant_name(method: str, mondrian: bool) -> str:
    """'lac', 'aps+mondrian', ..."""
    return f"{method}+mondrian" if mondrian else method


def conformal_entry(calibration: ConformalCalibration, probs: Any, y: Any, coverage: float | None = None) -> dict[str, Any]:
    """metrics.json's "conformal" of one labelled set: the default method in full, every variant summarised."""
    method, mondrian, nominal = calibration.resolve(None, None, coverage)
    classes = list(calibration.classes)
    report = coverage_report(calibration.sets(probs, method, mondrian, nominal), y, classes, nominal)
    variants = {}
    for m in calibration.scores:
        for mond in (False, True):
            full = coverage_report(calibration.sets(probs, m, mond, nominal), y, classes, nominal)
            variants[variant_name(m, mond)] = {k: full[k] for k in SUMMARY_KEYS}
    thresholds = calibration.thresholds(method, mondrian, nominal)
    return {
        "method": method, "mondrian": mondrian, "calibration_images": calibration.n,
        "fitted_on": calibration.record.get("fitted_on"), "k_reg": calibration.k_reg, "lambda": calibration.lam,
        "thresholds": {c: (float(t) if np.isfinite(t) else None) for c, t in zip(classes, thresholds, strict=True)},
        **report, "variants": variants,
    }
