"""The cheap image checks: colour (before the grayscale conversion), near-constant, few grey levels,
aspect ratio; a synthetic X-ray passes every one."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cxr.data.synthetic import make_image
from cxr.ood.image_checks import colour_reason, gray_reasons


@pytest.fixture(scope="module")
def xray() -> np.ndarray:
    return make_image("COVID", np.random.default_rng(0), size=96)


def _png(image: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).convert(mode or Image.fromarray(image).mode).save(buf, format="PNG")
    return buf.getvalue()


def test_a_synthetic_xray_passes_every_check_in_every_form(xray, tmp_path):
    rgb = np.repeat(xray[..., None], 3, axis=2)  # grey pixels stored as RGB, as many JPEG X-rays are
    path = tmp_path / "x.jpg"
    Image.fromarray(rgb).save(path, quality=85)
    for form in (xray, rgb, Image.fromarray(rgb), _png(rgb), path):
        assert colour_reason(form) is None
    assert gray_reasons(xray) == []


def test_colour_pictures_are_flagged_before_they_become_grey(tmp_path):
    rng = np.random.default_rng(1)
    photo = np.zeros((120, 100, 3), np.uint8)
    photo[..., 0] = 200
    photo[..., 1] = rng.integers(0, 120, (120, 100))
    path = tmp_path / "photo.jpg"
    Image.fromarray(photo).save(path)
    for form in (photo, Image.fromarray(photo), _png(photo), path, _png(photo, "P")):
        reason = colour_reason(form)
        assert reason is not None and "colour image" in reason


def test_near_constant_few_levels_and_odd_shapes_are_flagged(xray):
    assert "near-constant" in gray_reasons(np.zeros((64, 64), np.uint8))[0]
    assert "near-constant" in gray_reasons(np.full((64, 64), 255, np.uint8))[0]
    faint = np.full((64, 64), 100, np.uint8)
    faint[::7, ::5] = 104  # a few levels within a narrow range
    assert "near-constant" in gray_reasons(faint)[0]
    drawing = np.full((64, 64), 255, np.uint8)
    drawing[10:30, 10:50] = 0
    drawing[40:50, 5:60] = 128
    assert any("grey levels" in r for r in gray_reasons(drawing))
    strip = np.tile(xray, (1, 3))  # three X-rays side by side: aspect 3
    assert any("aspect ratio 3.0" in r for r in gray_reasons(strip))


def test_unreadable_or_grey_files_are_not_decoded_for_colour(tmp_path, xray):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert colour_reason(bad) is None  # the decoder reports it, not the colour check
    grey = tmp_path / "grey.png"
    Image.fromarray(xray).save(grey)
    assert colour_reason(grey) is None


def test_pixel_noise_is_flagged_and_smooth_images_are_not(xray):
    noise = np.random.default_rng(2).integers(0, 256, (128, 128), dtype=np.uint8)
    assert any("noise-like" in r for r in gray_reasons(noise))
    assert not any("noise-like" in r for r in gray_reasons(xray))


def test_an_inverted_xray_is_flagged_and_the_xray_is_not(xray):
    assert not any("inverted" in r for r in gray_reasons(xray))
    assert any("inverted" in r for r in gray_reasons(255 - xray))
