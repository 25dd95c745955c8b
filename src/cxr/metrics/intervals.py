"""Confidence intervals that hold at small n: Wilson score intervals for proportions, and a
stratified BCa bootstrap (percentile where BCa degenerates) for everything else.

Why not the seed's percentile bootstrap everywhere: with every prediction right it gives accuracy
"1.000 - 1.000" at any n, a zero-width interval; the Wilson interval of 48/48 is [0.926, 1]. The
bootstrap here resamples within each true class, so every resample keeps the class sizes (and
every class has an AUC), and BCa corrects the percentile interval for bias and skew (Efron 1987,
acceleration from a jackknife). `bootstrap_ci` keeps the old percentile method for callers of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import ndtr, ndtri
from scipy.stats import binomtest

from cxr.errors import CxrError
from cxr.metrics.checks import check_alpha, check_count

BOOTSTRAP_CHUNK = 4_000_000  # resampled labels scored per step, bounds the bootstrap's memory
WEIGHT_CHUNK = 500_000  # weight-matrix entries per step of the stratified bootstrap
JACKKNIFE_GROUPS = 500  # BCa acceleration: leave-one-out up to this n, else this many deleted groups

BatchMetric = Callable[[np.ndarray, np.ndarray], np.ndarray]
WeightedStatistic = Callable[[np.ndarray], Mapping[str, np.ndarray]]


def wilson_interval(successes: int, trials: int, alpha: float = 0.05) -> list[float] | None:
    """Wilson score interval [low, high] of successes/trials (scipy.stats.binomtest); None when trials is 0.

    Never zero width for finite trials: 48/48 gives [0.926, 1.0], 0/10 gives [0.0, 0.278].
    """
    alpha = check_alpha(alpha)
    if trials < 0 or not 0 <= successes <= trials:
        raise CxrError(f"need 0 <= successes <= trials, got {successes} of {trials}")
    if trials == 0:
        return None
    ci = binomtest(int(successes), int(trials)).proportion_ci(confidence_level=1.0 - alpha, method="wilson")
    return [float(ci.low), float(ci.high)]


def bootstrap_ci(
    y_true: Any,
    y_pred: Any,
    metric_fn: BatchMetric,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """The seed's percentile bootstrap (1 - alpha) interval of a metric of (y_true, y_pred).

    All n index sets are drawn at once from `np.random.default_rng(seed)`, so the interval is a
    pure function of the inputs and the seed. `metric_fn` is vectorised: it takes (B, N) arrays of
    resampled labels and returns B values (see `batch_accuracy`, `batch_macro_f1`).
    """
    if not isinstance(n, int | np.integer) or n < 1:
        raise CxrError(f"bootstrap resamples n must be a positive integer, got {n!r}")
    alpha = check_alpha(alpha)
    yt = np.asarray(y_true)
    yp = np.asarray(y_pred)
    if yt.ndim != 1 or yt.shape != yp.shape or yt.size == 0:
        raise CxrError(f"y_true and y_pred must be equal-length non-empty 1-D arrays, got {yt.shape}, {yp.shape}")
    size = yt.size
    index_dtype = np.int32 if size < np.iinfo(np.int32).max else np.int64
    index = np.random.default_rng(seed).integers(0, size, size=(n, size), dtype=index_dtype)
    step = max(1, BOOTSTRAP_CHUNK // size)
    values = np.concatenate(
        [np.asarray(metric_fn(yt[index[i : i + step]], yp[index[i : i + step]])) for i in range(0, n, step)]
    )
    lo, hi = np.quantile(values, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)


def stratified_weights(strata: Any, n: int, rng: np.random.Generator, chunk: int | None = None) -> Iterator[np.ndarray]:
    """Bootstrap weights (m, N) in chunks, n rows in all: row counts of N draws with replacement made
    within each stratum, so every resample holds exactly as many rows of each stratum as the data."""
    labels = np.asarray(strata)
    size = labels.size
    groups = [np.flatnonzero(labels == s) for s in np.unique(labels)]
    step = chunk or max(1, WEIGHT_CHUNK // size)
    for start in range(0, n, step):
        m = min(step, n - start)
        drawn = np.empty((m, size), dtype=np.int64)
        col = 0
        for members in groups:
            drawn[:, col : col + members.size] = members[rng.integers(0, members.size, size=(m, members.size))]
            col += members.size
        flat = (drawn + np.arange(m)[:, None] * size).ravel()
        yield np.bincount(flat, minlength=m * size).reshape(m, size).astype(np.float64)


def stratified_resample_weights(strata: Any, n: int, seed: int = 0) -> np.ndarray:
    """All n stratified bootstrap weight rows (n, N) at once (for inspection and tests)."""
    return np.concatenate(list(stratified_weights(strata, n, np.random.default_rng(seed))))


def jackknife_weights(size: int, rng: np.random.Generator, groups: int = JACKKNIFE_GROUPS) -> Iterator[np.ndarray]:
    """Delete-one (size <= groups) or delete-a-random-group jackknife weights (m, size), in chunks."""
    if size <= groups:
        assignment, count = np.arange(size), size
    else:
        assignment, count = rng.permutation(size) % groups, groups
    step = max(1, WEIGHT_CHUNK // size)
    for start in range(0, count, step):
        deleted = np.arange(start, min(count, start + step))
        yield (assignment[None, :] != deleted[:, None]).astype(np.float64)


def bca_interval(values: Any, point: float, jackknife: Any, alpha: float = 0.05) -> tuple[float, float, str]:
    """(low, high, method) from bootstrap `values` of a statistic with estimate `point`.

    BCa: bias correction z0 from the share of values below the estimate (ties count half, as in
    scipy), acceleration from the `jackknife` values. Falls back to the percentile interval, method
    "percentile", when BCa is not defined: all values equal, the estimate outside the bootstrap
    distribution, or adjusted levels that are not finite.
    """
    alpha = check_alpha(alpha)
    boot = np.asarray(values, dtype=np.float64)
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        raise ValueError("no finite bootstrap values")  # callers check for an undefined statistic first
    levels = np.array([alpha / 2.0, 1.0 - alpha / 2.0])
    share = (np.count_nonzero(boot < point) + np.count_nonzero(boot <= point)) / (2.0 * boot.size)
    if np.ptp(boot) > 0 and 0.0 < share < 1.0:
        jack = np.asarray(jackknife, dtype=np.float64)
        jack = jack[np.isfinite(jack)]
        spread = jack.mean() - jack if jack.size else np.zeros(1)
        denom = np.sum(spread**2)
        accel = np.sum(spread**3) / (6.0 * denom**1.5) if denom > 0 else 0.0
        z0 = ndtri(share)
        z = z0 + ndtri(levels)
        with np.errstate(divide="ignore", invalid="ignore"):
            adjusted = ndtr(z0 + z / (1.0 - accel * z))
        if np.all(np.isfinite(adjusted)) and np.all(1.0 - accel * z > 0):
            lo, hi = np.quantile(boot, adjusted)
            return float(lo), float(hi), "bca"
    lo, hi = np.quantile(boot, levels)
    return float(lo), float(hi), "percentile"


@dataclass(frozen=True)
class BootstrapInterval:
    """One statistic's bootstrap: estimate, interval (None when undefined), method, resampled values."""

    point: float | None
    low: float | None
    high: float | None
    method: str | None  # "bca", "percentile", or None when the statistic is undefined
    values: np.ndarray  # the finite bootstrap values (for p-values)

    @property
    def ci(self) -> list[float] | None:
        """[low, high] as plain floats, or None."""
        return None if self.low is None or self.high is None else [self.low, self.high]


