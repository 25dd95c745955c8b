"""What a predictor does about inputs that are not chest X-rays: every answer carries
`in_distribution` and a `reason` (`Prediction`), from the cheap image checks (`image_checks`) and
the checkpoint's feature detector (`detector`, stored in best.pt's `extra["ood"]`).

The features come from the same backbone pass as the logits (`forward`), never from a second one:
PyTorch computes the pooled features and applies the head to them; an exported engine is asked for
the pooled features (`engine_output`) and the small head runs in PyTorch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from cxr.ood.detector import FeatureDetector
from cxr.ood.fit import detector_of, pooled_and_logits
from cxr.ood.image_checks import DEFAULT_CHECKS, ImageCheckConfig, colour_reason, gray_reasons

IN_DISTRIBUTION = "in distribution"


class OodGuard:
    """The checks of one predictor; `features`/`logits` hold the last batch's (first view under TTA)."""

    def __init__(self, detector: FeatureDetector | None = None, checks: ImageCheckConfig = DEFAULT_CHECKS) -> None:
        self.detector = detector
        self.checks = checks
        self.features: np.ndarray | None = None
        self.logits: np.ndarray | None = None

    @classmethod
    def from_extra(cls, extra: dict[str, Any] | None) -> OodGuard:
        return cls(detector_of(extra))

    @property
    def wants_features(self) -> bool:
        return self.detector is not None and self.detector.needs_features

    def engine_output(self, name: str) -> str:
        """What an exported engine should return: pooled features when the detector needs them (the
        head then runs in PyTorch); logits for openvino-int8, whose acceptance test scores logits."""
        return "features" if self.wants_features and name != "openvino-int8" else "logits"

    def begin(self) -> None:
        """Forget the last batch (called before each batch is scored)."""
        self.features = self.logits = None

    def forward(self, model: nn.Module, x: torch.Tensor, engine: Any = None) -> torch.Tensor:
        """Logits of `x` from one backbone pass, keeping its pooled features (first call of a batch)."""
        if engine is not None:
            feats = engine(x).float()
            logits = model.forward_head(feats.to(next(model.parameters()).device)).float()
        else:
            feats, logits = pooled_and_logits(model, x)
        if self.features is None:
            self.features = feats.detach().float().cpu().numpy()
            self.logits = logits.detach().float().cpu().numpy()
        return logits

    def input_reasons(self, original: Any, gray: np.ndarray) -> list[str]:
        """The image checks: colour on the input as given (path, bytes, PIL, array), the rest on its gray."""
        colour = colour_reason(original, self.checks)
        return ([colour] if colour else []) + gray_reasons(gray, self.checks)

    def judge(self, predictions: Sequence[Any], reasons: Sequence[Sequence[str]] | None = None) -> list[Any]:
        """`predictions` with `in_distribution`, `reason` and `ood_score` (score / threshold: over 1 is
        out of distribution) from the image checks' `reasons` (one list per image) and the last batch's features."""
        n = len(predictions)
        reasons = [list(r) for r in reasons] if reasons is not None else [[] for _ in range(n)]
        scores: list[float | None] = [None] * n
        detector = self.detector
        if detector is not None and (self.features is not None or not detector.needs_features):
            if (self.features is not None and len(self.features) == n) or (self.logits is not None and len(self.logits) == n):
                raw, flagged = detector.flags(self.features, self.logits)
                for i in range(n):
                    scores[i] = float(raw[i] / detector.threshold) if detector.threshold > 0 else float(raw[i])
                    if flagged[i]:
                        reasons[i].append(f"unlike the training X-rays ({detector.method} score {raw[i]:.4g} over "
                                          f"the threshold {detector.threshold:.4g})")
        return [dataclasses.replace(p, in_distribution=not r, reason="; ".join(r) if r else IN_DISTRIBUTION,
                                    ood_score=None if s is None else round(s, 4))
                for p, r, s in zip(predictions, reasons, scores, strict=True)]

    def describe(self) -> dict[str, Any]:
        """The model card's `ood` entry."""
        card: dict[str, Any] = {"image_checks": dataclasses.asdict(self.checks)}
        card["detector"] = self.detector.describe() if self.detector is not None else None
        if self.detector is None:
            card["note"] = "no feature detector in this checkpoint (cxr evaluate --fit-ood adds one): image checks only"
        return card


def with_reasons(prediction: Any, extra: Sequence[str]) -> Any:
    """`prediction` with more reasons (e.g. the server's colour check of the upload) added."""
    if not extra:
        return prediction
    old = [] if prediction.in_distribution in (None, True) else [prediction.reason]
    return dataclasses.replace(prediction, in_distribution=False, reason="; ".join([*extra, *old]))
