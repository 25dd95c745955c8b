"""ResNet-50 written from scratch, in the two layouts whose ImageNet weights we can load.

- ``v1.5`` (torchvision): stride in the 3x3 conv of a bottleneck, convs without bias, BatchNorm
  eps 1e-5. Its ``state_dict`` keys and shapes equal those of ``torchvision.models.resnet50``
  without ``fc``, so torchvision's ImageNet files load with ``strict=True``.
- ``keras`` (the reference's Keras ``ResNet50``): stride in the first 1x1 conv, convs with bias,
  BatchNorm eps 1.001e-5. Module names are the same as v1.5; `keras_convert` maps Keras layer
  names onto them.

The backbone ends at the last feature map: ``forward_features(x) -> (N, num_features, h, w)``.
``stages`` lists the stem and the four residual stages, in order, for freezing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cxr.errors import CxrError

EXPANSION = 4  # a bottleneck's output has 4x the channels of its 3x3 conv


@dataclass(frozen=True)
class ResNetVariant:
    """What distinguishes the two layouts."""

    name: str
    stride_in_1x1: bool  # Keras/v1 puts the downsampling stride in the first 1x1 conv
    conv_bias: bool  # Keras convs have a bias
    bn_eps: float


VARIANTS: dict[str, ResNetVariant] = {
    "v1.5": ResNetVariant("v1.5", stride_in_1x1=False, conv_bias=False, bn_eps=1e-5),
    "keras": ResNetVariant("keras", stride_in_1x1=True, conv_bias=True, bn_eps=1.001e-5),
}

RESNET50_BLOCKS = (3, 4, 6, 3)
RESNET50_WIDTHS = (64, 128, 256, 512)


def _variant(name: str) -> ResNetVariant:
    if name not in VARIANTS:
        raise CxrError(f"unknown ResNet variant {name!r}; allowed: {', '.join(VARIANTS)}")
    return VARIANTS[name]


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 -> 1x1 expand, plus the (projected) shortcut; ReLU after the sum."""

    def __init__(self, in_channels: int, width: int, stride: int, variant: ResNetVariant) -> None:
        super().__init__()
        out_channels = width * EXPANSION
        stride1, stride3 = (stride, 1) if variant.stride_in_1x1 else (1, stride)
        bias, eps = variant.conv_bias, variant.bn_eps
        self.conv1 = nn.Conv2d(in_channels, width, 1, stride=stride1, bias=bias)
        self.bn1 = nn.BatchNorm2d(width, eps=eps)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride3, padding=1, bias=bias)
        self.bn2 = nn.BatchNorm2d(width, eps=eps)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=bias)
        self.bn3 = nn.BatchNorm2d(out_channels, eps=eps)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=bias),
                nn.BatchNorm2d(out_channels, eps=eps),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """A bottleneck ResNet backbone (no pooling, no classifier)."""

    def __init__(
        self,
        blocks: tuple[int, ...] = RESNET50_BLOCKS,
        widths: tuple[int, ...] = RESNET50_WIDTHS,
        variant: str = "v1.5",
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if len(blocks) != len(widths) or not blocks:
            raise CxrError(f"ResNet needs one width per stage, got blocks={blocks} widths={widths}")
        self.variant = _variant(variant)
        stem_width = widths[0]
        self.conv1 = nn.Conv2d(in_channels, stem_width, 7, stride=2, padding=3, bias=self.variant.conv_bias)
        self.bn1 = nn.BatchNorm2d(stem_width, eps=self.variant.bn_eps)
        self.relu = nn.ReLU(inplace=True)
        # Keras pads with zeros before its max pool; after a ReLU that equals PyTorch's padding.
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        channels = stem_width
        for index, (count, width) in enumerate(zip(blocks, widths, strict=True)):
            stride = 1 if index == 0 else 2
            layers = []
            for block in range(count):
                layers.append(Bottleneck(channels, width, stride if block == 0 else 1, self.variant))
                channels = width * EXPANSION
            self.add_module(f"layer{index + 1}", nn.Sequential(*layers))
        self.num_stages = len(blocks)
        self.num_features = channels
        self._init_weights()

    def _init_weights(self) -> None:
        """He init for convs (as torchvision), BatchNorm as identity, conv biases zero."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @property
    def stages(self) -> list[nn.Module]:
        """Stem, then layer1..layer4; together they hold every parameter of the backbone."""
        stem = nn.Sequential(self.conv1, self.bn1, self.relu, self.maxpool)
        return [stem, *(getattr(self, f"layer{i + 1}") for i in range(self.num_stages))]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image batch (N, 3, H, W) -> last feature map (N, num_features, H/32, W/32)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for index in range(self.num_stages):
            x = getattr(self, f"layer{index + 1}")(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


def resnet50(variant: str = "v1.5") -> ResNet:
    """ResNet-50 backbone: ``"v1.5"`` (torchvision layout) or ``"keras"`` (reference layout)."""
    return ResNet(RESNET50_BLOCKS, RESNET50_WIDTHS, variant=variant)
