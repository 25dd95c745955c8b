"""cxr.metrics.intervals: Wilson at known values, stratified resampling, BCa and its fallback."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import bootstrap, norm

from cxr.errors import CxrError
from cxr.metrics.intervals import (
    bca_interval,
    jackknife_weights,
    stratified_bootstrap,
    stratified_resample_weights,
    wilson_interval,
)

Z = norm.ppf(0.975)


def wilson_by_hand(k: int, n: int) -> tuple[float, float]:
    """Wilson (1927): (p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)."""
    p = k / n
    centre = p + Z**2 / (2 * n)
    half = Z * np.sqrt(p * (1 - p) / n + Z**2 / (4 * n**2))
    return (centre - half) / (1 + Z**2 / n), (centre + half) / (1 + Z**2 / n)


def test_wilson_at_all_right_and_all_wrong() -> None:
    lo, hi = wilson_interval(48, 48)
    assert lo == pytest.approx(48 / (48 + Z**2)) and lo == pytest.approx(0.926, abs=5e-4)
    assert hi == pytest.approx(1.0)
    lo, hi = wilson_interval(0, 10)
    assert lo == pytest.approx(0.0, abs=1e-12)
    assert hi == pytest.approx(Z**2 / (10 + Z**2)) and hi == pytest.approx(0.2775, abs=1e-4)


@pytest.mark.parametrize(("k", "n"), [(1, 3), (7, 20), (180, 200), (5, 5)])
def test_wilson_matches_the_formula(k: int, n: int) -> None:
    np.testing.assert_allclose(wilson_interval(k, n), wilson_by_hand(k, n), atol=1e-12)


def test_wilson_never_has_zero_width_and_handles_no_trials() -> None:
    for n in range(1, 12):
        for k in range(n + 1):
            lo, hi = wilson_interval(k, n)
            assert 0.0 <= lo < k / n + 1e-12 and k / n - 1e-12 < hi <= 1.0 and hi - lo > 0.05
    assert wilson_interval(0, 0) is None
    with pytest.raises(CxrError, match="successes"):
        wilson_interval(5, 3)


def test_stratified_weights_keep_every_class_in_every_resample() -> None:
    y = np.array([0] * 30 + [1] * 3 + [2] * 1 + [3] * 6)  # a rare class of one image
    weights = stratified_resample_weights(y, 400, seed=1)
    assert weights.shape == (400, y.size)
    for c in range(4):
        np.testing.assert_array_equal(weights[:, y == c].sum(axis=1), np.sum(y == c))
    assert (weights[:, y == 0] != 1).any()  # resampled, not copied
    np.testing.assert_array_equal(weights, stratified_resample_weights(y, 400, seed=1))
    assert not np.array_equal(weights, stratified_resample_weights(y, 400, seed=2))


def test_jackknife_deletes_one_row_or_one_group() -> None:
    rng = np.random.default_rng(0)
    small = np.concatenate(list(jackknife_weights(5, rng, groups=10)))
    np.testing.assert_array_equal(small, 1 - np.eye(5))
    grouped = np.concatenate(list(jackknife_weights(1000, rng, groups=50)))
    assert grouped.shape == (50, 1000)
    np.testing.assert_array_equal((grouped == 0).sum(axis=0), 1)  # each row deleted exactly once
    assert set((grouped == 0).sum(axis=1)) == {20}


def test_bca_falls_back_to_percentile_when_degenerate() -> None:
    jack = np.linspace(0.4, 0.6, 20)
    assert bca_interval(np.full(100, 1.0), 1.0, jack) == (1.0, 1.0, "percentile")  # every resample equal
    values = np.linspace(0.0, 1.0, 101)
    lo, hi, method = bca_interval(values, 2.0, jack)  # estimate above every resample: z0 is infinite
    assert method == "percentile"
    assert (lo, hi) == pytest.approx(tuple(np.quantile(values, [0.025, 0.975])))


def test_bca_without_bias_or_skew_is_the_percentile_interval() -> None:
    values = np.linspace(-1.0, 1.0, 2001)  # symmetric about the estimate 0: z0 = 0
    jack = np.array([-1.0, 1.0, -2.0, 2.0])  # symmetric: acceleration 0
    lo, hi, method = bca_interval(values, 0.0, jack)
    assert method == "bca"
    assert (lo, hi) == pytest.approx(tuple(np.quantile(values, [0.025, 0.975])))


def test_bca_of_a_mean_agrees_with_scipy() -> None:
    # Right-skewed data: BCa moves the interval of the mean to the right of the percentile one.
    x = np.random.default_rng(3).exponential(size=60)

    def mean(weights: np.ndarray) -> dict[str, np.ndarray]:
        return {"mean": weights @ x / weights.sum(axis=1)}

    ours = stratified_bootstrap(np.zeros(60), mean, n_boot=20000, seed=4)["mean"]
    ref = bootstrap((x,), np.mean, n_resamples=20000, method="BCa", rng=np.random.default_rng(5)).confidence_interval
    pct = np.quantile(ours.values, [0.025, 0.975])
    width = ref.high - ref.low
    assert ours.method == "bca"
    assert ours.low == pytest.approx(ref.low, abs=0.04 * width)
    assert ours.high == pytest.approx(ref.high, abs=0.04 * width)
    assert ours.high > pct[1] + 0.02 * width  # the skew correction is really applied


def test_undefined_statistic_gets_no_interval() -> None:
    def stat(weights: np.ndarray) -> dict[str, np.ndarray]:
        return {"nan": np.full(weights.shape[0], np.nan), "sum": weights.sum(axis=1)}

    out = stratified_bootstrap(np.array([0, 0, 1, 1]), stat, n_boot=50, seed=0)
    assert out["nan"].ci is None and out["nan"].method is None and out["nan"].point is None
    assert out["sum"].ci == [4.0, 4.0] and out["sum"].method == "percentile"  # stratified: always 4 rows


@pytest.mark.parametrize(("kwargs", "needle"), [({"n_boot": 0}, "n_boot"), ({"alpha": 1.0}, "alpha")])
def test_stratified_bootstrap_rejects_bad_arguments(kwargs: dict, needle: str) -> None:
    with pytest.raises(CxrError, match=needle):
        stratified_bootstrap(np.zeros(4), lambda w: {"s": w.sum(axis=1)}, **kwargs)
