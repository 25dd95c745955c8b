"""Preprocessing presets, resizing and the seed's Keras augmentation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy import ndimage

from cxr.config import AugmentConfig
from cxr.errors import CxrError
from cxr.transforms import (
    Preprocessing,
    SeedAugment,
    affine_matrix,
    normalize,
    resize_gray,
    to_input,
    warp_affine,
)

SIZE = 64
IDENTITY = {"theta": 0.0, "tx": 0.0, "ty": 0.0, "zx": 1.0, "zy": 1.0, "flip": False, "brightness": 1.0}


def _dot(row: int, col: int, size: int = SIZE) -> np.ndarray:
    img = np.zeros((size, size), dtype=np.uint8)
    img[row - 1 : row + 2, col - 1 : col + 2] = 255
    return img


def _centroid(img: np.ndarray) -> np.ndarray:
    return np.array(ndimage.center_of_mass(img.astype(np.float64)))


def _smooth_image(seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).random((SIZE, SIZE)) * 255
    return ndimage.gaussian_filter(noise, 2).astype(np.float32)


# --- normalize / to_input -------------------------------------------------------------------------


def test_caffe_is_bgr_minus_imagenet_means() -> None:
    rgb = torch.tensor([10.0, 20.0, 30.0]).view(3, 1, 1)
    out = normalize(rgb, Preprocessing("caffe")).flatten()
    assert out.tolist() == pytest.approx([30 - 103.939, 20 - 116.779, 10 - 123.68], abs=1e-4)


def test_imagenet_mode_maps_the_channel_mean_to_zero_and_scales_by_std() -> None:
    rgb = torch.tensor([0.485 * 255, 0.456 * 255 + 0.224 * 255, 0.0]).view(3, 1, 1)
    out = normalize(rgb, Preprocessing("imagenet")).flatten()
    assert out.tolist() == pytest.approx([0.0, 1.0, -0.406 / 0.225], abs=1e-5)


def test_half_mode_maps_0_255_to_minus_one_one() -> None:
    img = np.array([[0, 255], [128, 0]], dtype=np.uint8)
    out = to_input(img, Preprocessing("half"))
    assert out.shape == (3, 2, 2) and out.dtype == torch.float32
    assert out[:, 0, 0].tolist() == [-1.0, -1.0, -1.0]
    assert out[:, 0, 1].tolist() == [1.0, 1.0, 1.0]
    assert out[0, 1, 0].item() == pytest.approx(0.5 / 127.5)


def test_to_input_accepts_float_pixels_and_batches_normalise_alike() -> None:
    img = _smooth_image()
    pre = Preprocessing("caffe")
    single = to_input(img, pre)
    batch = normalize(torch.from_numpy(img).expand(2, 1, SIZE, SIZE), pre)
    assert torch.allclose(single, batch[1])
    assert single.is_contiguous()


def test_unknown_preprocessing_mode_is_a_user_error() -> None:
    with pytest.raises(CxrError, match="caffe"):
        Preprocessing("bogus")


def test_records_of_older_checkpoints_load_and_stay_as_they_were() -> None:
    for stored in ({"mode": "caffe", "size": 224}, {"mode": "half", "size": 128}, {"mode": "imagenet"}):
        pre = Preprocessing.from_dict(stored)
        assert (pre.channels, pre.mean, pre.interpolation) == (3, None, "bilinear")
        assert pre.to_dict() == {"size": 224, **stored}  # no new keys: old readers read it too


def test_meanstd_records_carry_their_own_mean_std_and_channels() -> None:
    pre = Preprocessing("meanstd", 96, mean=[0.5, 0.4, 0.3], std=[0.25, 0.2, 0.1], interpolation="bicubic")
    assert pre.to_dict() == {"mode": "meanstd", "size": 96, "mean": [0.5, 0.4, 0.3], "std": [0.25, 0.2, 0.1],
                             "interpolation": "bicubic"}
    assert Preprocessing.from_dict(pre.to_dict()) == pre
    out = normalize(torch.full((3, 1, 1), 127.5), pre).flatten()
    assert torch.allclose(out, torch.tensor([(0.5 - 0.5) / 0.25, (0.5 - 0.4) / 0.2, (0.5 - 0.3) / 0.1]))
    gray = Preprocessing("meanstd", 8, mean=(0.5,), std=(0.5,), channels=1)
    assert to_input(np.full((8, 8), 255, np.uint8), gray).shape == (1, 8, 8)
    assert torch.allclose(to_input(np.full((8, 8), 255, np.uint8), gray), torch.ones(1, 8, 8))


@pytest.mark.parametrize("fields,needle", [
    ({"mode": "imagenet", "mean": (0.5, 0.5, 0.5)}, "use mode meanstd"),
    ({"mode": "meanstd", "mean": (0.5,), "std": (0.5, 0.5, 0.5)}, "needs 3 mean values"),
    ({"mode": "meanstd", "mean": (0.5,), "std": (0.0,), "channels": 1}, "std must be positive"),
    ({"mode": "meanstd", "mean": (0.5, 0.5), "std": (1, 1), "channels": 2}, "channels must be 1 or 3"),
    ({"mode": "half", "interpolation": "cubic"}, "allowed: bilinear, bicubic"),
])
def test_bad_records_are_user_errors(fields: dict, needle: str) -> None:
    with pytest.raises(CxrError, match=needle):
        Preprocessing.from_dict(fields)


# --- resize_gray ----------------------------------------------------------------------------------


def test_resize_gray_shape_dtype_and_constant_image() -> None:
    img = np.full((50, 80), 77, dtype=np.uint8)
    out = resize_gray(img, 32)
    assert out.shape == (32, 32) and out.dtype == np.uint8
    assert np.all(out == 77)
    assert resize_gray(out, 32) is out


def test_resize_gray_is_bilinear_not_nearest() -> None:
    img = np.zeros((4, 4), dtype=np.uint8)
    img[:, 2:] = 200
    out = resize_gray(img, 8)
    assert len(np.unique(out[0])) > 2  # a ramp across the edge, not a hard step


def test_resize_gray_follows_the_records_filter() -> None:
    img = np.random.default_rng(0).integers(0, 255, (20, 20), dtype=np.uint8)
    bicubic, bilinear = resize_gray(img, 13, "bicubic"), resize_gray(img, 13)
    assert bicubic.shape == (13, 13) and not np.array_equal(bicubic, bilinear)


def test_resize_gray_refuses_colour_arrays() -> None:
    with pytest.raises(CxrError, match="shape"):
        resize_gray(np.zeros((4, 4, 3), dtype=np.uint8), 2)


# --- SeedAugment parameters -----------------------------------------------------------------------


def test_params_stay_in_the_seed_ranges_and_cover_them() -> None:
    augment = SeedAugment(AugmentConfig())
    rng = np.random.default_rng(0)
    draws = [augment.sample_params(rng, (SIZE, 2 * SIZE)) for _ in range(2000)]
    columns = {key: np.array([d[key] for d in draws], dtype=float) for key in IDENTITY}
    bounds = {"theta": 5.0, "ty": 0.05 * SIZE, "tx": 0.05 * 2 * SIZE}
    for key, bound in bounds.items():
        assert np.abs(columns[key]).max() <= bound
        assert columns[key].min() < -0.9 * bound and columns[key].max() > 0.9 * bound
    for key in ("zx", "zy", "brightness"):
        assert 0.9 <= columns[key].min() < 0.91 and 1.09 < columns[key].max() <= 1.1
    assert abs(np.corrcoef(columns["zx"], columns["zy"])[0, 1]) < 0.1  # independent per axis
    assert 0.45 < columns["flip"].mean() < 0.55


def test_no_flip_when_disabled() -> None:
    augment = SeedAugment(AugmentConfig(horizontal_flip=False))
    rng = np.random.default_rng(0)
    assert not any(augment.sample_params(rng, (SIZE, SIZE))["flip"] for _ in range(200))


@pytest.mark.parametrize(
    "change",
    [{"fill_mode": "mirror"}, {"rotation": -1.0}, {"width_shift": 1.5}, {"zoom": (1.1, 0.9)}, {"brightness": (0.0, 1.0)}],
)
def test_bad_augment_settings_are_user_errors(change: dict) -> None:
    with pytest.raises(CxrError, match=next(iter(change))):
        SeedAugment(dataclasses.replace(AugmentConfig(), **change))


# --- SeedAugment geometry -------------------------------------------------------------------------


def test_identity_params_leave_the_image_unchanged() -> None:
    img = _smooth_image()
    out = SeedAugment(AugmentConfig()).apply(img, IDENTITY)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, img, atol=1e-3)


def test_shift_moves_content_by_minus_t_like_keras() -> None:
    img = _dot(32, 32)
    out = SeedAugment(AugmentConfig()).apply(img, {**IDENTITY, "tx": 3.0, "ty": -2.0})
    np.testing.assert_allclose(_centroid(out), [34.0, 29.0], atol=1e-6)


def test_zoom_above_one_shrinks_the_content_towards_the_centre() -> None:
    centre = (SIZE - 1) / 2
    img = _dot(int(centre + 0.5) + 20, int(centre + 0.5))  # 20.5 px below the centre
    out = SeedAugment(AugmentConfig()).apply(img, {**IDENTITY, "zy": 1.1})
    row = _centroid(out)[0]
    assert row - centre == pytest.approx(20.5 / 1.1, abs=0.1)


def test_rotation_turns_a_dot_about_the_centre_by_theta() -> None:
    centre = (SIZE - 1) / 2
    img = _dot(int(centre + 0.5), int(centre + 0.5) + 20)  # about 20 px right of the centre
    before = _centroid(img) - centre
    after = _centroid(SeedAugment(AugmentConfig()).apply(img, {**IDENTITY, "theta": 5.0})) - centre
    assert np.hypot(*after) == pytest.approx(np.hypot(*before), abs=0.2)
    turned = np.arctan2(after[0], after[1]) - np.arctan2(before[0], before[1])
    assert abs(np.degrees(turned)) == pytest.approx(5.0, abs=0.3)


def test_flip_mirrors_left_right() -> None:
    img = _dot(10, 5)
    out = SeedAugment(AugmentConfig()).apply(img, {**IDENTITY, "flip": True})
    np.testing.assert_allclose(_centroid(out), [10.0, SIZE - 1 - 5.0], atol=1e-6)


def test_brightness_multiplies_and_clips() -> None:
    img = np.array([[100, 250]], dtype=np.uint8).repeat(4, axis=0)
    out = SeedAugment(AugmentConfig()).apply(img, {**IDENTITY, "brightness": 1.1})
    np.testing.assert_allclose(out[:, 0], 110.0, rtol=1e-6)
    assert np.all(out[:, 1] == 255.0)


def test_random_draws_move_a_dot_only_within_the_seed_bounds() -> None:
    augment = SeedAugment(AugmentConfig(horizontal_flip=False))
    centre = (SIZE - 1) / 2
    start = np.array([centre + 12, centre + 12])
    img = _dot(int(start[0]), int(start[1]))
    radius = np.hypot(*(_centroid(img) - centre))
    # |Z^-1 (R^-1 v - t) - v| <= |v| (1/0.9 - 1) + (2 sin(2.5 deg) |v| + |t|) / 0.9
    bound = radius * (1 / 0.9 - 1) + (2 * np.sin(np.radians(2.5)) * radius + np.hypot(3.2, 3.2)) / 0.9
    rng = np.random.default_rng(1)
    moves = [np.hypot(*(_centroid(augment(img, rng)) - _centroid(img))) for _ in range(200)]
    assert max(moves) <= bound + 0.5
    assert max(moves) > 0.5 * bound  # the draws do use the range


def test_same_seed_same_output_different_seed_different_output() -> None:
    augment = SeedAugment(AugmentConfig())
    img = _smooth_image().astype(np.uint8)
    first = augment(img, np.random.default_rng(7))
    again = augment(img, np.random.default_rng(7))
    other = augment(img, np.random.default_rng(8))
    assert first.dtype == np.float32 and first.shape == img.shape
    assert first.min() >= 0 and first.max() <= 255
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_disabled_augmentation_only_converts_to_float() -> None:
    img = _smooth_image().astype(np.uint8)
    out = SeedAugment(AugmentConfig(enabled=False))(img, np.random.default_rng(0))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, img)


# --- fill modes and exactness against Keras --------------------------------------------------------


def test_nearest_fill_replicates_the_edge_pixel() -> None:
    img = np.full((SIZE, SIZE), 50, dtype=np.uint8)
    img[:, 0] = 200
    out = SeedAugment(AugmentConfig()).apply(img, {**IDENTITY, "tx": -10.0})  # content moves right
    np.testing.assert_allclose(out[:, :10], 200.0, atol=1e-3)
    np.testing.assert_allclose(out[:, 11:], 50.0, atol=1e-3)


def test_constant_fill_leaves_zeros_outside() -> None:
    img = np.full((SIZE, SIZE), 50, dtype=np.uint8)
    out = SeedAugment(AugmentConfig(fill_mode="constant")).apply(img, {**IDENTITY, "tx": -10.0})
    np.testing.assert_allclose(out[:, :9], 0.0, atol=1e-3)


def _keras_apply_affine_transform(x: np.ndarray, p: dict) -> np.ndarray:
    """Keras' apply_affine_transform (tf.keras 2.x) for one channel: R @ T @ Z about the centre, x/y swapped."""
    theta = np.deg2rad(p["theta"])
    rotation = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    shift = np.array([[1, 0, p["tx"]], [0, 1, p["ty"]], [0, 0, 1]])
    zoom = np.array([[p["zx"], 0, 0], [0, p["zy"], 0], [0, 0, 1]])
    h, w = x.shape
    o_x, o_y = h / 2 - 0.5, w / 2 - 0.5
    offset = np.array([[1, 0, o_x], [0, 1, o_y], [0, 0, 1]])
    reset = np.array([[1, 0, -o_x], [0, 1, -o_y], [0, 0, 1]])
    m = offset @ rotation @ shift @ zoom @ reset
    m[:, [0, 1]] = m[:, [1, 0]]
    m[[0, 1]] = m[[1, 0]]
    return ndimage.affine_transform(x, m[:2, :2], m[:2, 2], order=1, mode="nearest")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_warp_matches_keras_apply_affine_transform(seed: int) -> None:
    augment = SeedAugment(AugmentConfig())
    img = _smooth_image(seed)
    params = augment.sample_params(np.random.default_rng(seed), img.shape)
    ours = warp_affine(img, params, "nearest")  # the torch grid_sample path
    np.testing.assert_allclose(ours, _keras_apply_affine_transform(img, params), atol=2e-3)


def test_scipy_path_agrees_with_the_fast_path_inside_the_image() -> None:
    img = _smooth_image(3)
    params = {**IDENTITY, "theta": 3.0, "tx": 1.5, "ty": -2.0, "zx": 0.95, "zy": 1.05}
    fast = warp_affine(img, params, "nearest")
    reflect = warp_affine(img, params, "reflect")
    np.testing.assert_allclose(fast[8:-8, 8:-8], reflect[8:-8, 8:-8], atol=2e-3)


def test_affine_matrix_of_identity_is_identity() -> None:
    matrix, offset = affine_matrix(IDENTITY, (SIZE, SIZE))
    np.testing.assert_allclose(matrix, np.eye(2))
    np.testing.assert_allclose(offset, 0.0, atol=1e-12)
