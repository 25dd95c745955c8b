"""Validation shared by every metric: labels (N,) and probabilities (N, C) as float64/int64 arrays."""

from __future__ import annotations

from typing import Any

import numpy as np

from cxr.errors import CxrError


def check_labels(y_true: Any, num_classes: int, name: str = "y_true") -> np.ndarray:
    """Integer class indices in 0..num_classes-1 as an int64 (N,) array; CxrError names what is wrong."""
    y = np.asarray(y_true)
    if y.ndim != 1 or y.size == 0:
        raise CxrError(f"{name} must be a non-empty 1-D array of class indices, got shape {y.shape}")
    integral = y.dtype.kind in "iu" or (y.dtype.kind == "f" and bool(np.all(np.mod(y, 1) == 0)))
    if not integral:
        raise CxrError(f"{name} must hold integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= num_classes:
        raise CxrError(
            f"{name} holds class index {int(y.min()) if y.min() < 0 else int(y.max())}; "
            f"allowed: 0..{num_classes - 1}"
        )
    return y


def check_scores(scores: Any, name: str = "probs") -> np.ndarray:
    """A finite, non-empty (N, C) float64 array."""
    p = np.asarray(scores, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] == 0:
        raise CxrError(f"{name} must be a non-empty 2-D array (samples, classes), got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        raise CxrError(f"{name} contains NaN or infinite values; expected finite numbers")
    return p


def check_probs(y_true: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert labels (N,) and probabilities (N, C); CxrError names what is wrong."""
    p = check_scores(probs)
    y = np.asarray(y_true)
    if y.ndim != 1 or y.shape[0] != p.shape[0]:
        raise CxrError(f"y_true must have shape ({p.shape[0]},) to match probs {p.shape}, got {y.shape}")
    return check_labels(y, p.shape[1]), p


def check_alpha(alpha: float) -> float:
    """A two-sided error level in (0, 1): 0.05 gives 95% intervals."""
    if not isinstance(alpha, int | float | np.floating) or not 0.0 < float(alpha) < 1.0:
        raise CxrError(f"alpha must be in (0, 1), got {alpha!r}")
    return float(alpha)


def check_count(value: Any, name: str, minimum: int = 1) -> int:
    """An integer >= minimum (resample counts, bins)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise CxrError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)
