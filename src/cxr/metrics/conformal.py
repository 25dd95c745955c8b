"""Split conformal prediction sets from calibrated class probabilities (torch-free).

A nonconformity score s(x, y) says how unusual label y is for image x. On n calibration images
(the validation split, after temperature scaling) the score of the true label is kept; for a
coverage 1 - alpha the threshold q is the ceil((n + 1)(1 - alpha))-th smallest of them (+inf when
that rank exceeds n), and an image's set is every label with s(x, y) <= q. When calibration and
new images are exchangeable, P(true label in set) >= 1 - alpha (Vovk et al. 2005; Angelopoulos &
Bates 2021). Class-conditional (Mondrian) calibration takes q_y from the calibration images of class
y alone, so the guarantee holds within every class: the minority classes are not left to the majority.

Scores (all deterministic, non-randomised; randomised APS/RAPS would give a different set for the
same image on each call). For every score the set is exactly {y: s(x, y) <= q}. For APS/RAPS that
is not the form that also adds the label whose mass crosses q (Romano et al.'s deterministic sets,
MAPIE's include_last_label=True): never empty, but on cxr4-dev it covered 100% of the test split with
3 of 4 classes per image. The exact form keeps the coverage near nominal; its price is an empty set
for an image so confident that its top class's probability alone passes q (counted in the report):
- `lac`  (least ambiguous set-valued classifier, Sadinle et al. 2019): 1 - p_y. Smallest sets on average.
- `aps`  (adaptive prediction sets, Romano et al. 2020): the total probability of the labels ranked at
  or above y. Sets grow where the model is unsure.
- `raps` (regularised APS, Angelopoulos et al. 2021): APS + lambda * max(0, rank(y) - k_reg), which
  penalises long tails of unlikely labels.

The sorted calibration scores are kept (`ConformalCalibration`), so a set for any coverage is served
later without refitting. Every label's score of an image comes from the one function that scored
the calibration labels (`score_matrix`), so a calibration image's own set is decided on exactly the
number it was calibrated with.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cxr.errors import CxrError

METHODS = ("lac", "aps", "raps")
DEFAULT_K_REG = 1  # RAPS: labels ranked past this many are penalised
DEFAULT_LAMBDA = 0.01  # RAPS: penalty per rank past k_reg


def check_method(method: str) -> str:
    """`method` when it is one of METHODS; a CxrError listing them otherwise."""
    if method not in METHODS:
        raise CxrError(f"unknown conformal method {method!r}; allowed: {', '.join(METHODS)}")
    return method


def check_coverage(coverage: Any, where: str = "coverage") -> float:
    """`coverage` as a float strictly between 0 and 1; a CxrError naming `where` otherwise."""
    try:
        value = float(coverage)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(coverage, bool) or not 0.0 < value < 1.0:
        raise CxrError(f"{where} must be a number in (0, 1), e.g. 0.9, got {coverage!r}")
    return value


def _as_probs(probs: Any) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2 or not np.all(np.isfinite(p)):
        raise CxrError(f"conformal scores need finite probabilities of shape (N, classes >= 2), got {p.shape}")
    return p


def score_matrix(probs: Any, method: str, *, k_reg: int = DEFAULT_K_REG, lam: float = DEFAULT_LAMBDA) -> np.ndarray:
    """The nonconformity score of every label of every image, (N, C) float64 (lower = more conforming).

    APS/RAPS rank labels by decreasing probability (ties: the lower class index first, a stable sort)."""
    p = _as_probs(probs)
    if check_method(method) == "lac":
        return 1.0 - p
    order = np.argsort(-p, axis=1, kind="stable")
    cumulative = np.cumsum(np.take_along_axis(p, order, axis=1), axis=1)
    if method == "raps":
        rank = np.arange(1, p.shape[1] + 1, dtype=np.float64)  # 1-based rank of each sorted position
        cumulative = cumulative + lam * np.maximum(0.0, rank - k_reg)[None, :]
    scores = np.empty_like(p)
    np.put_along_axis(scores, order, cumulative, axis=1)
    return scores


def true_label_scores(probs: Any, y: Any, method: str, **params: Any) -> np.ndarray:
    """The score of each image's true label (N,), from `score_matrix`."""
    y = np.asarray(y, dtype=np.int64)
    matrix = score_matrix(probs, method, **params)
    if y.shape != (matrix.shape[0],) or (len(y) and (y.min() < 0 or y.max() >= matrix.shape[1])):
        raise CxrError(f"labels must be {matrix.shape[0]} class indices in [0, {matrix.shape[1]}), got shape {y.shape}")
    return matrix[np.arange(len(y)), y]


def conformal_rank(n: int, coverage: float) -> int:
    """The rank k = ceil((n + 1) * coverage) of the threshold among n sorted scores (k > n: no finite one).

    A tiny tolerance keeps k exact when (n + 1) * coverage is an integer up to floating point
    (n = 9, coverage 0.9 gives k = 9, not 10)."""
    return int(math.ceil((n + 1) * check_coverage(coverage) - 1e-9))


def conformal_quantile(sorted_scores: np.ndarray, coverage: float) -> float:
    """The split-conformal threshold: the ceil((n + 1) * coverage)-th smallest score, +inf when that rank
    is past n (too few calibration images for this coverage: every label goes in the set)."""
    k = conformal_rank(len(sorted_scores), coverage)
    return float(sorted_scores[k - 1]) if k <= len(sorted_scores) else math.inf


