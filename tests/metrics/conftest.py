"""Shared data for the cxr.metrics tests: labels and softmax probabilities of a decent classifier."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest


def _softmax_data(n: int, num_classes: int = 4, signal: float = 2.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, n)
    logits = rng.normal(size=(n, num_classes))
    logits[np.arange(n), y] += signal
    probs = np.exp(logits)
    return y, probs / probs.sum(axis=1, keepdims=True)


@pytest.fixture
def softmax_data() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """Factory (n, num_classes=4, signal=2.0, seed=0) -> labels (n,), probabilities (n, C) where the
    true class gets a logit bonus of `signal`."""
    return _softmax_data
