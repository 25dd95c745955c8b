"""Read one image file (PNG, JPEG, BMP, TIFF or DICOM) into a uint8 grayscale array.

Everything that decodes pixels in `cxr` goes through here, so every caller gets the same
grayscale conversion and the same clear errors: a file that cannot be used raises
`ImageReadError` naming the file and the reason (empty, truncated, not an image, too large).

A decode's cost is bounded before any pixel is decoded (`DecodeLimits`: pixels, and pixels times
bytes per pixel), and values become 8 bits in strips of rows, never through a full-size float
temporary (`cxr.pixels`). A caller that only needs a small image (the server) passes `min_side`:
the decoder may then shrink the image by an integer factor (JPEG's DCT scaling, a box filter)
while both sides stay at least `min_side`. Without it the output is the full-size image.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from cxr.dicom import decode_dicom
from cxr.errors import ImageReadError
from cxr.pixels import (
    DEFAULT_LIMITS,
    MAX_BYTES_PER_PIXEL,
    MAX_PIXELS,
    DecodeLimits,
    ImageInfo,
    Scaler,
    bit_range_scaler,
    check_limits,
    check_size,
    minmax_scaler,
    row_strips,
    shrink_factor,
    value_range,
)

__all__ = [
    "DICOM_EXTENSIONS", "IMAGE_EXTENSIONS", "MAX_PIXELS", "DecodeLimits", "ImageInfo", "check_size",
    "decode_image", "read_image", "read_image_bytes", "read_image_with_info",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"}
)
DICOM_EXTENSIONS: frozenset[str] = frozenset({".dcm", ".dicom"})

_DICOM_MAGIC_OFFSET = 128  # DICOM Part 10 files: 128-byte preamble, then b"DICM"
_DICOM_MAGIC = b"DICM"
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}  # PIL stores the rest in 4
_NO_RESAMPLE_MODES = frozenset({"1", "P"})  # PIL resizes these with NEAREST only: shrink after conversion


def read_image(path: str | Path) -> np.ndarray:
    """Decode the image file at `path` to a uint8 array of shape (H, W)."""
    return read_image_with_info(path)[0]


def read_image_bytes(data: bytes, name: str = "<upload>", limits: DecodeLimits = DEFAULT_LIMITS,
                     min_side: int | None = None) -> np.ndarray:
    """Decode an image held in memory (an upload); `name` is used in error messages."""
    return decode_image(data, name, limits=limits, min_side=min_side)[0]


def read_image_with_info(path: str | Path) -> tuple[np.ndarray, ImageInfo]:
    """Like `read_image`, also returning the header's format, mode and size (for dataset audits)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except IsADirectoryError:
        raise ImageReadError(path, "is a folder, not an image file") from None
    except OSError as exc:
        raise ImageReadError(path, f"cannot read file: {exc.strerror or exc}") from None
    return decode_image(data, str(path), suffix=path.suffix.lower())


def decode_image(data: bytes, name: str, suffix: str = "", limits: DecodeLimits = DEFAULT_LIMITS,
                 min_side: int | None = None) -> tuple[np.ndarray, ImageInfo]:
    """Decode `data` (a whole file) to uint8 (H, W) plus its `ImageInfo`; errors name `name`.

    `limits` bound the decode from the header; `min_side` allows an early integer downscale
    (see the module docstring). `ImageInfo` always describes the file, not the output.
    """
    if not data:
        raise ImageReadError(name, "empty file (0 bytes)")
    if suffix in DICOM_EXTENSIONS or _looks_like_dicom(data):
        return decode_dicom(data, name, limits, min_side)
    return _decode_pil(data, name, limits, min_side)


def _looks_like_dicom(data: bytes) -> bool:
    end = _DICOM_MAGIC_OFFSET + len(_DICOM_MAGIC)
    return data[_DICOM_MAGIC_OFFSET:end] == _DICOM_MAGIC


def _disable_pil_bomb_check() -> None:
    """`check_size` replaces PIL's own decompression-bomb test (same header-only check, lower limit).

    PIL would otherwise warn, or raise with a message that does not name the file, before our
    check runs. Done at first use, not at import.
    """
    if Image.MAX_IMAGE_PIXELS is not None:
        Image.MAX_IMAGE_PIXELS = None


