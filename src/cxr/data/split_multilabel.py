"""Iterative stratification of multi-label data over groups (Sechidis, Tsoumakas & Vlahavas 2011).

A random split of a multi-label set can leave a rare finding out of val or test. Iterative
stratification places, again and again, the groups holding the finding with the fewest images still
to place, each into the split that most lacks that finding (ties: the split that most lacks images,
then the earlier split). Groups (a patient's images, duplicates) stay whole, as in the single-label
split (`cxr.data.split`). Images without any finding are placed last, to fill the splits' sizes.
Deterministic given the seed.
"""

from __future__ import annotations

import numpy as np

from cxr.rundir import SPLITS


def assign_groups_multilabel(
    components: list[list[int]], y: np.ndarray, ratios: tuple[float, float, float], seed: int
) -> list[str]:
    """One split name per group (list of row indices) for multi-hot targets `y` (N, C)."""
    y = np.asarray(y, dtype=np.float64)
    counts = np.stack([y[members].sum(axis=0) for members in components]) if components else np.zeros((0, y.shape[1]))
    sizes = np.array([len(members) for members in components], dtype=np.float64)
    share = np.asarray(ratios, dtype=np.float64)[:, None]
    want = share * counts.sum(axis=0)[None, :]  # (splits, findings) positives still wanted
    want_size = share[:, 0] * sizes.sum()  # images still wanted per split
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(components))
    assignment = [""] * len(components)
    left = np.ones(len(components), dtype=bool)
    while left.any():
        remaining = counts[left].sum(axis=0)
        if not (remaining > 0).any():
            break
        finding = int(np.argmin(np.where(remaining > 0, remaining, np.inf)))
        holders = [g for g in order if left[g] and counts[g, finding] > 0]
        for g in sorted(holders, key=lambda g: -sizes[g]):  # stable: random within a size
            best = max(range(len(SPLITS)), key=lambda s: (want[s, finding], want_size[s], -s))
            _place(g, best, assignment, left, want, want_size, counts, sizes)
    for g in sorted((g for g in order if left[g]), key=lambda g: -sizes[g]):
        best = max(range(len(SPLITS)), key=lambda s: (want_size[s], -s))
        _place(g, best, assignment, left, want, want_size, counts, sizes)
    return assignment


def _place(g: int, s: int, assignment: list[str], left: np.ndarray, want: np.ndarray, want_size: np.ndarray,
           counts: np.ndarray, sizes: np.ndarray) -> None:
    assignment[g] = SPLITS[s]
    left[g] = False
    want[s] -= counts[g]
    want_size[s] -= sizes[g]
