"""Out-of-distribution scores on the backbone's pooled features (torch-free).

Fitted on the training split's features, its threshold chosen on the validation split so that a
share `accept` (0.95 by default) of in-distribution images is accepted. A higher score is more
unusual; an image scoring over the threshold is out of distribution.

Methods (compared on `bench/ood.py`'s battery; README "Inputs that are not chest X-rays"):
- `mahalanobis` (the default): the Mahalanobis distance under a probabilistic-PCA covariance: the
  `components` leading eigenvectors of the training features' covariance keep their variances, the
  rest share their mean (a shrinkage that keeps the stored state small and the inverse stable);
- `knn`: the distance from the L2-normalised features to their k-th nearest training neighbour
  (a subsample of the training split is stored);
- `energy`: minus the log-sum-exp of the logits (no features needed; weak on far-away inputs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cxr.errors import CxrError

METHODS = ("mahalanobis", "knn", "energy")
DEFAULT_METHOD = "mahalanobis"
DEFAULT_ACCEPT = 0.95
DEFAULT_COMPONENTS = 64
KNN_K = 10
KNN_STORED = 1500  # training images the knn method keeps


@dataclass
class FeatureDetector:
    """A fitted detector: its method, state arrays, and the threshold chosen on validation."""

    method: str
    arrays: dict[str, np.ndarray]
    threshold: float = float("inf")
    accept: float = DEFAULT_ACCEPT  # share of validation images the threshold accepts
    info: dict[str, Any] = field(default_factory=dict)  # how it was fitted (counts, dimensions)

    @property
    def needs_features(self) -> bool:
        return self.method != "energy"

    def score(self, features: np.ndarray | None, logits: np.ndarray | None = None) -> np.ndarray:
        """(N,) scores, higher = further from the training data."""
        if self.method == "energy":
            return _energy(_matrix(logits, "logits"))
        x = _matrix(features, "features")
        a = self.arrays
        if x.shape[1] != a["mean"].shape[0]:
            raise CxrError(f"the detector was fitted on {a['mean'].shape[0]} features, got {x.shape[1]}")
        if self.method == "knn":
            return _knn_distance(_unit(x), a["bank"].astype(np.float32), int(self.info.get("k", KNN_K)))
        centred = x - a["mean"]
        projected = centred @ a["components"]
        residual = np.maximum((centred * centred).sum(1) - (projected * projected).sum(1), 0.0)
        return (projected * projected / a["variances"]).sum(1) + residual / float(np.reshape(a["noise"], -1)[0])

    def flags(self, features: np.ndarray | None, logits: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The scores and whether each is over the threshold (out of distribution)."""
        scores = self.score(features, logits)
        return scores, scores > self.threshold

    def calibrate(self, features: np.ndarray | None, logits: np.ndarray | None = None,
                  accept: float = DEFAULT_ACCEPT) -> FeatureDetector:
        """Choose the threshold that accepts a share `accept` of these (validation) images."""
        if not 0.5 <= accept < 1.0:
            raise CxrError(f"the share of in-distribution images to accept must be in [0.5, 1), got {accept}")
        scores = self.score(features, logits)
        self.threshold = float(np.quantile(scores, accept, method="higher"))
        self.accept = float(accept)
        self.info["val_images"] = int(len(scores))
        return self

    def to_state(self) -> dict[str, Any]:
        """Plain values and float32 arrays (the checkpoint layer stores the arrays as tensors)."""
        return {"method": self.method, "threshold": self.threshold, "accept": self.accept, "info": dict(self.info),
                "arrays": {k: np.asarray(v, dtype=np.float32) for k, v in self.arrays.items()}}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> FeatureDetector:
        method = str(state.get("method"))
        if method not in METHODS:
            raise CxrError(f"unknown out-of-distribution method {method!r}; allowed: {', '.join(METHODS)}")
        arrays = {k: np.asarray(v, dtype=np.float32) for k, v in (state.get("arrays") or {}).items()}
        return cls(method, arrays, float(state["threshold"]), float(state.get("accept", DEFAULT_ACCEPT)),
                   dict(state.get("info") or {}))

    def describe(self) -> dict[str, Any]:
        """For the model card: method, threshold, accepted share, what it was fitted on."""
        return {"method": self.method, "threshold": round(self.threshold, 4), "accept": self.accept, **self.info}


def fit_detector(features: np.ndarray | None, logits: np.ndarray | None = None, method: str = DEFAULT_METHOD,
                 *, components: int = DEFAULT_COMPONENTS, seed: int = 0) -> FeatureDetector:
    """Fit `method` on the training split's pooled features (N, C) (energy: nothing to fit)."""
    if method not in METHODS:
        raise CxrError(f"unknown out-of-distribution method {method!r}; allowed: {', '.join(METHODS)}")
    if method == "energy":
        return FeatureDetector(method, {}, info={"train_images": 0 if logits is None else len(logits)})
    x = _matrix(features, "features").astype(np.float64)
    if len(x) < 3:
        raise CxrError(f"fitting the out-of-distribution detector needs at least 3 training images, got {len(x)}")
    info: dict[str, Any] = {"train_images": int(len(x)), "features": int(x.shape[1])}
    if method == "knn":
        keep = np.random.default_rng(seed).permutation(len(x))[:KNN_STORED]
        info["k"] = min(KNN_K, len(keep) - 1)
        return FeatureDetector(method, {"mean": x.mean(0), "bank": _unit(x[np.sort(keep)]).astype(np.float16)},
                               info=info)
    mean = x.mean(0)
    _, singular, vt = np.linalg.svd(x - mean, full_matrices=False)
    eigen = singular**2 / max(1, len(x) - 1)
    k = int(min(components, len(eigen) - 1))
    tail = eigen[k:]
    noise = float(tail.mean()) if len(tail) and tail.mean() > 0 else float(eigen[:k].min())
    info["components"] = k
    return FeatureDetector(method, {"mean": mean, "components": vt[:k].T, "variances": np.maximum(eigen[:k], 1e-12),
                                    "noise": np.asarray(max(noise, 1e-12))}, info=info)


def _matrix(values: np.ndarray | None, what: str) -> np.ndarray:
    if values is None:
        raise CxrError(f"this out-of-distribution detector needs the {what}")
    x = np.asarray(values, dtype=np.float32 if what == "features" else np.float64)
    if x.ndim != 2 or not np.isfinite(x).all():
        raise CxrError(f"{what} must be a finite (N, C) array, got shape {x.shape}")
    return x


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _knn_distance(x: np.ndarray, bank: np.ndarray, k: int) -> np.ndarray:
    """Euclidean distance of each unit row of `x` to its k-th nearest row of `bank`."""
    similarity = x @ bank.T
    kth = -np.partition(-similarity, k - 1, axis=1)[:, k - 1]
    return np.sqrt(np.maximum(2.0 - 2.0 * kth, 0.0))


def _energy(logits: np.ndarray) -> np.ndarray:
    top = logits.max(1)
    return -(top + np.log(np.exp(logits - top[:, None]).sum(1)))
