"""What `Predictor.predict` accepts, checked: arrays as gray uint8, one region per image, thresholds."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cxr.checkpoint import DEFAULT_THRESHOLD
from cxr.errors import CxrError
from cxr.pixels import RGB_LUMA


def as_gray_uint8(image: np.ndarray) -> np.ndarray:
    """A uint8 (H, W) gray or (H, W, 3|4) colour array as uint8 (H, W) gray."""
    if image.dtype != np.uint8:
        raise CxrError(f"image arrays must be uint8 (0..255), got dtype {image.dtype}")
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return np.clip(np.rint(image[..., :3] @ RGB_LUMA), 0, 255).astype(np.uint8)
    raise CxrError(f"image arrays must have shape (H, W) or (H, W, 3|4), got {image.shape}")


def check_thresholds(thresholds: Sequence[float] | None, findings: list[str]) -> list[float]:
    """One threshold in [0, 1] per finding (0.5 each when none are given)."""
    if thresholds is None:
        return [DEFAULT_THRESHOLD] * len(findings)
    values = [float(t) for t in thresholds]
    if len(values) != len(findings) or not all(0.0 <= t <= 1.0 for t in values):
        raise CxrError(f"multi-label thresholds must be one value in [0, 1] per finding ({len(findings)}); "
                       f"got {list(thresholds)}")
    return values


def per_image(box: Any, boxes: Sequence[Any] | None, count: int) -> list[Any]:
    """One region per image: `box` for every image, or `boxes` (one per image)."""
    if boxes is None:
        return [box] * count
    if box is not None:
        raise CxrError("give box (one lung region for every image) or boxes (one per image), not both")
    if len(boxes) != count:
        raise CxrError(f"boxes holds {len(boxes)} lung regions for {count} images; give one per image")
    return list(boxes)


def is_single(images: Any) -> bool:
    return isinstance(images, str | Path | bytes | bytearray | memoryview | np.ndarray | Image.Image)


def source_of(item: Any) -> str | None:
    return str(item) if isinstance(item, str | Path) else None

