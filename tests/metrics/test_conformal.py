"""Split conformal prediction sets (cxr.metrics.conformal): the coverage guarantee on exchangeable data,
Mondrian per-class coverage, quantile edge cases, and agreement with MAPIE and crepes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxr.errors import CxrError
from cxr.metrics.conformal import (
    METHODS,
    ConformalCalibration,
    calibrate_conformal,
    conformal_quantile,
    conformal_rank,
    score_matrix,
    true_label_scores,
)
from cxr.metrics.conformal_report import conformal_entry, coverage_report, with_temperature

C = 4
CLASSES = [f"c{i}" for i in range(C)]


def draw(rng: np.random.Generator, n: int, prior: tuple[float, ...] = (0.25,) * C) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of a deliberately miscalibrated model and labels drawn from a truth it only
    partly knows: exchangeable (probs, y) pairs whatever the model's quality."""
    y = rng.choice(C, size=n, p=prior)
    logits = rng.normal(size=(n, C))
    logits[np.arange(n), y] += 1.2
    p = np.exp(2.5 * logits)  # overconfident on purpose: the guarantee must not need calibration
    return p / p.sum(axis=1, keepdims=True), y


def test_lac_aps_raps_scores_by_hand():
    p = np.array([[0.5, 0.3, 0.2, 0.0]])
    np.testing.assert_allclose(score_matrix(p, "lac"), [[0.5, 0.7, 0.8, 1.0]])
    np.testing.assert_allclose(score_matrix(p, "aps"), [[0.5, 0.8, 1.0, 1.0]])
    np.testing.assert_allclose(score_matrix(p, "raps", k_reg=1, lam=0.1), [[0.5, 0.9, 1.2, 1.3]])
    assert true_label_scores(p, [1], "aps")[0] == pytest.approx(0.8)


@pytest.mark.parametrize(("n", "coverage", "rank"), [(9, 0.9, 9), (10, 0.9, 10), (99, 0.9, 90), (1, 0.5, 1), (3, 0.8, 4)])
def test_conformal_rank_is_ceil_of_n_plus_one_times_coverage(n, coverage, rank):
    assert conformal_rank(n, coverage) == rank


def test_quantile_edge_cases():
    scores = np.arange(1, 11) / 10.0
    assert conformal_quantile(scores, 0.9) == 1.0  # rank 10 of 10
    assert conformal_quantile(scores, 0.5) == 0.6  # ceil(5.5) = 6
    assert conformal_quantile(scores[:3], 0.8) == math.inf  # rank 4 of 3: every label
    assert conformal_quantile(np.zeros(0), 0.5) == math.inf  # no calibration image of a class
    with pytest.raises(CxrError, match=r"coverage must be a number in \(0, 1\)"):
        conformal_quantile(scores, 1.0)


def test_too_few_calibration_images_give_every_label():
    rng = np.random.default_rng(1)
    p, y = draw(rng, 5)
    cal = calibrate_conformal(p, y, CLASSES)
    assert cal.sets(draw(rng, 20)[0], coverage=0.9).all()  # rank ceil(6 * 0.9) = 6 > 5


@pytest.mark.parametrize("method", METHODS)
def test_marginal_coverage_guarantee_over_many_draws(method):
    """E[coverage] >= 1 - alpha, and below 1 - alpha + 1/(n+1) (continuous scores), over 300 draws."""
    rng = np.random.default_rng(2)
    n_cal, n_test, coverage = 99, 200, 0.9
    covered = []
    for _ in range(300):
        p, y = draw(rng, n_cal + n_test)
        cal = calibrate_conformal(p[:n_cal], y[:n_cal], CLASSES, methods=(method,), method=method)
        sets = cal.sets(p[n_cal:], coverage=coverage)
        covered.append(sets[np.arange(n_test), y[n_cal:]].mean())
    mean, se = float(np.mean(covered)), float(np.std(covered) / np.sqrt(len(covered)))
    assert mean >= coverage - 3 * se
    assert mean <= coverage + 1 / (n_cal + 1) + 3 * se


