"""The backbones a config can name, with their architecture variant and natural input preprocessing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from torch import nn

from cxr.errors import CxrError
from cxr.models.efficientnet import efficientnet_lite0
from cxr.models.resnet import resnet50


@dataclass(frozen=True)
class BackboneSpec:
    """A named backbone: how to build it and which preprocessing its own weights expect."""

    name: str
    variant: str  # architecture variant: v1.5 | keras | lite0
    preprocessing: str  # mode used for random or file weights (cxr.transforms.Preprocessing)
    factory: Callable[[], nn.Module]
    description: str


BACKBONES: dict[str, BackboneSpec] = {
    "resnet50": BackboneSpec(
        "resnet50", "v1.5", "imagenet", partial(resnet50, "v1.5"), "ResNet-50 v1.5, torchvision layout"
    ),
    "resnet50-keras": BackboneSpec(
        "resnet50-keras",
        "keras",
        "caffe",
        partial(resnet50, "keras"),
        "ResNet-50 v1, Keras layout (the reference)",
    ),
    "efficientnet_lite0": BackboneSpec(
        "efficientnet_lite0", "lite0", "half", efficientnet_lite0, "EfficientNet-Lite0 (TF 'SAME' padding)"
    ),
}


def backbone_spec(name: str) -> BackboneSpec:
    """The spec of a backbone name; a CxrError lists the allowed names."""
    if name not in BACKBONES:
        raise CxrError(f"unknown backbone {name!r}; allowed: {', '.join(BACKBONES)}")
    return BACKBONES[name]


def create_backbone(name: str) -> nn.Module:
    """A freshly initialised backbone (``forward_features``, ``num_features``, ``stages``)."""
    return backbone_spec(name).factory()
