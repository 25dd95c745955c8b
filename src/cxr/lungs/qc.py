"""Quality control of a predicted lung mask: four numbers and an `ok` / `suspect` flag.

The numbers are computed from the model's lung probability map (any size; the segmenter passes its
own working resolution):
- `area_fraction`: share of the image called lung (probability >= 0.5);
- `parts`: connected lung parts larger than `MIN_PART` of the image (two lungs: 2);
- `balance`: smaller / larger of the lung areas in the image's left and right halves (1 = equal,
  0 = one side empty);
- `confidence`: mean |2p - 1| over the pixels the model thought could be lung (p >= 0.05): near 1
  for a crisp mask, low when the model hesitates, as it does on pictures that are not chest X-rays.

The flag rules (`RULES`) were chosen by measurement with the default model (see
`cxr/lungs/weights/MODEL_CARD.md`): on the 141 held-out lungseg X-rays every mask had 2 parts, an
area of 11.6-38.4%, balance >= 0.58 and confidence >= 0.88; on 300 cxr4-dev and 150 nih-dev X-rays
areas stayed within 7.6-40.5%. The 27 scikit-image sample pictures fell outside in one way or
another: most drew (almost) no lungs or lungs everywhere, a face or a cat many parts, a document
(`page`) one part, a stained tissue (`immunohistochemistry`) half the picture.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

THRESHOLD = 0.5  # probability at or over which a pixel is lung
CANDIDATE = 0.05  # probability over which a pixel counts towards `confidence`
MIN_PART = 0.005  # a connected part smaller than this share of the image is not counted


@dataclass(frozen=True)
class Rules:
    """The limits outside which a mask is `suspect` (each a measured choice)."""

    min_area: float = 0.06  # lungs cover 8-43% of a lungseg X-ray; seen on X-rays: 7.6-40.5%
    max_area: float = 0.45
    min_parts: int = 2  # two lungs (every held-out lungseg X-ray had exactly 2)
    max_parts: int = 3  # a third part is tolerated (a lung split by a dense opacity)
    min_balance: float = 0.3  # one lung much smaller than the other (held-out X-rays: >= 0.58)
    min_confidence: float = 0.75  # the model hesitated over the mask (held-out X-rays: >= 0.88)


RULES = Rules()


@dataclass(frozen=True)
class LungQC:
    """Quality numbers of one mask and the flag made from them."""

    area_fraction: float  # share of the image that is lung
    parts: int  # connected lung parts (>= MIN_PART of the image)
    balance: float  # smaller / larger lung area of the two image halves, 0..1
    confidence: float  # mean |2p - 1| over candidate pixels, 0..1
    flag: str  # 'ok' | 'suspect'
    reason: str  # why suspect ('' when ok)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def ok(self) -> bool:
        return self.flag == "ok"


def count_parts(mask: np.ndarray, min_fraction: float = MIN_PART) -> int:
    """Connected parts (8-connectivity) of a boolean mask holding at least `min_fraction` of its pixels."""
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return 0
    sizes = np.bincount(labels.ravel())[1:]
    return int((sizes >= min_fraction * mask.size).sum())


def side_balance(mask: np.ndarray) -> float:
    """Smaller / larger of the mask's areas in the left and right halves of the image (0 when empty)."""
    half = mask.shape[1] // 2
    left, right = float(mask[:, :half].sum()), float(mask[:, mask.shape[1] - half:].sum())
    high = max(left, right)
    return min(left, right) / high if high > 0 else 0.0


def mean_confidence(prob: np.ndarray) -> float:
    """Mean |2p - 1| over pixels with p >= CANDIDATE (0 when there are none)."""
    candidates = prob[prob >= CANDIDATE]
    return float(np.abs(2.0 * candidates - 1.0).mean()) if candidates.size else 0.0


def flag_reason(area: float, parts: int, balance: float, confidence: float, rules: Rules = RULES) -> str:
    """Why these numbers are suspect ('' when they are not): the first rule broken."""
    if area < rules.min_area:
        return f"lung area {area:.1%} < {rules.min_area:.0%}"
    if area > rules.max_area:
        return f"lung area {area:.1%} > {rules.max_area:.0%}"
    if balance < rules.min_balance:
        return f"left/right balance {balance:.2f} < {rules.min_balance}"
    if not rules.min_parts <= parts <= rules.max_parts:
        return f"{parts} lung parts (expected {rules.min_parts}-{rules.max_parts})"
    if confidence < rules.min_confidence:
        return f"confidence {confidence:.2f} < {rules.min_confidence}"
    return ""


def lung_qc(prob: np.ndarray, rules: Rules = RULES) -> LungQC:
    """The quality numbers and flag of a lung probability map (H, W) with values in [0, 1]."""
    prob = np.asarray(prob, dtype=np.float32)
    if prob.ndim != 2 or prob.size == 0:
        raise ValueError(f"lung_qc expects a 2-D probability map, got shape {prob.shape}")
    mask = prob >= THRESHOLD
    area = float(mask.mean())
    parts = count_parts(mask)
    balance = side_balance(mask)
    confidence = mean_confidence(prob)
    reason = flag_reason(area, parts, balance, confidence, rules)
    return LungQC(area_fraction=area, parts=parts, balance=balance, confidence=confidence,
                  flag="suspect" if reason else "ok", reason=reason)
