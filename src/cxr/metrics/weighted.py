"""The metrics of many weighted copies of one dataset at once: the vectorised core of every bootstrap.

A resample of the N rows is a weight vector w (N,) counting how often each row was drawn; M
resamples are a matrix W (M, N). `WeightedScores(y, probs)(W)` returns every metric as an (M,)
array, so 1000 resamples cost a few matrix products instead of 1000 sklearn calls. All-ones weights
give the ordinary point estimate (the same numbers as `cxr.metrics.classification`, tested), and a
row with one sample (or a group) weighted 0 gives a jackknife value.

Count metrics (confusion, Keras counts, calibration bins) are linear in w: W @ S for a per-sample
feature matrix S. Rank metrics (ROC-AUC, average precision) sum the weights of positives and
negatives per distinct score, in descending score order, and accumulate.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import sparse

from cxr.metrics.checks import check_count, check_probs
from cxr.metrics.classification import confidence_bin_index, keras_counts

CLASS_METRICS = ("f1", "roc_auc", "average_precision")  # per-class keys: f"{name}/{class index}"


class WeightedScores:
    """Metrics of labels `y` (N,) and probabilities `probs` (N, C) under batches of row weights.

    Calling it with W (M, N) returns a dict of (M,) float arrays: accuracy, macro_f1, precision and
    recall (Keras), ece (`bins` equal-width bins), roc_auc_macro, and per class c `f1/c`, and with
    `ranking=True` also `roc_auc/c` and `average_precision/c`. NaN marks a value that is undefined
    under those weights (a class with no positive or no negative weight has no AUC).
    """

    def __init__(self, y: Any, probs: Any, bins: int = 15, ranking: bool = True) -> None:
        y, p = check_probs(y, probs)
        bins = check_count(bins, "bins")
        self.num_classes = k = p.shape[1]
        self.size = len(y)
        pred = p.argmax(axis=1)
        confidence = p.max(axis=1)
        in_bin = np.eye(bins)[confidence_bin_index(confidence, bins)]
        self._features = np.hstack([
            np.eye(k * k)[y * k + pred],  # one-hot confusion cell [true, pred]
            keras_counts(y, p),
            in_bin * confidence[:, None],
            in_bin * (pred == y)[:, None],
        ])
        self._bins = bins
        self._ranks = RankScores([(y == c, p[:, c], None) for c in range(k)]) if ranking else None

    def __call__(self, weights: Any) -> dict[str, np.ndarray]:
        w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        if w.shape[1] != self.size:
            raise ValueError(f"weights must have {self.size} columns, got shape {w.shape}")  # internal misuse
        k = self.num_classes
        sums = w @ self._features
        total = w.sum(axis=1)
        cm = sums[:, : k * k].reshape(-1, k, k)
        tp = np.diagonal(cm, axis1=1, axis2=2)
        denom = cm.sum(axis=2) + cm.sum(axis=1)  # true count + predicted count = 2TP + FP + FN
        present = denom > 0
        f1 = np.divide(2.0 * tp, denom, out=np.zeros_like(tp), where=present)
        with np.errstate(divide="ignore", invalid="ignore"):  # an all-zero row (jackknife of n=1) is NaN
            out = self._count_metrics(tp, total, f1, present, sums)
        out |= {f"f1/{c}": f1[:, c] for c in range(k)}
        if self._ranks is not None:
            out |= self._rank_metrics(w)
        return out

    def _count_metrics(
        self, tp: np.ndarray, total: np.ndarray, f1: np.ndarray, present: np.ndarray, sums: np.ndarray
    ) -> dict[str, np.ndarray]:
        k = self.num_classes
        ktp, kfp, kfn = sums[:, k * k], sums[:, k * k + 1], sums[:, k * k + 2]
        conf_sum = sums[:, k * k + 3 : k * k + 3 + self._bins]
        acc_sum = sums[:, k * k + 3 + self._bins :]
        return {
            "accuracy": tp.sum(axis=1) / total,
            "macro_f1": f1.sum(axis=1) / present.sum(axis=1),
            "precision": np.divide(ktp, ktp + kfp, out=np.zeros_like(ktp), where=ktp + kfp > 0),
            "recall": np.divide(ktp, ktp + kfn, out=np.zeros_like(ktp), where=ktp + kfn > 0),
            "ece": np.abs(acc_sum - conf_sum).sum(axis=1) / total,
        }

    def _rank_metrics(self, w: np.ndarray) -> dict[str, np.ndarray]:
        """ROC-AUC and average precision per class and weight row, and their macro mean over the
        classes defined here; NaN where a class has no positive or no negative weight."""
        per_class = self._ranks(w)
        out: dict[str, np.ndarray] = {}
        for c, (auc, ap) in enumerate(per_class):
            out[f"roc_auc/{c}"], out[f"average_precision/{c}"] = auc, ap
        out["roc_auc_macro"] = nan_mean([auc for auc, _ in per_class], w.shape[0])
        return out


def nan_mean(columns: list[np.ndarray], rows: int) -> np.ndarray:
    """Mean over the columns of each row, ignoring NaN (NaN where every column is NaN)."""
    if not columns:
        return np.full(rows, np.nan)
    stacked = np.stack(columns, axis=1)
    defined = np.isfinite(stacked)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(defined, stacked, 0.0).sum(axis=1) / defined.sum(axis=1)


class RankScores:
    """ROC-AUC and average precision of several binary problems under batches of row weights.

    Each problem is (positive (N,) bool, score (N,), valid (N,) bool or None): the rows of a class
    one-vs-rest, or of one finding of a multi-label task with its unlabelled rows left out. One sparse
    matrix sums the weights of positives and of all rows per distinct score, in descending order, so
    M weight rows cost one product. Ties count as in sklearn (half a pair for AUC; one step for AP).
    """

    def __init__(self, problems: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]) -> None:
        blocks, parts, row = [], [], 0
        for positive, score, valid in problems:
            part = self._rows(np.asarray(positive, bool), np.asarray(score, np.float64), valid)
            blocks.append(None if part is None else (row, row + part.shape[0] // 2))
            if part is not None:
                parts.append(part)
                row += part.shape[0]
        self._blocks = blocks
        self._matrix = sparse.vstack(parts, format="csr") if parts else None

    @staticmethod
    def _rows(positive: np.ndarray, score: np.ndarray, valid: np.ndarray | None) -> sparse.csr_matrix | None:
        """(2G, N) 0/1 rows: positives with the g-th highest distinct score, then all rows with it."""
        cols = np.arange(score.size) if valid is None else np.flatnonzero(valid)
        positive, score_kept = positive[cols], score[cols]
        if positive.all() or not positive.any():
            return None
        distinct, group = np.unique(-score_kept, return_inverse=True)  # group 0 = highest score
        shape = (distinct.size, score.size)
        pos = sparse.csr_matrix((positive.astype(np.float64), (group, cols)), shape=shape)
        every = sparse.csr_matrix((np.ones(cols.size), (group, cols)), shape=shape)
        return sparse.vstack([pos, every], format="csr")

    def __call__(self, w: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per problem (AUC (M,), AP (M,)) for weights (M, N); NaN where it is undefined."""
        nan = np.full(w.shape[0], np.nan)
        grouped = self._matrix @ w.T if self._matrix is not None else None  # (rows, M), descending score
        out = []
        with np.errstate(divide="ignore", invalid="ignore"):
            for block in self._blocks:
                if block is None:
                    out.append((nan, nan))
                    continue
                first, middle = block
                pos, every = grouped[first:middle], grouped[middle : 2 * middle - first]
                seen = np.cumsum(every, axis=0)  # weight at or above each score
                tp = np.cumsum(pos, axis=0)  # positive weight at or above each score
                pos_total = tp[-1].copy()  # a copy: tp is overwritten with precision below
                neg_total = seen[-1] - pos_total
                # A positive beats every negative below its score and ties half of those at its score:
                # sum_g pos_g * (neg_total - fp_g + neg_g / 2), fp_g = seen_g - tp_g, neg_g = every_g - pos_g.
                below = np.einsum("ij,ij->j", pos, seen - tp - 0.5 * (every - pos))
                auc = 1.0 - below / (pos_total * neg_total)
                np.divide(tp, seen, out=tp, where=seen > 0)  # precision at each score (0 before any weight)
                out.append((auc, np.einsum("ij,ij->j", pos, tp) / pos_total))
        return out
