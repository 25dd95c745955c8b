"""Augmentations that imitate other scanners and other processing chains (`augment.scanner`).

A model trained on one hospital's images meets other exposures, contrast curves, detector
resolutions, noise, compression and fields of view elsewhere. Each operation below is applied to a
training image with probability `augment.scanner_p`, independently, in this fixed order, after the
seed's geometric augmentation:

- crop:     a field-of-view crop keeping CROP of each side at a random place, resized back;
- resample: down-sampling by a factor in RESAMPLE and back up (a coarser detector);
- blur:     Gaussian blur, sigma in BLUR_SIGMA pixels;
- sharpen:  unsharp-style sharpening, factor in SHARPEN (torchvision's `adjust_sharpness`);
- gamma:    a gamma curve, gamma log-uniform in GAMMA;
- contrast: contrast around the image mean, factor in CONTRAST;
- noise:    Gaussian noise, standard deviation in NOISE_STD grey levels;
- jpeg:     JPEG compression at a quality in JPEG_QUALITY (Pillow's encoder and decoder).

The image operations are torchvision's v2 functional transforms (noise is drawn with NumPy, JPEG is
Pillow's). Every
random number comes from a generator of its own, derived from the seed augmentation's generator
(`scanner_generator`: a child SeedSequence), so turning the scanner augmentations on leaves the
seed's draws, and so its images, exactly as they were; the same generator gives the same image.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from cxr.config import SCANNER_OPS
from cxr.errors import CxrError

CROP = (0.80, 1.0)  # fraction of each side kept by the field-of-view crop
RESAMPLE = (0.35, 0.8)  # down-sampling factor before resizing back
BLUR_SIGMA = (0.4, 1.5)  # pixels
SHARPEN = (1.5, 3.0)  # torchvision sharpness factor (1 = unchanged)
GAMMA = (0.7, 1.5)  # log-uniform
CONTRAST = (0.7, 1.3)  # blend factor with the image mean (1 = unchanged)
NOISE_STD = (2.0, 8.0)  # grey levels (of 255)
JPEG_QUALITY = (30, 95)  # inclusive
SCANNER_STREAM = 0x5CA7  # the spawn key that separates the scanner generator from the seed's


def parse_ops(spec: str) -> tuple[str, ...]:
    """`augment.scanner` ('none', 'all' or 'gamma,jpeg') as operations in SCANNER_OPS order."""
    if spec in ("", "none"):
        return ()
    names = SCANNER_OPS if spec == "all" else tuple(p.strip() for p in spec.split(","))
    unknown = sorted(set(names) - set(SCANNER_OPS))
    if unknown:
        raise CxrError(f"unknown scanner augmentation {unknown[0]!r}; allowed: none, all, {', '.join(SCANNER_OPS)}")
    return tuple(op for op in SCANNER_OPS if op in names)


def scanner_generator(rng: np.random.Generator) -> np.random.Generator:
    """A generator of its own for the scanner augmentations, derived from `rng`'s seed without drawing
    from it (its SeedSequence's child with key SCANNER_STREAM)."""
    seq = rng.bit_generator.seed_seq
    if not isinstance(seq, np.random.SeedSequence):
        raise CxrError("the scanner augmentation needs a generator made from a seed (np.random.default_rng(seed))")
    return np.random.default_rng(np.random.SeedSequence(seq.entropy, spawn_key=(*seq.spawn_key, SCANNER_STREAM)))


class ScannerAugment:
    """The operations `ops` (see the module docstring), each with probability `p`."""

    def __init__(self, ops: tuple[str, ...] | str, p: float = 0.5) -> None:
        self.ops = parse_ops(ops) if isinstance(ops, str) else tuple(op for op in SCANNER_OPS if op in ops)
        if not 0.0 <= p <= 1.0:
            raise CxrError(f"scanner augmentation probability must be in [0, 1], got {p}")
        self.p = float(p)

    def __repr__(self) -> str:
        return f"ScannerAugment({','.join(self.ops) or 'none'}, p={self.p})"

    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        """Draw which operations apply and their parameters (one draw per enabled operation, in order)."""
        out: dict[str, Any] = {}
        for op in self.ops:
            apply = bool(rng.random() < self.p)
            value = _draw(op, rng)
            if apply:
                out[op] = value
        return out

    def apply(self, img: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        """Apply drawn `params` to a float32 (H, W) image in [0, 255]; float32 (H, W) in [0, 255]."""
        x = torch.from_numpy(np.clip(np.asarray(img, dtype=np.float32), 0, 255) / 255.0).unsqueeze(0)  # (1, H, W)
        size = list(x.shape[-2:])
        for op in self.ops:
            if op in params:
                x = _OPS[op](x, params[op], size)
        return (x.squeeze(0).clamp_(0.0, 1.0) * 255.0).numpy().astype(np.float32)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.apply(img, self.sample_params(rng)) if self.ops else np.asarray(img, dtype=np.float32)


def _draw(op: str, rng: np.random.Generator) -> Any:
    if op == "crop":
        return {"keep": float(rng.uniform(*CROP)), "top": float(rng.random()), "left": float(rng.random())}
    if op == "gamma":
        return float(math.exp(rng.uniform(math.log(GAMMA[0]), math.log(GAMMA[1]))))
    if op == "jpeg":
        return int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
    if op == "noise":
        return {"std": float(rng.uniform(*NOISE_STD)), "seed": int(rng.integers(2**63))}
    ranges = {"resample": RESAMPLE, "blur": BLUR_SIGMA, "sharpen": SHARPEN, "contrast": CONTRAST}
    return float(rng.uniform(*ranges[op]))


def _crop(x: torch.Tensor, v: dict[str, float], size: list[int]) -> torch.Tensor:
    h, w = (max(1, round(s * v["keep"])) for s in size)
    top, left = round(v["top"] * (size[0] - h)), round(v["left"] * (size[1] - w))
    return TF.resized_crop(x, top, left, h, w, size, antialias=True)


def _resample(x: torch.Tensor, factor: float, size: list[int]) -> torch.Tensor:
    small = [max(8, round(s * factor)) for s in size]
    return TF.resize(TF.resize(x, small, antialias=True), size, antialias=True)


def _blur(x: torch.Tensor, sigma: float, size: list[int]) -> torch.Tensor:
    k = 2 * math.ceil(3 * sigma) + 1
    return TF.gaussian_blur(x, [k, k], [sigma, sigma])


def _noise(x: torch.Tensor, v: dict[str, Any], size: list[int]) -> torch.Tensor:
    noise = np.random.default_rng(v["seed"]).normal(0.0, v["std"] / 255.0, size).astype(np.float32)
    return x + torch.from_numpy(noise).unsqueeze(0)


def _jpeg(x: torch.Tensor, quality: int, size: list[int]) -> torch.Tensor:
    """Encode and decode with Pillow (torchvision's own JPEG codec is deprecated in favour of torchcodec)."""
    buffer = io.BytesIO()
    Image.fromarray((x[0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()).save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    return torch.from_numpy(np.asarray(Image.open(buffer), dtype=np.float32) / 255.0).unsqueeze(0)


_OPS = {
    "crop": _crop,
    "resample": _resample,
    "blur": _blur,
    "sharpen": lambda x, f, size: TF.adjust_sharpness(x.clamp(0, 1), f),
    "gamma": lambda x, g, size: TF.adjust_gamma(x.clamp(0, 1), g),
    "contrast": lambda x, c, size: TF.adjust_contrast(x.clamp(0, 1), c),
    "noise": _noise,
    "jpeg": _jpeg,
}
