"""cxr.io: every supported format and mode becomes uint8 (H, W); every bad file names itself."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr.errors import ImageReadError
from cxr.io import IMAGE_EXTENSIONS, MAX_PIXELS, read_image, read_image_bytes, read_image_with_info

H, W = 48, 64


def gradient(dtype=np.uint8, top: int = 255) -> np.ndarray:
    """A horizontal ramp 0..top, so conversions can be checked at both ends."""
    row = np.linspace(0, top, W).round().astype(dtype)
    return np.tile(row, (H, 1))


def png_with_header_size(path: Path, width: int, height: int) -> None:
    """A valid-looking PNG (correct CRCs) whose IHDR claims width x height, with almost no data."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


# --------------------------------------------------------------------------------------- good files


def test_extensions_and_limit():
    assert {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"} == set(IMAGE_EXTENSIONS)
    assert MAX_PIXELS == 50_000_000


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "P"])
def test_png_modes_become_gray(tmp_path, mode):
    gray = gradient()
    Image.fromarray(gray).convert(mode).save(tmp_path / "x.png")
    out, info = read_image_with_info(tmp_path / "x.png")
    assert info.mode == mode and (info.width, info.height) == (W, H)
    assert out.dtype == np.uint8 and out.shape == (H, W)
    # gray -> mode -> gray is lossless for a gray ramp, up to palette quantisation
    assert np.abs(out.astype(int) - gray).max() <= (8 if mode == "P" else 0)


def test_rgb_uses_luma():
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 1] = 200  # pure green: luma 0.587 * 200
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    assert abs(int(read_image_bytes(buf.getvalue())[0, 0]) - round(0.587 * 200)) <= 1