def test_mondrian_covers_every_class_where_marginal_does_not():
    """Imbalanced classes: marginal LAC under-covers the rare class; Mondrian covers each one."""
    rng = np.random.default_rng(3)
    prior = (0.85, 0.05, 0.05, 0.05)
    per_class = {False: [], True: []}
    for _ in range(40):
        p, y = draw(rng, 2000, prior)
        p[:, 0] *= 6  # the model favours the common class
        p /= p.sum(axis=1, keepdims=True)
        cal = calibrate_conformal(p[:1000], y[:1000], CLASSES, methods=("lac",))
        for mondrian in (False, True):
            report = coverage_report(cal.sets(p[1000:], mondrian=mondrian, coverage=0.9), y[1000:], CLASSES, 0.9)
            per_class[mondrian].append([report["per_class"][c]["coverage"] for c in CLASSES])
    marginal, mondrian = np.mean(per_class[False], axis=0), np.mean(per_class[True], axis=0)
    assert marginal[1:].min() < 0.85  # the rare classes are left to the common one
    assert mondrian.min() >= 0.89


def test_sets_are_nested_in_coverage_and_serve_any_coverage_from_stored_scores():
    rng = np.random.default_rng(4)
    p, y = draw(rng, 400)
    cal = ConformalCalibration.from_dict(calibrate_conformal(p, y, CLASSES, method="aps").to_dict())
    test = draw(rng, 100)[0]
    small, large = cal.sets(test, coverage=0.8), cal.sets(test, coverage=0.95)
    assert np.all(small <= large) and large.sum() > small.sum()
    assert cal.method == "aps" and cal.n == 400 and set(cal.scores) == set(METHODS)
    fresh = calibrate_conformal(p, y, CLASSES)
    for method in METHODS:
        np.testing.assert_array_equal(cal.sets(test, method, True, 0.85), fresh.sets(test, method, True, 0.85))


def test_bad_records_and_arguments_are_named():
    with pytest.raises(CxrError, match="unknown conformal method 'topk'; allowed: lac, aps, raps"):
        score_matrix(np.full((1, 2), 0.5), "topk")
    with pytest.raises(CxrError, match="not a conformal calibration record"):
        ConformalCalibration.from_dict({"method": "lac"})
    with pytest.raises(CxrError, match="k_reg >= 0 and lambda >= 0"):
        calibrate_conformal(np.full((2, 2), 0.5), [0, 1], ["a", "b"], lam=-1.0)


def test_report_counts_coverage_sizes_and_flags_a_drop_below_nominal():
    sets = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1]], bool)
    report = coverage_report(sets, [0, 1, 2, 3], CLASSES, 0.9)
    assert report["coverage"] == 0.75 and report["covered"] == 3 and report["n"] == 4
    assert report["size_counts"] == {"0": 1, "1": 1, "2": 2, "3": 0, "4": 0}
    assert report["mean_size"] == 1.25 and report["singletons"] == 0.25 and report["empty"] == 0.25
    assert report["per_class"]["c2"]["coverage"] == 0.0 and not report["below_nominal"]  # n = 4: a wide interval
    shifted = coverage_report(np.tile([[1, 0, 0, 0]], (200, 1)), np.r_[np.zeros(150), np.ones(50)], CLASSES, 0.9)
    assert shifted["coverage"] == 0.75 and shifted["below_nominal"] and shifted["coverage_ci"][1] < 0.9
    assert set(shifted["per_class"]) == {"c0", "c1"}  # only the classes present


def test_entry_summarises_every_variant_at_the_nominal_coverage():
    rng = np.random.default_rng(5)
    p, y = draw(rng, 600)
    entry = conformal_entry(calibrate_conformal(p[:300], y[:300], CLASSES), p[300:], y[300:], coverage=0.9)
    assert entry["method"] == "lac" and entry["nominal"] == 0.9 and entry["calibration_images"] == 300
    assert set(entry["variants"]) == {"lac", "aps", "raps", "lac+mondrian", "aps+mondrian", "raps+mondrian"}
    assert entry["variants"]["lac"]["coverage"] == entry["coverage"]


