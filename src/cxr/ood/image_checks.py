"""Cheap checks that an input image can be a chest radiograph at all (torch-free).

A radiograph is grey, has a usable range of grey levels and is not far from square. These checks
run on what the user gave, before the feature detector: colour is judged on the input *before* the
grayscale conversion of `cxr.io` (a colour photo becomes a plausible grey image there), the rest on
the uint8 grayscale image. Each failed check gives a reason string; an empty list means all passed.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_COLOUR_SIDE = 64  # colour is judged on a thumbnail no larger than this


@dataclass(frozen=True)
class ImageCheckConfig:
    """Limits of the cheap checks (defaults hold for every cxr4-dev, Montgomery, Shenzhen and NIH image)."""

    max_colour: float = 6.0  # mean over pixels of the largest channel difference (0..255)
    max_colour_share: float = 0.10  # share of pixels whose channel difference exceeds `colour_pixel`
    colour_pixel: int = 24  # a pixel this far from grey counts as coloured
    min_spread: float = 24.0  # grey levels between the 1st and 99th percentile
    min_std: float = 6.0  # standard deviation of the grey levels
    min_levels: int = 24  # distinct grey levels (drawings and graphics have few)
    max_aspect: float = 2.0  # longer side / shorter side
    min_neighbour_corr: float = 0.3  # correlation of horizontally adjacent pixels (noise: about 0)
    min_polarity: float = -0.2  # (mediastinum - lung fields) / std: below it the grey levels look inverted


DEFAULT_CHECKS = ImageCheckConfig()


def colour_reason(image: Any, cfg: ImageCheckConfig = DEFAULT_CHECKS) -> str | None:
    """Why `image` (a path, encoded bytes, a PIL image or a uint8 array) is a colour picture, or None.

    Files are opened lazily: a greyscale file is never decoded here; a colour one is decoded to a
    small thumbnail (JPEG's DCT scaling where it can). DICOM and unreadable inputs return None (the
    decoder names those).
    """
    rgb = _rgb_thumbnail(image)
    if rgb is None:
        return None
    rgb = rgb.astype(np.int16)
    spread = rgb.max(axis=2) - rgb.min(axis=2)
    mean, share = float(spread.mean()), float((spread > cfg.colour_pixel).mean())
    if mean > cfg.max_colour or share > cfg.max_colour_share:
        return f"colour image (mean channel difference {mean:.1f}, {share:.0%} coloured pixels): X-rays are grey"
    return None


def gray_reasons(gray: np.ndarray, cfg: ImageCheckConfig = DEFAULT_CHECKS) -> list[str]:
    """Reasons the uint8 (H, W) image cannot be a radiograph: near-constant, too few grey levels,
    extreme aspect ratio. Empty when it passes."""
    reasons = []
    height, width = gray.shape[:2]
    aspect = max(height, width) / max(1, min(height, width))
    if aspect > cfg.max_aspect:
        reasons.append(f"aspect ratio {aspect:.1f} (over {cfg.max_aspect:g}): not a chest X-ray's shape")
    sample = gray[:: max(1, height // 128), :: max(1, width // 128)]  # enough pixels for the statistics
    hist = np.bincount(sample.ravel(), minlength=256)
    cum = np.cumsum(hist) / sample.size
    lo, hi = int(np.searchsorted(cum, 0.01)), int(np.searchsorted(cum, 0.99))
    values = np.arange(256, dtype=np.float64)
    mean = float(hist @ values) / sample.size
    std = float(np.sqrt(max(float(hist @ (values - mean) ** 2) / sample.size, 0.0)))
    if hi - lo < cfg.min_spread or std < cfg.min_std:
        reasons.append(f"near-constant image (grey levels {lo}..{hi}, std {std:.1f})")
    else:
        levels = int(np.count_nonzero(hist))
        if levels < cfg.min_levels:
            reasons.append(f"only {levels} grey levels: a drawing or graphic, not a radiograph")
        corr = neighbour_correlation(gray)
        if corr < cfg.min_neighbour_corr:
            reasons.append(f"noise-like image (adjacent pixels correlate {corr:.2f})")
        elif (polarity := mediastinum_contrast(gray)) < cfg.min_polarity:
            reasons.append(f"grey levels look inverted (the middle is darker than the lung fields: {polarity:.2f})")
    return reasons


def mediastinum_contrast(gray: np.ndarray) -> float:
    """(mean of the central vertical band - mean of the two lung bands) / std, on a 64 x 64 copy.

    In a frontal chest X-ray the mediastinum and spine are brighter than the lung fields (positive;
    under -0.2 in 0.6% of 1,610 cxr4-dev and none of 808 Montgomery/Shenzhen/NIH X-rays), and darker
    when the grey levels are inverted (under -0.2 for 95-99.6% of them)."""
    small = np.asarray(Image.fromarray(gray).resize((64, 64), Image.Resampling.BOX), dtype=np.float32)
    band = small[13:51]
    lungs = (band[:, 13:22].mean() + band[:, 42:51].mean()) / 2
    return float((band[:, 27:37].mean() - lungs) / (small.std() + 1e-6))


def neighbour_correlation(gray: np.ndarray, window: int = 128) -> float:
    """Pearson correlation of horizontally adjacent pixels in a central window at full resolution
    (a radiograph is smooth: well over 0.5; pixel noise: about 0)."""
    h, w = gray.shape[:2]
    top, left = max(0, (h - window) // 2), max(0, (w - window) // 2)
    crop = gray[top : top + window, left : left + window].astype(np.float32)
    a, b = crop[:, :-1] - crop[:, :-1].mean(), crop[:, 1:] - crop[:, 1:].mean()
    norm = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / norm) if norm > 0 else 1.0


def _rgb_thumbnail(image: Any) -> np.ndarray | None:
    """A small uint8 (h, w, 3) copy of a colour input; None for grey or undecodable inputs."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
            return None
        step = max(1, max(image.shape[:2]) // _COLOUR_SIDE)
        return image[::step, ::step, :3]
    if isinstance(image, Image.Image):
        return _pil_thumbnail(image)
    if isinstance(image, str | Path):
        try:
            with Image.open(image) as im:
                return _pil_thumbnail(im)
        except Exception:  # noqa: BLE001 - the decoder reports unreadable files
            return None
    if isinstance(image, bytes | bytearray | memoryview):
        try:
            with Image.open(io.BytesIO(bytes(image))) as im:
                return _pil_thumbnail(im)
        except Exception:  # noqa: BLE001
            return None
    return None


def _pil_thumbnail(im: Image.Image) -> np.ndarray | None:
    """Colour modes only: reduced by an integer factor to about `_COLOUR_SIDE`, as RGB."""
    if im.mode in _GREY_MODES:
        return None
    if im.format == "JPEG" and im.mode in ("RGB", "CMYK", "YCbCr"):
        im.draft("RGB", (_COLOUR_SIDE, _COLOUR_SIDE))  # DCT scaling: decodes at 1/2 .. 1/8 size
    if im.mode not in ("RGB", "RGBA"):
        im = im.convert("RGB")  # palette, CMYK, YCbCr, LAB ...
    factor = max(1, max(im.size) // _COLOUR_SIDE)
    if factor > 1:
        im = im.reduce(factor)
    return np.asarray(im.convert("RGB"), dtype=np.uint8)
