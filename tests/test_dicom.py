"""cxr.dicom: VOI LUTs of every entry width give the right pixels; what is not handled is a WARNING."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from cxr.io import DecodeLimits, decode_image, read_image

from .test_io import H, W, _read_error, gradient, write_dicom

TWELVE_BIT = 4095


def lut_item(entries: np.ndarray, bits: int, first: int = 0, vr: str = "US", packed: bool = False):
    """A VOI/Modality LUT Sequence item: LUT Descriptor and LUT Data as pydicom writes them."""
    from pydicom.dataset import Dataset

    item = Dataset()
    item.add_new(0x00283002, "US", [len(entries), first, bits])  # LUT Descriptor
    if vr == "OW" and packed:
        data = entries.astype(np.uint8).tobytes()
        item.add_new(0x00283006, "OW", data + b"\0" * (len(data) % 2))
    elif vr == "OW":
        item.add_new(0x00283006, "OW", entries.astype("<u2").tobytes())
    elif packed:  # two 8-bit entries in each 16-bit US value, the first in the low byte
        padded = np.append(entries.astype(np.uint8), np.uint8(0))[: 2 * ((len(entries) + 1) // 2)]
        item.add_new(0x00283006, "US", [int(v) for v in padded.view("<u2")])
    else:
        item.add_new(0x00283006, "US", [int(v) for v in entries])
    return item


def voi_dicom(path: Path, raw: np.ndarray, item, **elements) -> None:
    from pydicom.sequence import Sequence

    write_dicom(path, raw, VOILUTSequence=Sequence([item]), **elements)


def gamma_lut(top: int, n: int = TWELVE_BIT + 1) -> np.ndarray:
    """A square-root display curve over n inputs with entries 0..top (the kind a modality writes)."""
    return np.rint(top * np.sqrt(np.arange(n) / (n - 1))).astype(np.int64)


@pytest.mark.parametrize("vr,packed", [("US", False), ("US", True), ("OW", False), ("OW", True)])
def test_8_bit_voi_lut_on_12_bit_data(tmp_path, vr, packed):
    """pydicom scrambles this case (its index array has the entries' 8-bit width); every layout of
    8-bit entries must give exactly the table's values."""
    raw = gradient(np.uint16, top=TWELVE_BIT)
    lut = gamma_lut(255)
    voi_dicom(tmp_path / "v.dcm", raw, lut_item(lut, 8, vr=vr, packed=packed))
    out = read_image(tmp_path / "v.dcm")
    np.testing.assert_array_equal(out, lut[raw].astype(np.uint8))
    assert np.corrcoef(out.ravel(), raw.ravel())[0, 1] > 0.95


def test_16_bit_voi_lut_scaled_by_its_output_range(tmp_path):
    raw = gradient(np.uint16, top=TWELVE_BIT)
    lut = gamma_lut(65535)
    voi_dicom(tmp_path / "v.dcm", raw, lut_item(lut, 16, vr="OW"))
    out = read_image(tmp_path / "v.dcm")
    expected = np.rint(lut[raw] * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)


def test_voi_lut_first_mapped_value_and_clamping(tmp_path):
    raw = gradient(np.uint16, top=TWELVE_BIT)
    lut = np.linspace(0, 255, 1024).round().astype(np.int64)  # maps 1000..2023; outside clamps to the ends
    voi_dicom(tmp_path / "v.dcm", raw, lut_item(lut, 8, first=1000))
    out = read_image(tmp_path / "v.dcm")
    assert out[0, raw[0] < 1000].max() == 0 and out[0, raw[0] > 2023].min() == 255
    inside = (raw[0] >= 1000) & (raw[0] <= 2023)
    np.testing.assert_array_equal(out[0, inside], lut[raw[0, inside] - 1000])


def test_voi_lut_preferred_to_window_and_monochrome1_inverted(tmp_path):
    raw = gradient(np.uint16, top=TWELVE_BIT)
    lut = gamma_lut(255)
    voi_dicom(tmp_path / "v.dcm", raw, lut_item(lut, 8), photometric="MONOCHROME1", WindowCenter=100, WindowWidth=10)
    np.testing.assert_array_equal(read_image(tmp_path / "v.dcm"), 255 - lut[raw].astype(np.uint8))


def test_unusable_lut_is_a_warning_and_falls_back_to_the_window(tmp_path, caplog):
    raw = gradient(np.uint16, top=TWELVE_BIT)
    short = lut_item(gamma_lut(255), 8)
    short.LUTDescriptor = [5000, 0, 8]  # claims more entries than its data holds
    voi_dicom(tmp_path / "v.dcm", raw, short, WindowCenter=2048, WindowWidth=1024)
    with caplog.at_level(logging.WARNING, logger="cxr.dicom"):
        out = read_image(tmp_path / "v.dcm")
    assert any("VOI LUT ignored" in r.getMessage() and "v.dcm" in r.getMessage() for r in caplog.records)
    assert out[0, raw[0] < 1536].max() == 0 and out[0, raw[0] > 2560].min() == 255  # the window applied


def test_unhandled_photometric_is_a_warning(tmp_path, caplog):
    import pydicom

    write_dicom(tmp_path / "hsv.dcm", gradient(np.uint16, top=TWELVE_BIT))
    ds = pydicom.dcmread(tmp_path / "hsv.dcm")
    ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.PlanarConfiguration = "HSV", 3, 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = np.repeat(gradient()[..., None], 3, axis=2).tobytes()
    ds.save_as(tmp_path / "hsv.dcm")
    with caplog.at_level(logging.WARNING, logger="cxr.dicom"):
        out = read_image(tmp_path / "hsv.dcm")
    assert out[0, 0] == 0 and out[0, -1] == 255
    assert any("'HSV'" in r.getMessage() and "not handled" in r.getMessage() for r in caplog.records)


def test_modality_lut_8_bit_entries(tmp_path):
    from pydicom.sequence import Sequence

    raw = gradient(np.uint16, top=TWELVE_BIT)
    lut = gamma_lut(255)
    write_dicom(tmp_path / "m.dcm", raw, ModalityLUTSequence=Sequence([lut_item(lut, 8, packed=True, vr="OW")]))
    out = read_image(tmp_path / "m.dcm")
    assert np.corrcoef(out.ravel().astype(float), lut[raw].ravel())[0, 1] > 0.999


def test_multiframe_decodes_the_first_frame_only(tmp_path):
    frames = np.stack([gradient(np.uint16, top=TWELVE_BIT), np.zeros((H, W), np.uint16)])
    write_dicom(tmp_path / "mf.dcm", frames[0], NumberOfFrames=2)
    import pydicom

    ds = pydicom.dcmread(tmp_path / "mf.dcm")
    ds.PixelData = frames.astype(np.uint16).tobytes()
    ds.save_as(tmp_path / "mf.dcm")
    out = read_image(tmp_path / "mf.dcm")
    assert out.shape == (H, W) and out[0, -1] == 255


def test_decoded_bytes_limit_names_the_size(tmp_path):
    write_dicom(tmp_path / "d.dcm", gradient(np.uint16, top=TWELVE_BIT))
    data = (tmp_path / "d.dcm").read_bytes()
    with pytest.raises(Exception) as info:
        decode_image(data, "d.dcm", limits=DecodeLimits(max_pixels=10**6, max_bytes=H * W))  # 2 bytes a pixel needed
    assert "MB limit" in str(info.value) and "d.dcm" in str(info.value)


def test_bad_dicom_is_an_image_read_error(tmp_path):
    (tmp_path / "bad.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00")  # meta cut short
    assert "DICOM" in _read_error(tmp_path / "bad.dcm").reason
