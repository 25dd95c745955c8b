"""cxr.metrics.calibration: temperature scaling recovers a known over-confidence and lowers ECE."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from cxr.errors import CxrError
from cxr.metrics.calibration import (
    apply_temperature,
    calibrate,
    calibration_report,
    fit_temperature,
)
from cxr.metrics.classification import expected_calibration_error


def calibrated_logits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a perfectly calibrated model: labels drawn from softmax(logits) itself."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(n, 4))
    probs = softmax(logits, axis=1)
    y = (rng.random(n)[:, None] > np.cumsum(probs, axis=1)).sum(axis=1)
    return logits, y


def test_calibrated_scores_give_temperature_one() -> None:
    logits, y = calibrated_logits(4000, seed=0)
    assert fit_temperature(logits, y) == pytest.approx(1.0, abs=0.08)


def test_overconfident_logits_recover_temperature_three_and_ece_drops() -> None:
    logits, y = calibrated_logits(4000, seed=1)
    overconfident = 3.0 * logits
    t = fit_temperature(overconfident, y)
    assert t == pytest.approx(3.0, rel=0.08)
    before = softmax(overconfident, axis=1)
    after = apply_temperature(overconfident, t)
    assert expected_calibration_error(y, after) < 0.5 * expected_calibration_error(y, before)
    np.testing.assert_array_equal(after.argmax(axis=1), before.argmax(axis=1))  # decisions unchanged


def test_probabilities_and_log_probabilities_give_the_same_temperature() -> None:
    logits, y = calibrated_logits(1000, seed=2)
    probs = softmax(2.5 * logits, axis=1)
    t_logits = fit_temperature(2.5 * logits, y)
    assert fit_temperature(np.log(probs), y, kind="log_probs") == pytest.approx(t_logits, rel=1e-4)
    # Probabilities below 1e-7 are clipped before the log, which moves T a little.
    assert fit_temperature(probs, y, kind="probs") == pytest.approx(t_logits, rel=5e-3)
    mild = logits / 2.0  # no probability below the 1e-7 clip
    np.testing.assert_allclose(apply_temperature(softmax(mild, axis=1), 1.7, kind="probs"),
                               softmax(mild / 1.7, axis=1), atol=1e-9)
    np.testing.assert_allclose(apply_temperature(logits, 1.0), softmax(logits, axis=1))


def test_calibration_report_before_and_after() -> None:
    logits, y = calibrated_logits(2000, seed=3)
    val, test = slice(0, 1000), slice(1000, 2000)
    probs = softmax(3.0 * logits, axis=1)
    t, calibrated, report = calibrate(y[val], probs[val], y[test], probs[test], bins=10)
    assert report["temperature"] == t and report["bins"] == 10
    assert report["after"]["ece"] < report["before"]["ece"]
    assert report["after"]["nll"] < report["before"]["nll"]
    assert report["after"]["accuracy"] == report["before"]["accuracy"]
    assert sum(report["after"]["reliability"]["count"]) == 1000
    assert calibrated.shape == (1000, 4)
    assert calibration_report(y, probs, probs)["temperature"] is None


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda: fit_temperature(np.zeros((3, 2)), [0, 1, 0], kind="odds"), "kind"),
        (lambda: fit_temperature(np.full((2, 2), 1.5), [0, 1], kind="probs"), r"\[0, 1\]"),
        (lambda: fit_temperature(np.zeros((3, 2)), [0, 1]), "3 rows"),
        (lambda: fit_temperature(np.zeros((2, 2)), [0, 1], bounds=(0.0, 2.0)), "bounds"),
        (lambda: apply_temperature(np.zeros((2, 2)), 0.0), "temperature"),
        (lambda: calibration_report([0, 1], np.eye(2), np.ones((2, 3)) / 3), "class index|shape"),
    ],
)
def test_bad_inputs_raise_cxr_error(call, needle: str) -> None:
    with pytest.raises(CxrError, match=needle):
        call()
