"""Decode limits and memory-lean conversion to 8 bits, shared by the PIL and DICOM readers (`cxr.io`).

A decode's cost is bounded before any pixel is decoded: the header's size is checked against a pixel
limit and, with the pixel's bit depth, against a byte limit. After decoding, values are converted to
uint8 in strips of rows (`STRIP_PIXELS` at a time), so no full-size float64 temporary is ever made:
a 16-bit 7000x7000 image needs its decoded 98 MB plus a few MB, not gigabytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from cxr.errors import ImageReadError

MAX_PIXELS = 50_000_000  # larger images are refused as possible decompression bombs
MAX_BYTES_PER_PIXEL = 4  # the widest pixel PIL decodes to (RGB, RGBA, I and F are stored in 4 bytes)
STRIP_PIXELS = 1 << 20  # pixels converted to 8 bits at a time (temporaries stay near 8 MB)
UINT8_MAX = 255
RGB_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601 luma, the weights of PIL's convert("L")

Scaler = Callable[[np.ndarray], np.ndarray]  # one strip of values -> uint8


@dataclass(frozen=True)
class ImageInfo:
    """What the file header says: container format, pixel mode and size (before conversion)."""

    format: str
    mode: str
    width: int
    height: int


@dataclass(frozen=True)
class DecodeLimits:
    """What one decode may cost, checked from the header before any pixel is decoded."""

    max_pixels: int = MAX_PIXELS  # width x height of the image (of one frame)
    max_bytes: int = MAX_PIXELS * MAX_BYTES_PER_PIXEL  # decoded size of one frame: pixels x bytes per pixel

    def __post_init__(self) -> None:
        if self.max_pixels < 1 or self.max_bytes < 1:
            raise ValueError(f"decode limits must be >= 1, got {self.max_pixels} pixels, {self.max_bytes} bytes")


DEFAULT_LIMITS = DecodeLimits()


def check_size(width: int, height: int, name: str, max_pixels: int = MAX_PIXELS) -> None:
    """Refuse images over `max_pixels` from their header size, before any pixel is decoded."""
    if width <= 0 or height <= 0:
        raise ImageReadError(name, f"invalid image size {width}x{height}")
    if width * height > max_pixels:
        raise ImageReadError(
            name,
            f"image is {width}x{height} = {width * height / 1e6:.1f} megapixels, over the "
            f"{max_pixels / 1e6:g} megapixel limit (possible decompression bomb)",
        )


def check_decoded_bytes(width: int, height: int, bytes_per_pixel: float, what: str, name: str,
                        max_bytes: int) -> None:
    """Refuse a decode that would allocate more than `max_bytes` (pixels x bytes per pixel)."""
    needed = width * height * bytes_per_pixel
    if needed > max_bytes:
        raise ImageReadError(
            name,
            f"decoding needs {needed / 1e6:.0f} MB ({width}x{height} {what}, {bytes_per_pixel:g} bytes per "
            f"pixel), over the {max_bytes / 1e6:g} MB limit",
        )


def check_limits(width: int, height: int, bytes_per_pixel: float, what: str, name: str,
                 limits: DecodeLimits) -> None:
    """`check_size`, then `check_decoded_bytes`."""
    check_size(width, height, name, limits.max_pixels)
    check_decoded_bytes(width, height, bytes_per_pixel, what, name, limits.max_bytes)


def shrink_factor(width: int, height: int, min_side: int | None) -> int:
    """The integer factor an image may be shrunk by while both sides stay >= `min_side` (1: none)."""
    if not min_side:
        return 1
    return max(1, min(width, height) // min_side)


def row_strips(height: int, width: int) -> Iterator[tuple[int, int]]:
    """(top, bottom) row ranges of about `STRIP_PIXELS` pixels each, covering `height` rows."""
    step = max(1, STRIP_PIXELS // max(1, width))
    for top in range(0, height, step):
        yield top, min(height, top + step)


def value_range(strips: Iterator[np.ndarray]) -> tuple[float, float, bool]:
    """(min, max, all integer and >= 0) over strips of values, NaN ignored (NaN if all are NaN)."""
    lo, hi, integer = np.nan, np.nan, True
    for values in strips:
        integer = integer and bool(np.issubdtype(values.dtype, np.integer))
        lo = float(np.fmin(lo, np.fmin.reduce(values, axis=None)))
        hi = float(np.fmax(hi, np.fmax.reduce(values, axis=None)))
    return lo, hi, integer and not lo < 0


def bit_range_scaler(max_value: float) -> Scaler:
    """Unsigned integers scaled by their actual bit range (a 12-bit image in a 16-bit container uses
    0..4095), so intensities keep their meaning."""
    bits = max(8, int(max_value).bit_length())
    factor = UINT8_MAX / (2**bits - 1)

    def scale(values: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(values.astype(np.float64) * factor), 0, UINT8_MAX).astype(np.uint8)

    return scale


def minmax_scaler(lo: float | None, hi: float | None) -> Scaler:
    """Map [lo, hi] linearly to 0..255 (NaN counts as lo); a flat or non-finite range gives 0."""

    def scale(values: np.ndarray) -> np.ndarray:
        return minmax_to_uint8(values.astype(np.float64, copy=False), lo, hi)

    return scale


def minmax_to_uint8(arr: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Map [lo, hi] (default: the data's own range) linearly to 0..255; a flat image becomes 0."""
    lo = float(np.nanmin(arr)) if lo is None else lo
    hi = float(np.nanmax(arr)) if hi is None else hi
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    scaled = (np.nan_to_num(arr, nan=lo) - lo) * (UINT8_MAX / (hi - lo))
    return np.clip(np.rint(scaled), 0, UINT8_MAX).astype(np.uint8)


def convert_rows(height: int, width: int, rows: Callable[[int, int], np.ndarray],
                 lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """uint8 (height, width) from `rows(top, bottom)` values, mapped [lo, hi] -> 0..255 strip by strip.

    Without lo/hi, a first pass over the strips finds the values' own range (NaN ignored). Only one
    strip of values exists at a time.
    """
    if lo is None or hi is None:
        lo, hi, _ = value_range(rows(top, bottom) for top, bottom in row_strips(height, width))
    scale = minmax_scaler(lo, hi)
    out = np.empty((height, width), dtype=np.uint8)
    for top, bottom in row_strips(height, width):
        out[top:bottom] = scale(rows(top, bottom))
    return out