@dataclass(frozen=True)
class ConformalCalibration:
    """The sorted true-label calibration scores of every method, overall and per class, and how they were made.

    `method`/`mondrian`/`coverage` are the defaults `sets` uses; any other is served from the same scores."""

    classes: tuple[str, ...]
    scores: Mapping[str, np.ndarray]  # method -> sorted scores of all calibration images
    class_scores: Mapping[str, Mapping[str, np.ndarray]]  # method -> class -> sorted scores of its images
    method: str = "lac"
    mondrian: bool = False
    coverage: float = 0.9
    k_reg: int = DEFAULT_K_REG
    lam: float = DEFAULT_LAMBDA
    record: Mapping[str, Any] = field(default_factory=dict)  # where it was fitted (split, images)

    @property
    def n(self) -> int:
        """Calibration images."""
        return len(next(iter(self.scores.values())))

    def resolve(self, method: str | None, mondrian: bool | None, coverage: float | None) -> tuple[str, bool, float]:
        """The defaults for the arguments left None, checked."""
        method = check_method(self.method if method is None else method)
        if method not in self.scores:
            raise CxrError(f"no calibration scores for method {method!r}; stored: {', '.join(self.scores)}")
        return method, self.mondrian if mondrian is None else bool(mondrian), check_coverage(
            self.coverage if coverage is None else coverage)

    def thresholds(self, method: str | None = None, mondrian: bool | None = None,
                   coverage: float | None = None) -> np.ndarray:
        """One threshold per class (C,): all equal, or (Mondrian) each from its class's calibration images."""
        method, mondrian, coverage = self.resolve(method, mondrian, coverage)
        if not mondrian:
            return np.full(len(self.classes), conformal_quantile(self.scores[method], coverage))
        per_class = self.class_scores[method]
        return np.array([conformal_quantile(per_class.get(c, np.zeros(0)), coverage) for c in self.classes])

    def sets(self, probs: Any, method: str | None = None, mondrian: bool | None = None,
             coverage: float | None = None) -> np.ndarray:
        """Prediction sets as a boolean (N, C) membership matrix."""
        method, mondrian, coverage = self.resolve(method, mondrian, coverage)
        matrix = score_matrix(probs, method, k_reg=self.k_reg, lam=self.lam)
        if matrix.shape[1] != len(self.classes):
            raise CxrError(f"probabilities have {matrix.shape[1]} classes, the calibration {len(self.classes)}")
        return matrix <= self.thresholds(method, mondrian, coverage)[None, :]

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and numbers (for a checkpoint's extra, loaded with weights_only=True)."""
        return {
            "classes": list(self.classes), "method": self.method, "mondrian": self.mondrian,
            "coverage": self.coverage, "k_reg": self.k_reg, "lambda": self.lam, "n": self.n,
            "scores": {m: [float(v) for v in s] for m, s in self.scores.items()},
            "class_scores": {m: {c: [float(v) for v in s] for c, s in per.items()} for m, per in self.class_scores.items()},
            **dict(self.record),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConformalCalibration:
        """The inverse of `to_dict`; a CxrError for a record that is not one."""
        try:
            scores = {check_method(m): np.sort(np.asarray(s, dtype=np.float64)) for m, s in data["scores"].items()}
            class_scores = {m: {str(c): np.sort(np.asarray(s, dtype=np.float64)) for c, s in per.items()}
                            for m, per in data["class_scores"].items()}
            known = {"classes", "method", "mondrian", "coverage", "k_reg", "lambda", "n", "scores", "class_scores"}
            return cls(tuple(data["classes"]), scores, class_scores, method=check_method(data["method"]),
                       mondrian=bool(data["mondrian"]), coverage=check_coverage(data["coverage"]),
                       k_reg=int(data["k_reg"]), lam=float(data["lambda"]),
                       record={k: v for k, v in data.items() if k not in known})
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise CxrError(f"not a conformal calibration record ({exc!r})") from None


def calibrate_conformal(
    probs: Any, y: Any, classes: Sequence[str], *, method: str = "lac", mondrian: bool = False, coverage: float = 0.9,
    k_reg: int = DEFAULT_K_REG, lam: float = DEFAULT_LAMBDA, methods: Sequence[str] = METHODS,
    record: Mapping[str, Any] | None = None,
) -> ConformalCalibration:
    """Calibration scores of every method in `methods` on (probs, y), overall and per class."""
    if k_reg < 0 or not (math.isfinite(lam) and lam >= 0):
        raise CxrError(f"RAPS needs k_reg >= 0 and lambda >= 0, got k_reg={k_reg}, lambda={lam}")
    y = np.asarray(y, dtype=np.int64)
    if len(y) == 0:
        raise CxrError("conformal calibration needs at least one calibration image")
    scores, class_scores = {}, {}
    for m in dict.fromkeys([check_method(method), *methods]):
        s = true_label_scores(probs, y, m, k_reg=k_reg, lam=lam)
        scores[m] = np.sort(s)
        class_scores[m] = {c: np.sort(s[y == i]) for i, c in enumerate(classes)}
    return ConformalCalibration(tuple(classes), scores, class_scores, method=method, mondrian=mondrian,
                                coverage=check_coverage(coverage), k_reg=int(k_reg), lam=float(lam),
                                record=dict(record or {}))