# ---------------------------------------------------------------------------------------------- PIL


def _decode_pil(data: bytes, name: str, limits: DecodeLimits, min_side: int | None) -> tuple[np.ndarray, ImageInfo]:
    _disable_pil_bomb_check()
    try:
        im = Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError:
        raise ImageReadError(name, "not a recognised image (PNG, JPEG, BMP, TIFF or DICOM)") from None
    except Image.DecompressionBombError as exc:  # only if someone restored PIL's limit
        raise ImageReadError(name, f"too large: {exc}") from None
    except Exception as exc:  # PIL raises many types on malformed headers
        raise ImageReadError(name, _describe_error(exc, "image header")) from None
    with im:
        info = ImageInfo(format=im.format or "unknown", mode=im.mode, width=im.width, height=im.height)
        check_size(im.width, im.height, name, limits.max_pixels)
        try:
            if min_side and im.format == "JPEG":
                im.draft(im.mode, (min_side, min_side))  # DCT scaling: decodes at 1/2, 1/4 or 1/8 size
            width = _BYTES_PER_PIXEL.get(im.mode, MAX_BYTES_PER_PIXEL)
            check_limits(im.width, im.height, width, f"{im.mode} pixels", name, limits)
            im.load()  # the first frame of a multi-frame TIFF
            pixels = pil_to_gray(im, min_side)
        except ImageReadError:
            raise
        except Exception as exc:  # truncated or corrupt pixel data
            raise ImageReadError(name, _describe_error(exc, "image data")) from None
    return pixels, info


def _describe_error(exc: Exception, part: str) -> str:
    """'truncated image data (...)' or 'corrupt image header (...)' from a PIL exception."""
    text = str(exc) or type(exc).__name__
    if "truncat" in text.lower() or isinstance(exc, EOFError):
        return f"truncated {part} ({text})"
    return f"corrupt {part} ({type(exc).__name__}: {text})"


def pil_to_gray(im: Image.Image, min_side: int | None = None) -> np.ndarray:
    """Any PIL mode to uint8 grayscale; 16/32-bit and float data are scaled, not clipped.

    Values are scaled by the range of the full-size image; a shrink (when `min_side` allows one)
    happens in PIL before the conversion, or after it for palette and 1-bit images.
    """
    scaler = _value_scaler(im) if im.mode.startswith("I") or im.mode == "F" else None
    factor = shrink_factor(im.width, im.height, min_side)
    if factor > 1 and im.mode not in _NO_RESAMPLE_MODES:
        im, factor = _shrink(im, factor), 1
    gray = np.empty((im.height, im.width), dtype=np.uint8)
    for top, bottom in row_strips(im.height, im.width):
        gray[top:bottom] = _strip_to_gray(im.crop((0, top, im.width, bottom)), scaler)
    if factor > 1:
        gray = np.asarray(_shrink(Image.fromarray(gray), factor))
    return gray


def _strip_to_gray(strip: Image.Image, scaler: Scaler | None) -> np.ndarray:
    mode = strip.mode
    if mode == "L":
        return np.asarray(strip, dtype=np.uint8)
    if scaler is not None:
        return scaler(np.asarray(strip))
    if mode == "P":
        strip = strip.convert("RGBA" if "transparency" in strip.info else "RGB")
    elif mode not in ("LA", "RGB", "RGBA", "1", "La"):
        strip = strip.convert("RGB")  # CMYK, YCbCr, LAB, HSV ...
    return np.asarray(strip.convert("L"), dtype=np.uint8)


def _value_scaler(im: Image.Image) -> Scaler:
    """Integer data: scaled by its actual bit range; float or signed data: min-max stretch."""
    strips = (np.asarray(im.crop((0, top, im.width, bottom))) for top, bottom in row_strips(im.height, im.width))
    lo, hi, unsigned = value_range(strips)
    return bit_range_scaler(hi) if unsigned else minmax_scaler(lo, hi)


def _shrink(im: Image.Image, factor: int) -> Image.Image:
    """Box-filter `im` down by an integer factor (edge rows/columns that do not fill a box are dropped)."""
    width, height = im.width // factor, im.height // factor
    return im.resize((width, height), Image.Resampling.BOX, box=(0, 0, width * factor, height * factor))
