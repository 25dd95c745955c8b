"""Read one image file (PNG, JPEG, BMP, TIFF or DICOM) into a uint8 grayscale array.

Everything that decodes pixels in `cxr` goes through here, so every caller gets the same
grayscale conversion and the same clear errors: a file that cannot be used raises
`ImageReadError` naming the file and the reason (empty, truncated, not an image, too large).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cxr.errors import ImageReadError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"}
)
DICOM_EXTENSIONS: frozenset[str] = frozenset({".dcm", ".dicom"})
MAX_PIXELS = 50_000_000  # larger images are refused as possible decompression bombs

_DICOM_MAGIC_OFFSET = 128  # DICOM Part 10 files: 128-byte preamble, then b"DICM"
_DICOM_MAGIC = b"DICM"
_UINT8_MAX = 255


@dataclass(frozen=True)
class ImageInfo:
    """What the file header says: container format, pixel mode and size (before conversion)."""

    format: str
    mode: str
    width: int
    height: int


def read_image(path: str | Path) -> np.ndarray:
    """Decode the image file at `path` to a uint8 array of shape (H, W)."""
    return read_image_with_info(path)[0]


def read_image_bytes(data: bytes, name: str = "<upload>") -> np.ndarray:
    """Decode an image held in memory (an upload); `name` is used in error messages."""
    return decode_image(data, name)[0]


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


def decode_image(data: bytes, name: str, suffix: str = "") -> tuple[np.ndarray, ImageInfo]:
    """Decode `data` (a whole file) to uint8 (H, W) plus its `ImageInfo`; errors name `name`."""
    if not data:
        raise ImageReadError(name, "empty file (0 bytes)")
    if suffix in DICOM_EXTENSIONS or _looks_like_dicom(data):
        return _decode_dicom(data, name)
    return _decode_pil(data, name)


def check_size(width: int, height: int, name: str) -> None:
    """Refuse images over `MAX_PIXELS` from their header size, before any pixel is decoded."""
    if width <= 0 or height <= 0:
        raise ImageReadError(name, f"invalid image size {width}x{height}")
    if width * height > MAX_PIXELS:
        raise ImageReadError(
            name,
            f"image is {width}x{height} = {width * height / 1e6:.1f} megapixels, over the "
            f"{MAX_PIXELS / 1e6:.0f} megapixel limit (possible decompression bomb)",
        )


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


def _decode_pil(data: bytes, name: str) -> tuple[np.ndarray, ImageInfo]:
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
        check_size(im.width, im.height, name)
        try:
            im.load()  # the first frame of a multi-frame TIFF
            pixels = pil_to_gray(im)
        except Exception as exc:  # truncated or corrupt pixel data
            raise ImageReadError(name, _describe_error(exc, "image data")) from None
    return pixels, info


def _describe_error(exc: Exception, part: str) -> str:
    """'truncated image data (...)' or 'corrupt image header (...)' from a PIL exception."""
    text = str(exc) or type(exc).__name__
    if "truncat" in text.lower() or isinstance(exc, EOFError):
        return f"truncated {part} ({text})"
    return f"corrupt {part} ({type(exc).__name__}: {text})"


def pil_to_gray(im: Image.Image) -> np.ndarray:
    """Any PIL mode to uint8 grayscale; 16/32-bit and float data are scaled, not clipped."""
    mode = im.mode
    if mode == "L":
        return np.asarray(im, dtype=np.uint8).copy()
    if mode.startswith("I") or mode == "F":
        return _scale_to_uint8(np.asarray(im))
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode not in ("LA", "RGB", "RGBA", "1", "La"):
        im = im.convert("RGB")  # CMYK, YCbCr, LAB, HSV ...
    return np.asarray(im.convert("L"), dtype=np.uint8).copy()


def _scale_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Integer data: scale by its actual bit range (a 12-bit image in a 16-bit container uses
    0..4095), so intensities keep their meaning; float or signed data: min-max stretch."""
    if arr.ndim == 3:
        arr = arr.mean(axis=2)
    if np.issubdtype(arr.dtype, np.integer) and arr.size and int(arr.min()) >= 0:
        bits = max(8, int(arr.max()).bit_length())
        scaled = arr.astype(np.float64) * (_UINT8_MAX / (2**bits - 1))
        return np.clip(np.rint(scaled), 0, _UINT8_MAX).astype(np.uint8)
    return _minmax_to_uint8(arr.astype(np.float64))