def test_with_temperature_equals_dividing_the_logits():
    logits = np.random.default_rng(6).normal(size=(5, C)) * 3
    soft = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    cooled = np.exp(logits / 2.5) / np.exp(logits / 2.5).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(with_temperature(soft, 2.5), cooled, rtol=1e-10)


def _reference_data():
    rng = np.random.default_rng(7)
    cal, test = draw(rng, 500), draw(rng, 300)
    return cal, test, calibrate_conformal(*cal, CLASSES)


@pytest.mark.parametrize("coverage", [0.8, 0.9, 0.95])
def test_lac_sets_and_quantile_equal_mapie(coverage):
    pytest.importorskip("mapie")
    from mapie.classification import SplitConformalClassifier
    from sklearn.base import BaseEstimator, ClassifierMixin

    class Precomputed(ClassifierMixin, BaseEstimator):
        """An estimator whose input already is the probabilities."""

        def fit(self, x, y):
            self.classes_ = np.arange(x.shape[1])
            return self

        def predict_proba(self, x):
            return np.asarray(x)

        def predict(self, x):
            return np.asarray(x).argmax(axis=1)

    (p_cal, y_cal), (p_test, _), cal = _reference_data()
    mapie = SplitConformalClassifier(Precomputed().fit(p_cal, y_cal), confidence_level=coverage,
                                     conformity_score="lac", prefit=True).conformalize(p_cal, y_cal)
    _, sets = mapie.predict_set(p_test)
    np.testing.assert_array_equal(sets[:, :, 0], cal.sets(p_test, "lac", False, coverage))


def test_aps_scores_and_quantile_equal_mapie():
    pytest.importorskip("mapie")
    from mapie.conformity_scores.sets.aps import APSConformityScore
    from mapie.utils import _compute_classification_quantile

    (p_cal, y_cal), _, cal = _reference_data()
    cumulative, _ = APSConformityScore.get_true_label_cumsum_proba(y_cal, p_cal, np.arange(C))
    np.testing.assert_allclose(cumulative[:, 0], true_label_scores(p_cal, y_cal, "aps"), rtol=1e-12)
    for coverage in (0.8, 0.9, 0.95):
        quantile = _compute_classification_quantile(true_label_scores(p_cal, y_cal, "aps"), np.array([1 - coverage]))
        assert cal.thresholds("aps", False, coverage)[0] == pytest.approx(float(quantile[0]), rel=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_sets_equal_crepes_marginal_and_mondrian(method):
    """crepes' conformal classifier on our scores (non-smoothed p-values; Mondrian: one per label).

    crepes keeps a label when its p-value is >= 1 - coverage, one rank more than ceil((n + 1) * coverage)
    when (n + 1)(1 - coverage) is a whole number; the coverages here avoid that boundary for every n."""
    pytest.importorskip("crepes")
    from crepes import ConformalClassifier

    (p_cal, y_cal), (p_test, _), cal = _reference_data()
    alphas, scores = true_label_scores(p_cal, y_cal, method), score_matrix(p_test, method)
    for coverage in (0.83, 0.9, 0.95):
        for n in (len(y_cal), *np.bincount(y_cal)):
            assert abs((n + 1) * (1 - coverage) - round((n + 1) * (1 - coverage))) > 1e-6
        marginal = ConformalClassifier().fit(alphas).predict_set(scores, confidence=coverage, smoothing=False)
        np.testing.assert_array_equal(marginal.astype(bool), cal.sets(p_test, method, False, coverage))
        mondrian = np.column_stack([
            ConformalClassifier().fit(alphas[y_cal == c]).predict_set(scores[:, [c]], confidence=coverage,
                                                                     smoothing=False)[:, 0] for c in range(C)])
        np.testing.assert_array_equal(mondrian.astype(bool), cal.sets(p_test, method, True, coverage))
