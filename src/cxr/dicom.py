"""DICOM files to uint8 grayscale: modality LUT or rescale, then VOI LUT or window, then 8 bits.

Only the first frame is decoded, after its size and bytes were checked from the header. The LUT
steps run strip by strip over the frame (`cxr.pixels.convert_rows`), so no full-size float64 copy
is made. LUT tables are read here rather than by pydicom, whose VOI LUT code scrambles 8-bit
entries applied to 12- or 16-bit data (it indexes the table with an array of the entries' width):
8-bit entries packed two per 16-bit word (the standard's layout) and one entry per word (a common
variant) are both read. What is not handled (another photometric interpretation, an unusable LUT)
is logged as a WARNING naming the file, and the image is read the nearest way that is.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from cxr.errors import ImageReadError
from cxr.pixels import (
    RGB_LUMA,
    UINT8_MAX,
    DecodeLimits,
    ImageInfo,
    check_decoded_bytes,
    check_size,
    convert_rows,
    shrink_factor,
)

log = logging.getLogger(__name__)

MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT")  # decoded to RGB
PALETTE = "PALETTE COLOR"
_LUT_BITS = range(8, 17)  # bits per LUT entry the standard allows
_BYTE = 8

Values = Callable[[np.ndarray], np.ndarray]


def decode_dicom(data: bytes, name: str, limits: DecodeLimits,
                 min_side: int | None = None) -> tuple[np.ndarray, ImageInfo]:
    """Decode a DICOM file held in memory to uint8 (H, W) plus its `ImageInfo`; errors name `name`."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import pixel_array

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError as exc:
        raise ImageReadError(name, f"not a valid DICOM file ({exc})") from None
    except Exception as exc:
        raise ImageReadError(name, f"truncated or corrupt DICOM file ({type(exc).__name__}: {exc})") from None
    if "PixelData" not in ds:
        raise ImageReadError(name, "DICOM file holds no pixel data")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    check_size(cols, rows, name, limits.max_pixels)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.get("BitsAllocated", 16) or 16)
    check_decoded_bytes(cols, rows, samples * -(-bits // _BYTE), f"{photometric} {bits}-bit", name, limits.max_bytes)
    info = ImageInfo(
        format="DICOM", mode=f"{photometric} {int(ds.get('BitsStored', 0) or 0)}-bit", width=cols, height=rows
    )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        log.debug("%s: %d frames, using the first", name, frames)
    try:
        arr = pixel_array(ds, index=0)
    except Exception as exc:  # truncated pixel data, unsupported compression
        raise ImageReadError(name, f"cannot decode DICOM pixel data ({type(exc).__name__}: {exc})") from None
    gray = dicom_to_gray(arr, ds, photometric, name)
    factor = shrink_factor(cols, rows, min_side)
    if factor > 1:
        h, w = gray.shape[0] // factor, gray.shape[1] // factor
        gray = np.asarray(Image.fromarray(gray).resize((w, h), Image.Resampling.BOX, box=(0, 0, w * factor, h * factor)))
    return gray, info


def dicom_to_gray(arr: np.ndarray, ds: Any, photometric: str, name: str) -> np.ndarray:
    """One decoded frame to uint8 (H, W): colour as luma stretched to its range; monochrome through
    the modality and VOI steps, MONOCHROME1 inverted."""
    height, width = arr.shape[:2]
    if photometric == PALETTE:
        from pydicom.pixels import apply_color_lut

        return convert_rows(height, width, lambda t, b: _luma(apply_color_lut(arr[t:b], ds)))
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1 or arr.ndim == 3:
        if photometric not in COLOUR:
            log.warning("%s: photometric interpretation %r is not handled; its first three samples are "
                        "read as RGB", name, photometric)
        return convert_rows(height, width, lambda t, b: _luma(arr[t:b]))
    if photometric not in MONOCHROME:
        log.warning("%s: photometric interpretation %r is not handled; read as MONOCHROME2", name, photometric)
    try:
        modality = _modality(ds, name)
        voi, lo, hi = _voi(ds, name)
        out = convert_rows(height, width, lambda t, b: voi(modality(arr[t:b])), lo, hi)
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(name, f"invalid DICOM LUT or window ({type(exc).__name__}: {exc})") from None
    if photometric == "MONOCHROME1":  # 0 means white in MONOCHROME1
        out = UINT8_MAX - out
    return out


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., :3].astype(np.float64) @ RGB_LUMA


# --------------------------------------------------------------------------------- modality, VOI


def _identity(values: np.ndarray) -> np.ndarray:
    return values


def _modality(ds: Any, name: str) -> Values:
    """Stored values -> modality values: the Modality LUT, else rescale slope/intercept, else as is."""
    seq = ds.get("ModalityLUTSequence")
    if seq:
        lut = read_lut(seq[0], ds, name, "Modality LUT")
        if lut is not None:
            return lut.apply
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is None or intercept is None:
        return _identity
    slope, intercept = float(slope), float(intercept)

    def rescale(values: np.ndarray) -> np.ndarray:
        out = values.astype(np.float64) * slope
        out += intercept
        return out

    return rescale


def _voi(ds: Any, name: str) -> tuple[Values, float | None, float | None]:
    """Modality values -> VOI values and the range they map onto (None, None: the data's own range).

    The VOI LUT is preferred to a window when both are present (as pydicom does)."""
    from pydicom.pixels import apply_windowing

    seq = ds.get("VOILUTSequence")
    if seq and seq[0].get("LUTDescriptor") is not None and seq[0].get("LUTData") is not None:
        lut = read_lut(seq[0], ds, name, "VOI LUT")
        if lut is not None:
            return lut.apply, float(lut.table.min()), float(lut.table.max())
    if ds.get("WindowCenter") is None or ds.get("WindowWidth") is None:
        return _identity, None, None
    lo, hi = _window_output_range(ds)
    return (lambda values: apply_windowing(values, ds)), lo, hi


def _window_output_range(ds: Any) -> tuple[float, float]:
    """The value range that pydicom's windowing maps onto, so a window keeps its meaning."""
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


# --------------------------------------------------------------------------------------------- LUTs


@dataclass(frozen=True)
class Lut:
    """A DICOM lookup table: input `first` maps to `table[0]`; inputs outside clamp to the ends."""

    table: np.ndarray  # the entries, uint16
    first: int  # the first input value mapped (LUT Descriptor, second value)

    def apply(self, values: np.ndarray) -> np.ndarray:
        if not np.issubdtype(values.dtype, np.integer):
            values = np.floor(values)
        index = np.clip(values, self.first, self.first + len(self.table) - 1) - self.first
        return self.table[index.astype(np.intp, copy=False)]


def read_lut(item: Any, ds: Any, name: str, what: str) -> Lut | None:
    """The LUT of a Modality/VOI LUT Sequence item, or None (with a WARNING) when it is unusable."""
    try:
        descriptor = [int(v) for v in item.LUTDescriptor]
        element = item["LUTData"]
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        log.warning("%s: %s ignored: unreadable descriptor or data (%s)", name, what, exc)
        return None
    if len(descriptor) != 3:
        log.warning("%s: %s ignored: LUT Descriptor has %d values, expected 3", name, what, len(descriptor))
        return None
    entries, first, bits = descriptor[0] or 2**16, descriptor[1], descriptor[2]
    if bits not in _LUT_BITS:
        log.warning("%s: %s ignored: %d bits per entry is not handled (8..16 are)", name, what, bits)
        return None
    table = _lut_table(element.value, entries, bits, _little_endian(ds))
    if table is None:
        size = len(element.value) if isinstance(element.value, bytes | bytearray) else len(_as_list(element.value))
        unit = "bytes" if isinstance(element.value, bytes | bytearray) else "values"
        log.warning("%s: %s ignored: LUT Data holds %d %s for %d entries of %d bits",
                    name, what, size, unit, entries, bits)
        return None
    if bits == _BYTE:  # the standard notes 8-bit entries stored in 16 bits with padded high bits
        table = table & 0xFF
    return Lut(table=table, first=first)


def _lut_table(value: Any, entries: int, bits: int, little: bool) -> np.ndarray | None:
    """The entries of LUT Data as uint16: OW bytes or US values, 8-bit entries packed or one per word."""
    word = np.dtype("<u2" if little else ">u2")
    if isinstance(value, bytes | bytearray):
        if bits == _BYTE and len(value) in (entries, entries + 1):  # packed, padded to an even length
            return np.frombuffer(value, dtype=np.uint8, count=entries).astype(np.uint16)
        if len(value) >= 2 * entries:
            return np.frombuffer(value, dtype=word, count=entries).astype(np.uint16)
        return None
    values = _as_list(value)
    if len(values) == entries:
        return np.asarray(values, dtype=np.uint16)
    if bits == _BYTE and len(values) == (entries + 1) // 2:  # two 8-bit entries in each 16-bit value
        return np.asarray(values, dtype=word).view(np.uint8)[:entries].astype(np.uint16)
    return None


def _as_list(value: Any) -> list[int]:
    return [int(value)] if isinstance(value, int) else [int(v) for v in value]


def _little_endian(ds: Any) -> bool:
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is not None and hasattr(syntax, "is_little_endian"):
        return bool(syntax.is_little_endian)
    return True