def _minmax_to_uint8(arr: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Map [lo, hi] (default: the data's own range) linearly to 0..255; a flat image becomes 0."""
    lo = float(np.nanmin(arr)) if lo is None else lo
    hi = float(np.nanmax(arr)) if hi is None else hi
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    scaled = (np.nan_to_num(arr, nan=lo) - lo) * (_UINT8_MAX / (hi - lo))
    return np.clip(np.rint(scaled), 0, _UINT8_MAX).astype(np.uint8)


# -------------------------------------------------------------------------------------------- DICOM


def _decode_dicom(data: bytes, name: str) -> tuple[np.ndarray, ImageInfo]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError as exc:
        raise ImageReadError(name, f"not a valid DICOM file ({exc})") from None
    except Exception as exc:
        raise ImageReadError(name, f"truncated or corrupt DICOM file ({type(exc).__name__}: {exc})") from None
    if "PixelData" not in ds:
        raise ImageReadError(name, "DICOM file holds no pixel data")
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    check_size(cols, rows, name)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    info = ImageInfo(
        format="DICOM", mode=f"{photometric} {int(ds.get('BitsStored', 0))}-bit", width=cols, height=rows
    )
    try:
        arr = ds.pixel_array
    except Exception as exc:  # truncated pixel data, unsupported compression
        raise ImageReadError(name, f"cannot decode DICOM pixel data ({type(exc).__name__}: {exc})") from None
    return _dicom_to_gray(arr, ds, photometric, name), info


def _dicom_to_gray(arr: np.ndarray, ds, photometric: str, name: str) -> np.ndarray:
    """Modality LUT (rescale), then VOI LUT or window, then 8 bit; MONOCHROME1 is inverted."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    samples = int(ds.get("SamplesPerPixel", 1))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        log.debug("%s: %d frames, using the first", name, frames)
        arr = arr[0]
    if samples > 1:  # colour DICOM (pydicom already converted YBR to RGB): luma, then stretch
        gray = arr[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        return _minmax_to_uint8(gray)
    try:
        values = apply_modality_lut(arr, ds)
        lo_hi = _voi_output_range(ds)
        values = apply_voi_lut(values, ds)
    except Exception as exc:
        raise ImageReadError(name, f"invalid DICOM LUT or window ({type(exc).__name__}: {exc})") from None
    out = _minmax_to_uint8(np.asarray(values, dtype=np.float64), *lo_hi)
    if photometric == "MONOCHROME1":  # 0 means white in MONOCHROME1
        out = _UINT8_MAX - out
    return out


def _voi_output_range(ds) -> tuple[float | None, float | None]:
    """The value range that pydicom's VOI LUT / windowing maps onto, so a window keeps its meaning
    (None, None: no VOI in the file, so the data's own range is used)."""
    voi_seq = ds.get("VOILUTSequence")
    if voi_seq and voi_seq[0].get("LUTData") is not None:
        lut = voi_seq[0].LUTData
        values = np.frombuffer(lut, dtype=np.uint16) if isinstance(lut, bytes) else np.asarray(lut)
        return float(values.min()), float(values.max())
    if ds.get("WindowCenter") is None or ds.get("WindowWidth") is None:
        return None, None
    bits = int(ds.BitsStored)
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    if int(ds.get("PixelRepresentation", 0)) == 0:
        y_min, y_max = 0.0, float(2**bits - 1)
    else:
        y_min, y_max = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        y_min, y_max = y_min * float(slope) + float(intercept), y_max * float(slope) + float(intercept)
    return min(y_min, y_max), max(y_min, y_max)