def test_16_bit_scaled_by_actual_bit_range(tmp_path):
    twelve_bit = gradient(np.uint16, top=4095)  # 12-bit data in a 16-bit PNG
    Image.fromarray(twelve_bit).save(tmp_path / "x.png")
    assert Image.open(tmp_path / "x.png").mode == "I;16"
    out = read_image(tmp_path / "x.png")
    assert out.dtype == np.uint8 and out.max() == 255 and out.min() == 0
    assert abs(int(out[0, W // 2]) - round(int(twelve_bit[0, W // 2]) * 255 / 4095)) <= 1


@pytest.mark.parametrize("fmt,suffix", [("JPEG", ".jpg"), ("BMP", ".bmp"), ("TIFF", ".tif")])
def test_other_formats(tmp_path, fmt, suffix):
    gray = gradient()
    Image.fromarray(gray).save(tmp_path / f"x{suffix}", format=fmt)
    out = read_image(tmp_path / f"x{suffix}")
    assert out.shape == (H, W) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - gray).mean() < 3  # JPEG is lossy


def test_bytes_and_path_agree(tmp_path):
    Image.fromarray(gradient()).save(tmp_path / "x.png")
    np.testing.assert_array_equal(
        read_image(tmp_path / "x.png"), read_image_bytes((tmp_path / "x.png").read_bytes())
    )


# ---------------------------------------------------------------------------------------- bad files


def _read_error(path: Path) -> ImageReadError:
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert path.name in str(info.value) and info.value.path == str(path)
    return info.value


def test_zero_byte(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    assert "empty" in _read_error(tmp_path / "empty.png").reason


def test_truncated_png(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (H, W), dtype=np.uint8)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    assert "truncated" in _read_error(tmp_path / "cut.png").reason


def test_text_named_png(tmp_path):
    (tmp_path / "x.png").write_text("not an image at all\n")
    assert "not a recognised image" in _read_error(tmp_path / "x.png").reason


def test_decompression_bomb_refused_from_header(tmp_path):
    png_with_header_size(tmp_path / "bomb.png", 50_000, 50_000)
    reason = _read_error(tmp_path / "bomb.png").reason
    assert "50000x50000" in reason and "megapixel" in reason


def test_just_over_limit_refused_under_limit_header_accepted(tmp_path):
    png_with_header_size(tmp_path / "big.png", 10_000, 5_001)  # 50.01 MP
    assert "megapixel" in _read_error(tmp_path / "big.png").reason
    png_with_header_size(tmp_path / "ok.png", 10_000, 5_000)  # exactly the limit: passes the size check
    assert "megapixel" not in _read_error(tmp_path / "ok.png").reason  # fails later: too little data


def test_missing_file(tmp_path):
    assert "not found" in _read_error(tmp_path / "nope.png").reason


def test_bytes_error_uses_name():
    with pytest.raises(ImageReadError, match="upload.png"):
        read_image_bytes(b"garbage", name="upload.png")


# -------------------------------------------------------------------------------------------- DICOM


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", **elements) -> None:
    """A minimal uncompressed DICOM file written with pydicom."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_dicom_monochrome1_is_inverted(tmp_path):
    raw = gradient(np.uint16, top=4095)
    write_dicom(tmp_path / "m2.dcm", raw, "MONOCHROME2")
    write_dicom(tmp_path / "m1.dcm", raw, "MONOCHROME1")
    m2, m1 = read_image(tmp_path / "m2.dcm"), read_image(tmp_path / "m1.dcm")
    assert m2.dtype == np.uint8 and m2.shape == (H, W)
    assert m2[0, 0] == 0 and m2[0, -1] == 255  # MONOCHROME2: high values are bright
    assert m1[0, 0] == 255 and m1[0, -1] == 0  # MONOCHROME1: high values are dark
    np.testing.assert_array_equal(m1, 255 - m2)


def test_dicom_detected_without_extension(tmp_path):
    write_dicom(tmp_path / "image", gradient(np.uint16, top=4095))
    assert read_image(tmp_path / "image").shape == (H, W)


def test_dicom_window_applied(tmp_path):
    raw = gradient(np.uint16, top=4095)
    write_dicom(tmp_path / "w.dcm", raw, WindowCenter=2048, WindowWidth=1024)
    out = read_image(tmp_path / "w.dcm")
    assert out[0, raw[0] < 1536].max() == 0  # below the window: black
    assert out[0, raw[0] > 2560].min() == 255  # above the window: white
    inside = (raw[0] > 1700) & (raw[0] < 2400)
    assert 0 < out[0, inside].min() < out[0, inside].max() < 255


def test_dicom_rescale_then_window(tmp_path):
    # stored 0..4095 with slope 2, intercept -1000 -> -1000..7190; a window on the rescaled values
    raw = gradient(np.uint16, top=4095)
    write_dicom(
        tmp_path / "r.dcm", raw, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=3000, WindowWidth=2000
    )
    out = read_image(tmp_path / "r.dcm")
    rescaled = raw[0] * 2.0 - 1000
    assert out[0, rescaled < 2000].max() == 0 and out[0, rescaled > 4000].min() == 255


def test_dicom_too_large_refused_before_decoding(tmp_path):
    write_dicom(tmp_path / "big.dcm", np.zeros((2, 2), np.uint16))
    import pydicom

    ds = pydicom.dcmread(tmp_path / "big.dcm")
    ds.Rows, ds.Columns = 10_000, 10_000  # header claims 100 MP, data is 8 bytes
    ds.save_as(tmp_path / "big.dcm")
    assert "megapixel" in _read_error(tmp_path / "big.dcm").reason


def test_dicom_truncated(tmp_path):
    write_dicom(tmp_path / "ok.dcm", gradient(np.uint16, top=4095))
    data = (tmp_path / "ok.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) - 2000])
    _read_error(tmp_path / "cut.dcm")


# ---------------------------------------------------------------------------- decode cost and memory


def test_decoded_bytes_limit_is_checked_from_the_header():
    from cxr.io import DecodeLimits, decode_image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((H, W, 4), np.uint8)).save(buf, format="PNG")  # RGBA: 4 bytes a pixel decoded
    limits = DecodeLimits(max_pixels=H * W, max_bytes=2 * H * W)
    with pytest.raises(ImageReadError, match=r"decoding needs .* MB .*RGBA.* 4 bytes per pixel.*MB limit"):
        decode_image(buf.getvalue(), "rgba.png", limits=limits)
    with pytest.raises(ImageReadError, match="megapixel limit"):
        decode_image(buf.getvalue(), "rgba.png", limits=DecodeLimits(max_pixels=H * W - 1))
    gray = io.BytesIO()
    Image.fromarray(gradient()).save(gray, format="PNG")
    assert decode_image(gray.getvalue(), "gray.png", limits=limits)[0].shape == (H, W)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_min_side_shrinks_early_and_keeps_the_picture(fmt):
    from cxr.io import decode_image
    from cxr.transforms import resize_gray

    big = np.tile(np.linspace(0, 255, 800).round().astype(np.uint8), (640, 1))
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, format=fmt)
    full = read_image_bytes(buf.getvalue(), "x")
    small, info = decode_image(buf.getvalue(), "x", min_side=100)
    assert (info.width, info.height) == (800, 640)  # the file's size, not the output's
    assert min(small.shape) >= 100 and small.shape[0] < full.shape[0]
    a, b = resize_gray(full, 64).astype(int), resize_gray(small, 64).astype(int)
    assert np.abs(a - b).mean() < 2


def test_16_bit_shrink_scales_by_the_full_images_bit_range():
    twelve = np.full((400, 400), 4095, np.uint16)
    twelve[:, :200] = 0
    buf = io.BytesIO()
    Image.fromarray(twelve).save(buf, format="PNG")
    small = read_image_bytes(buf.getvalue(), "x", min_side=50)
    assert small.shape == (50, 50) and small.max() == 255 and small.min() == 0


PEAK_RSS_SCRIPT = """
import json, sys
from cxr.io import read_image
def status(key):
    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(key)) / 1024
open('/proc/self/clear_refs', 'w').write('5')  # reset the peak RSS
base = status('VmRSS:')
out = read_image(sys.argv[1])
print(json.dumps({"shape": out.shape, "dtype": str(out.dtype), "rise_mb": status('VmHWM:') - base}))
"""


def big_16_bit_png(path: Path, side: int = 7000) -> Path:
    """A 16-bit side x side gradient PNG (about 100 KB on disk, 98 MB decoded)."""
    row = np.linspace(0, 4095, side).astype(np.uint16)
    Image.fromarray(np.ascontiguousarray(np.broadcast_to(row, (side, side)))).save(path, compress_level=9)
    return path


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
def test_16_bit_7000_square_decodes_without_float64_temporaries(tmp_path):
    """Decoding used ~1.3 GB of float64 temporaries for this 98 MB image; now its peak RSS rise is
    the decoded image, the 49 MB output and a few strips."""
    import subprocess
    import sys

    png = big_16_bit_png(tmp_path / "big.png")
    run = subprocess.run([sys.executable, "-c", PEAK_RSS_SCRIPT, str(png)], capture_output=True, text=True,
                         timeout=120, check=True)
    result = json.loads(run.stdout)
    assert result["shape"] == [7000, 7000] and result["dtype"] == "uint8"
    assert result["rise_mb"] < 300, result