def _evaluate(statistic: WeightedStatistic, chunks: Iterator[np.ndarray]) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {}
    for weights in chunks:
        for name, value in statistic(weights).items():
            parts.setdefault(name, []).append(np.asarray(value, dtype=np.float64))
    return {name: np.concatenate(v) for name, v in parts.items()}


def stratified_bootstrap(
    strata: Any,
    statistic: WeightedStatistic,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, BootstrapInterval]:
    """Stratified BCa bootstrap of every statistic `statistic(weights)` returns.

    `statistic` maps row weights (M, N) to {name: (M,) values} (see `WeightedScores`); `strata` (N,)
    are the labels resampled within (the true classes). A statistic that is NaN at the estimate gets
    point/low/high None. Deterministic given the inputs and `seed`.
    """
    n_boot = check_count(n_boot, "n_boot")
    alpha = check_alpha(alpha)
    labels = np.asarray(strata)
    size = labels.size
    rng = np.random.default_rng(seed)
    point = {name: float(np.asarray(v)[0]) for name, v in statistic(np.ones((1, size))).items()}
    boot = _evaluate(statistic, stratified_weights(labels, n_boot, rng))
    jack = _evaluate(statistic, jackknife_weights(size, rng))
    out = {}
    for name, estimate in point.items():
        values = boot[name][np.isfinite(boot[name])]
        if not np.isfinite(estimate) or values.size == 0:
            out[name] = BootstrapInterval(None, None, None, None, values)
            continue
        lo, hi, method = bca_interval(values, estimate, jack[name], alpha)
        out[name] = BootstrapInterval(estimate, lo, hi, method, values)
    return out
