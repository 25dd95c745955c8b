"""cxr.metrics.compare: McNemar and Newcombe against published/hand values, the paired bootstrap."""

from __future__ import annotations

import json
from math import comb

import numpy as np
import pytest

from cxr.errors import CxrError
from cxr.metrics.compare import (
    bootstrap_p_value,
    compare_predictions,
    mcnemar_exact,
    paired_accuracy_interval,
)


def paired_rows(both: int, a_only: int, b_only: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    correct_a = np.array([1] * both + [1] * a_only + [0] * b_only + [0] * neither, dtype=bool)
    correct_b = np.array([1] * both + [0] * a_only + [1] * b_only + [0] * neither, dtype=bool)
    return correct_a, correct_b


def test_mcnemar_exact_is_the_binomial_of_discordant_pairs() -> None:
    # Cavo et al. 2012 (Fagerland, Lydersen & Laake, ch. 8): 59 both, 6 only A, 16 only B, 80 neither.
    test = mcnemar_exact(*paired_rows(59, 6, 16, 80))
    by_hand = 2 * sum(comb(22, k) for k in range(7)) / 2**22  # two-sided, P(X <= 6 | 22, 1/2) twice
    assert test["p_value"] == pytest.approx(by_hand, rel=1e-12)
    assert test["p_value"] == pytest.approx(0.0525, abs=1e-4)
    assert (test["a_only_correct"], test["b_only_correct"]) == (6, 16)
    assert mcnemar_exact(*paired_rows(10, 0, 0, 3))["p_value"] == 1.0


def test_newcombe_interval_matches_the_published_example() -> None:
    # Same table; Fagerland et al. report -0.0621 (95% CI -0.1186 to -0.0046).
    lo, hi = paired_accuracy_interval(59, 6, 16, 80)
    assert lo == pytest.approx(-0.1186, abs=5e-5) and hi == pytest.approx(-0.0046, abs=5e-5)
    lo, hi = paired_accuracy_interval(40, 0, 0, 8)  # no discordant row: still a width
    assert lo < 0 < hi
    with pytest.raises(CxrError, match="counts"):
        paired_accuracy_interval(0, 0, 0, 0)


def test_identical_predictions_differ_by_zero_with_p_one(softmax_data) -> None:
    y, probs = softmax_data(120, seed=1)
    pred = probs.argmax(axis=1)
    result = compare_predictions(y, pred, pred, probs, probs, n_boot=200, seed=0)
    for key in ("accuracy", "macro_f1", "roc_auc_macro"):
        assert result[key]["difference"] == 0.0
        assert result[key]["p_value"] == 1.0
    assert result["macro_f1"]["ci"] == [0.0, 0.0]
    assert result["accuracy"]["mcnemar"]["a_only_correct"] == 0
    json.dumps(result, allow_nan=False)


def test_a_clearly_better_than_b(softmax_data) -> None:
    y, probs_a = softmax_data(400, signal=3.0, seed=2)
    rng = np.random.default_rng(3)
    probs_b = 0.5 * probs_a + 0.5 * rng.dirichlet(np.ones(4), size=400)
    pred_a, pred_b = probs_a.argmax(axis=1), probs_b.argmax(axis=1)
    result = compare_predictions(y, pred_a, pred_b, probs_a, probs_b, n_boot=400, seed=1)
    for key in ("accuracy", "macro_f1", "roc_auc_macro"):
        row = result[key]
        assert row["difference"] > 0 and row["ci"][0] > 0, key
        assert row["p_value"] < 0.01, key
    swapped = compare_predictions(y, pred_b, pred_a, n_boot=400, seed=1)
    assert swapped["macro_f1"]["difference"] == pytest.approx(-result["macro_f1"]["difference"])
    assert swapped["roc_auc_macro"] is None  # no probabilities given


def test_bootstrap_p_value() -> None:
    assert bootstrap_p_value(np.zeros(10)) == 1.0
    assert bootstrap_p_value(np.ones(999)) == pytest.approx(2 / 1000)
    assert bootstrap_p_value(np.r_[-np.ones(50), np.ones(50)]) == 1.0


def test_compare_rejects_mismatched_inputs() -> None:
    with pytest.raises(CxrError, match="same length"):
        compare_predictions([0, 1, 1], [0, 1], [0, 1, 0])
    with pytest.raises(CxrError, match="both runs"):
        compare_predictions([0, 1], [0, 1], [0, 1], probs_a=np.eye(2))
