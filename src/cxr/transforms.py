"""Image preprocessing tied to a weights record, and the seed's training augmentation.

Preprocessing is never chosen on its own: a weights record carries a `Preprocessing`, the checkpoint
stores it, and training, evaluation, prediction and serving all apply that same record.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from cxr.errors import CxrError

PREPROCESSING_MODES = ("caffe", "imagenet", "half")


@dataclass(frozen=True)
class Preprocessing:
    """How pixel values in [0, 255] become network input.

    caffe:    RGB->BGR, subtract the ImageNet BGR means, no scaling (Keras ResNet50).
    imagenet: x/255, subtract mean and divide by std per RGB channel (torchvision).
    half:     (x/255 - 0.5) / 0.5 (EfficientNet-Lite).
    """

    mode: str = "imagenet"
    size: int = 224

    def __post_init__(self) -> None:
        if self.mode not in PREPROCESSING_MODES:
            raise CxrError(f"unknown preprocessing mode {self.mode!r}; allowed: {', '.join(PREPROCESSING_MODES)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        return cls(**data)

    def mean_std(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """Per-channel (mean, std) in network channel order, applied to pixel values in [0, 255]."""
        if self.mode == "caffe":
            return (103.939, 116.779, 123.68), (1.0, 1.0, 1.0)
        if self.mode == "imagenet":
            return (0.485 * 255, 0.456 * 255, 0.406 * 255), (0.229 * 255, 0.224 * 255, 0.225 * 255)
        return (127.5, 127.5, 127.5), (127.5, 127.5, 127.5)

    @property
    def bgr(self) -> bool:
        return self.mode == "caffe"


def normalize(pixels: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    """Map float pixels in [0, 255] of shape (..., 3, H, W) (RGB order) or (..., 1, H, W) to network input.

    Works on single images and batches; a one-channel input is expanded to three channels.
    """
    if pixels.shape[-3] == 1:
        pixels = pixels.expand(*pixels.shape[:-3], 3, *pixels.shape[-2:])
    if pre.bgr:
        pixels = pixels.flip(-3)
    mean, std = pre.mean_std()
    mean_t = torch.tensor(mean, dtype=pixels.dtype, device=pixels.device).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=pixels.dtype, device=pixels.device).view(3, 1, 1)
    return (pixels - mean_t) / std_t
