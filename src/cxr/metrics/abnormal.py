"""Abnormal against Normal on a set that may hold classes the model does not have (torch-free).

A foreign set may hold images that are abnormal but of none of the model's classes (tuberculosis for
a COVID model: a label map's `TB: abnormal`, `cxr.data.labelmap`). Such an image has no "correct"
class, but it must not be called Normal. Two figures use it:
- "abnormal vs Normal" ROC-AUC of the score 1 - p(Normal): true Normal images against every other
  image (the model's other classes and the foreign abnormal ones), with a stratified BCa bootstrap
  interval;
- the "called Normal" rate: the share of true Normal images whose predicted class is Normal (Normal
  recall; a Wilson interval), and per foreign class the share called anything but Normal.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cxr.errors import CxrError
from cxr.metrics.intervals import stratified_bootstrap, wilson_interval
from cxr.metrics.weighted import RankScores

ALPHA = 0.05
NORMAL = "Normal"


def called_normal(predicted: Sequence[str] | np.ndarray, truth: Sequence[str] | np.ndarray) -> dict[str, Any]:
    """{n, called, rate, ci}: how many true Normal images were predicted Normal (Wilson interval)."""
    pred, true = np.asarray(predicted, dtype=object), np.asarray(truth, dtype=object)
    normal = true == NORMAL
    n, hits = int(normal.sum()), int(np.sum(normal & (pred == NORMAL)))
    return {"n": n, "called": hits, "rate": hits / n if n else None, "ci": wilson_interval(hits, n, ALPHA)}


def abnormal_auroc(p_normal: Any, is_normal: Any, *, n_boot: int = 1000, seed: int = 0) -> tuple[float | None,
                                                                                               list[float] | None]:
    """ROC-AUC of 1 - p(Normal) for abnormal (positive) against Normal images, and its bootstrap interval
    (resampled within the two groups); (None, None) without both groups."""
    score = 1.0 - np.asarray(p_normal, dtype=np.float64)
    positive = ~np.asarray(is_normal, dtype=bool)
    if positive.all() or not positive.any():
        return None, None
    ranks = RankScores([(positive, score, None)])

    def statistic(w: np.ndarray) -> dict[str, np.ndarray]:
        return {"auc": ranks(np.atleast_2d(w))[0][0]}

    point = float(statistic(np.ones((1, score.size)))["auc"][0])
    if not n_boot:
        return point, None
    return point, stratified_bootstrap(positive.astype(np.int64), statistic, n_boot, seed, ALPHA)["auc"].ci


def abnormal_summary(
    truth: Sequence[str], probs: Any, classes: Sequence[str], foreign: Sequence[str] = (), *,
    n_boot: int = 1000, seed: int = 0,
) -> dict[str, Any]:
    """The figures of the module docstring for true labels `truth` (model classes or `foreign` names)
    and probabilities (N, C) over `classes`.

    Keys: called_normal {n, called, rate, ci}, abnormal_auroc, abnormal_auroc_ci, n_normal, n_abnormal,
    foreign {name: {n, called_abnormal, rate, ci, predicted {class: count}}}.
    """
    p = np.asarray(probs, dtype=np.float64)
    truth = np.asarray([str(t) for t in truth], dtype=object)
    classes = [str(c) for c in classes]
    if p.ndim != 2 or p.shape != (truth.size, len(classes)):
        raise CxrError(f"probabilities of shape {p.shape} do not match {truth.size} labels and {len(classes)} classes")
    unknown = sorted(set(truth.tolist()) - set(classes) - set(foreign))
    if unknown:
        raise CxrError(f"labels {unknown} are neither classes of the model ({', '.join(classes)}) nor foreign "
                       f"abnormal classes ({', '.join(foreign) or 'none'})")
    if NORMAL not in classes:
        raise CxrError(f"abnormal vs Normal needs a class named {NORMAL!r} among {', '.join(classes)}")
    pred = np.asarray(classes, dtype=object)[p.argmax(axis=1)] if truth.size else np.array([], dtype=object)
    is_normal = truth == NORMAL
    auc, auc_ci = abnormal_auroc(p[:, classes.index(NORMAL)], is_normal, n_boot=n_boot, seed=seed)
    out: dict[str, Any] = {"called_normal": called_normal(pred, truth), "abnormal_auroc": auc,
                           "abnormal_auroc_ci": auc_ci, "n_normal": int(is_normal.sum()),
                           "n_abnormal": int((~is_normal).sum()), "foreign": {}}
    for name in foreign:
        rows = truth == name
        n, hits = int(rows.sum()), int(np.sum(rows & (pred != NORMAL)))
        if not n:
            continue
        counts = {c: int(np.sum(pred[rows] == c)) for c in classes}
        out["foreign"][name] = {"n": n, "called_abnormal": hits, "rate": hits / n,
                                "ci": wilson_interval(hits, n, ALPHA), "predicted": counts}
    return out
