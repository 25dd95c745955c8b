"""Image preprocessing tied to a weights record, the seed's training augmentation, and test-time views.

Preprocessing is never chosen on its own: a weights record carries a `Preprocessing`, the checkpoint
stores it, and training, evaluation, prediction and serving all apply that same record.

Test-time augmentation (`tta_probs`) averages the class probabilities over a fixed set of views: the
image itself, its horizontal mirror and four small shifts (edge pixels repeated, like the training
augmentation's 'nearest' fill). The views are deterministic, so TTA results repeat; evaluation and
prediction use this one function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from cxr.config import AugmentConfig, check_section
from cxr.errors import CxrError
from cxr.intensity import INTENSITY_METHODS, standardize
from cxr.scanner_augment import ScannerAugment, parse_ops, scanner_generator

PREPROCESSING_MODES = ("caffe", "imagenet", "half", "meanstd")
INTERPOLATIONS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                  "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}
CHANNEL_COUNTS = (1, 3)  # grayscale networks (torchxrayvision) or RGB ones
TTA_SHIFT_FRACTION = 0.04  # shift of the four shifted TTA views, as a fraction of the input side
INPUT_SIZES = range(16, 4097)  # input sides a stored record may give; others mean a corrupt or crafted file
_FIXED = {  # per-mode (mean, std) on the [0, 255] scale, in network channel order
    "caffe": ((103.939, 116.779, 123.68), (1.0, 1.0, 1.0)),
    "imagenet": ((0.485 * 255, 0.456 * 255, 0.406 * 255), (0.229 * 255, 0.224 * 255, 0.225 * 255)),
    "half": ((127.5, 127.5, 127.5), (127.5, 127.5, 127.5)),
}
_DEFAULTS = {"mean": None, "std": None, "channels": 3, "interpolation": "bilinear",  # omitted from to_dict
             "intensity": "none"}


@dataclass(frozen=True)
class Preprocessing:
    """How pixel values in [0, 255] become network input.

    caffe:    RGB->BGR, subtract the ImageNet BGR means, no scaling (Keras ResNet50).
    imagenet: x/255, subtract mean and divide by std per RGB channel (torchvision).
    half:     (x/255 - 0.5) / 0.5 (EfficientNet-Lite).
    meanstd:  x/255, subtract `mean` and divide by `std` per channel: a model's own pretrained config
              (timm's `pretrained_cfg`, torchvision's weights transforms, torchxrayvision's [-1024, 1024]).

    `channels` is 3 (the gray X-ray repeated as RGB) or 1 (fed as one channel, torchxrayvision);
    `interpolation` is the resize filter; `intensity` standardises each resized image before
    normalisation (`cxr.intensity`: none | equalize | clahe). Records stored before these fields
    existed load unchanged.
    """

    mode: str = "imagenet"
    size: int = 224
    mean: tuple[float, ...] | None = None  # meanstd: per-channel mean of x/255
    std: tuple[float, ...] | None = None  # meanstd: per-channel std of x/255
    channels: int = 3  # network input channels: 3 (RGB) or 1 (grayscale)
    interpolation: str = "bilinear"  # resize filter: bilinear | bicubic | nearest | lanczos
    intensity: str = "none"  # intensity standardisation of the resized image: none | equalize | clahe

    def __post_init__(self) -> None:
        if self.intensity not in INTENSITY_METHODS:
            raise CxrError(f"unknown preprocessing intensity {self.intensity!r}; allowed: {', '.join(INTENSITY_METHODS)}")
        if self.mode not in PREPROCESSING_MODES:
            raise CxrError(f"unknown preprocessing mode {self.mode!r}; allowed: {', '.join(PREPROCESSING_MODES)}")
        if self.channels not in CHANNEL_COUNTS:
            raise CxrError(f"preprocessing channels must be 1 or 3, got {self.channels!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise CxrError(f"unknown preprocessing interpolation {self.interpolation!r}; "
                           f"allowed: {', '.join(INTERPOLATIONS)}")
        if self.mode != "meanstd":
            if self.mean is not None or self.std is not None or self.channels != 3:
                raise CxrError(f"preprocessing mode {self.mode!r} has fixed RGB mean/std; use mode meanstd "
                               "for a model's own mean, std or channel count")
            return
        for name in ("mean", "std"):
            values = getattr(self, name)
            if (not isinstance(values, tuple | list) or len(values) != self.channels
                    or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)):
                raise CxrError(f"preprocessing meanstd needs {self.channels} {name} values, got {values!r}")
            object.__setattr__(self, name, tuple(float(v) for v in values))
        if min(self.std) <= 0:
            raise CxrError(f"preprocessing std must be positive, got {self.std}")

    def to_dict(self) -> dict[str, Any]:
        """The record as stored; fields at their defaults are left out (older records look the same)."""
        data = asdict(self)
        for key, default in _DEFAULTS.items():
            if data[key] == default:
                del data[key]
            elif isinstance(data[key], tuple):
                data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        """The record as stored (in a checkpoint): keys and the input size are checked, since a
        crafted size would make every prediction allocate gigabytes."""
        if not isinstance(data, dict):
            raise CxrError(f"preprocessing record must be a mapping, got {type(data).__name__}")
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise CxrError(f"preprocessing record has unknown keys {unknown}; allowed: {', '.join(allowed)}")
        size = data.get("size", cls.size)
        if isinstance(size, bool) or not isinstance(size, int) or size not in INPUT_SIZES:
            raise CxrError(f"preprocessing size must be an integer in {INPUT_SIZES.start}..{INPUT_SIZES.stop - 1}, "
                           f"got {size!r}")
        return cls(**data)

    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel (mean, std) in network channel order, applied to pixel values in [0, 255]."""
        if self.mode in _FIXED:
            return _FIXED[self.mode]
        return tuple(m * 255 for m in self.mean or ()), tuple(s * 255 for s in self.std or ())

    @property
    def bgr(self) -> bool:
        return self.mode == "caffe"

    def describe(self) -> str:
        """'imagenet' or 'meanstd mean (0.5,) std (0.000488,), 1 channel, bicubic' for listings."""
        text = self.mode
        if self.mode == "meanstd":
            text += f" mean {tuple(round(m, 6) for m in self.mean or ())} std {tuple(round(s, 6) for s in self.std or ())}"
        if self.channels != 3:
            text += f", {self.channels} channel"
        if self.interpolation != "bilinear":
            text += f", {self.interpolation}"
        if self.intensity != "none":
            text += f", {self.intensity}"
        return text


def normalize(pixels: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    """Map float pixels in [0, 255] of shape (..., 3, H, W) (RGB order) or (..., 1, H, W) to network input.

    Works on single images and batches; a one-channel input is expanded to three channels unless the
    record feeds one channel (`pre.channels == 1`).
    """
    if pixels.shape[-3] == 1 and pre.channels == 3:
        pixels = pixels.expand(*pixels.shape[:-3], 3, *pixels.shape[-2:])
    elif pixels.shape[-3] != pre.channels:
        raise CxrError(f"preprocessing expects {pre.channels} channel(s), got pixels of shape {tuple(pixels.shape)}")
    if pre.bgr:
        pixels = pixels.flip(-3)
    mean, std = pre.mean_std()
    mean_t = torch.tensor(mean, dtype=pixels.dtype, device=pixels.device).view(pre.channels, 1, 1)
    std_t = torch.tensor(std, dtype=pixels.dtype, device=pixels.device).view(pre.channels, 1, 1)
    return (pixels - mean_t) / std_t


def resize_gray(img: np.ndarray, size: int, interpolation: str = "bilinear") -> np.ndarray:
    """Resize a uint8 (H, W) image to (size, size) with a PIL filter (bilinear by default; returned as
    is if it fits)."""
    if img.ndim != 2:
        raise CxrError(f"expected a grayscale (H, W) image, got shape {img.shape}")
    if img.shape == (size, size):
        return img
    resized = Image.fromarray(img).resize((size, size), INTERPOLATIONS[interpolation])
    return np.array(resized)  # a writable copy (np.asarray of a PIL image is read-only)


def to_input(img: np.ndarray, pre: Preprocessing) -> torch.Tensor:
    """Grayscale (H, W) pixels in [0, 255] (uint8 or float) -> normalised float32 tensor (C, H, W),
    C = `pre.channels`; the record's intensity standardisation first (on the augmented image in training)."""
    if pre.intensity != "none":
        img = standardize(img, pre.intensity)
    pixels = torch.from_numpy(np.array(img, dtype=np.float32, order="C"))
    return normalize(pixels.unsqueeze(0), pre).contiguous()


class SeedAugment:
    """The seed's Keras `ImageDataGenerator` augmentation, drawn from an explicit generator.

    Per image: rotation uniform in [-r, r] degrees, shifts uniform in [-s, s] of the size, zoom factors
    `zx`, `zy` drawn independently in the zoom range, a left-right flip with p=0.5, then a brightness
    factor: pixels are multiplied and clipped to [0, 255] (PIL `ImageEnhance.Brightness` in Keras).
    Rotation, shift and zoom form one bilinear affine warp about the image centre, composed like
    Keras' `apply_affine_transform`: an output pixel `o` samples the input at `c + R(Z(o - c) + t)`.
    So zoom > 1 samples a larger region (the content shrinks), as in Keras. Pixels sampled outside
    the image follow `fill_mode` ('nearest' replicates the edge pixel, Keras' default).
    Keras pairs its height range with its x axis; here `tx` is the horizontal (column) shift drawn from
    `width_shift` and `ty` the vertical one, which is the same distribution for the seed's square
    images and equal ranges.
    """

    def __init__(self, cfg: AugmentConfig) -> None:
        check_section(cfg, "augment")  # as at config load: configs are also made in code
        self.cfg = cfg
        ops = parse_ops(cfg.scanner)  # then `augment.scanner`, from a generator of its own (cxr.scanner_augment)
        self.scanner = ScannerAugment(ops, cfg.scanner_p) if ops else None

    def __repr__(self) -> str:
        return f"SeedAugment({self.cfg!r})"

    def sample_params(self, rng: np.random.Generator, shape: tuple[int, ...]) -> dict[str, Any]:
        """Draw one transform for an image of `shape` (H, W); the draw order follows Keras."""
        height, width = shape[:2]
        cfg = self.cfg
        return {
            "theta": float(rng.uniform(-cfg.rotation, cfg.rotation)),
            "ty": float(rng.uniform(-cfg.height_shift, cfg.height_shift) * height),
            "tx": float(rng.uniform(-cfg.width_shift, cfg.width_shift) * width),
            "zx": float(rng.uniform(*cfg.zoom)),
            "zy": float(rng.uniform(*cfg.zoom)),
            "flip": bool(rng.random() < 0.5) and cfg.horizontal_flip,
            "brightness": float(rng.uniform(*cfg.brightness)),
        }

    def apply(self, img: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        """Apply drawn `params` to a (H, W) image; returns float32 in [0, 255]."""
        out = warp_affine(img.astype(np.float32, copy=False), params, self.cfg.fill_mode)
        if params["flip"]:
            out = np.ascontiguousarray(out[:, ::-1])
        return np.clip(out * np.float32(params["brightness"]), 0.0, 255.0, out=out)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Augment one (H, W) uint8 image; with `cfg.enabled` false it is only converted to float32."""
        if not self.cfg.enabled:
            return img.astype(np.float32)
        out = self.apply(img, self.sample_params(rng, img.shape))
        return self.scanner(out, scanner_generator(rng)) if self.scanner is not None else out


def affine_matrix(params: dict[str, Any], shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(matrix, offset) in (row, col) pixel coordinates: output pixel o samples input `matrix @ o + offset`."""
    theta = np.deg2rad(params["theta"])
    cos, sin = np.cos(theta), np.sin(theta)
    # Keras builds R @ T @ Z in (x=col, y=row); written directly in (row, col) order here.
    rotation = np.array([[cos, sin], [-sin, cos]])
    zoom = np.diag([params["zy"], params["zx"]])
    shift = np.array([params["ty"], params["tx"]])
    centre = (np.array(shape[:2], dtype=np.float64) - 1) / 2
    matrix = rotation @ zoom
    offset = centre + rotation @ shift - matrix @ centre
    return matrix, offset


def warp_affine(img: np.ndarray, params: dict[str, Any], fill_mode: str = "nearest") -> np.ndarray:
    """Bilinear affine warp of a float32 (H, W) image by `params` (theta, tx, ty, zx, zy).

    The seed's 'nearest' fill runs on torch's `grid_sample` (about 1 ms on 224x224 in one thread, half
    the time of SciPy; DataLoader workers run one thread each); the other fill modes use
    `scipy.ndimage.affine_transform`, exactly as Keras does.
    """
    matrix, offset = affine_matrix(params, img.shape)
    if fill_mode == "nearest":
        return _grid_sample_border(img, matrix, offset)
    return ndimage.affine_transform(img, matrix, offset, order=1, mode=fill_mode, cval=0.0)


def grid_theta(matrix: np.ndarray, offset: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The (2, 3) `affine_grid` matrix of a (row, col) pixel warp `matrix @ o + offset` on `shape`.

    grid_sample works in normalised (x, y) in [-1, 1] with align_corners=True: pixel = (n + 1) * half.
    """
    height, width = shape[:2]
    half = np.array([(height - 1) / 2, (width - 1) / 2])
    scale = np.where(half > 0, half, 1.0)
    norm_matrix = matrix * half[None, :] / scale[:, None]
    norm_offset = (matrix @ half + offset) / scale - 1
    theta = np.empty((2, 3))
    theta[:, :2] = norm_matrix[::-1, ::-1]  # (row, col) -> (x, y)
    theta[:, 2] = norm_offset[::-1]
    return theta


def _grid_sample_border(img: np.ndarray, matrix: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """`affine_transform(order=1, mode='nearest')` via grid_sample with border padding."""
    height, width = img.shape
    theta_t = torch.from_numpy(grid_theta(matrix, offset, img.shape)).to(torch.float32).unsqueeze(0)
    grid = F.affine_grid(theta_t, [1, 1, height, width], align_corners=True)
    pixels = torch.from_numpy(np.ascontiguousarray(img)).view(1, 1, height, width)
    out = F.grid_sample(pixels, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.view(height, width).numpy()


# ------------------------------------------------------------------------------ test-time augmentation


def tta_views(batch: torch.Tensor) -> list[torch.Tensor]:
    """The TTA views of a batch (N, C, H, W): identity, horizontal flip, and shifts by
    `TTA_SHIFT_FRACTION` of the side left, right, up and down with edge pixels repeated."""
    side = min(batch.shape[-2:])
    s = max(1, round(TTA_SHIFT_FRACTION * side))
    views = [batch, batch.flip(-1)]
    for dx, dy in ((s, 0), (-s, 0), (0, s), (0, -s)):
        views.append(shift(batch, dx, dy))
    return views


def shift(batch: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Translate (N, C, H, W) by dx columns (right if > 0) and dy rows (down if > 0), repeating edges."""
    h, w = batch.shape[-2:]
    padded = F.pad(batch, (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0)), mode="replicate")
    top, left = max(-dy, 0), max(-dx, 0)
    return padded[..., top : top + h, left : left + w].contiguous()


def output_probs(logits: torch.Tensor, multilabel: bool = False) -> torch.Tensor:
    """Probabilities from logits: softmax over the classes, or one sigmoid per finding (multi-label)."""
    return torch.sigmoid(logits.float()) if multilabel else torch.softmax(logits.float(), dim=1)


def tta_probs(
    forward: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor, multilabel: bool = False
) -> torch.Tensor:
    """Probabilities (N, classes), float32, averaged over the `tta_views` of an image batch.

    `forward` maps a batch to logits. Batches of cached features (N, C, 1, 1) have no spatial extent
    to shift, so they are scored as they are.
    """
    views = tta_views(batch) if batch.dim() == 4 and min(batch.shape[-2:]) > 1 else [batch]
    total: torch.Tensor | None = None
    for view in views:
        probs = output_probs(forward(view), multilabel)
        total = probs if total is None else total + probs
    return total / len(views)
