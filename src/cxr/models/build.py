"""Backbone + weights + head = Classifier, and freezing.

Freeze modes:
- ``base``: no backbone parameter trains and every backbone BatchNorm stays in eval mode, so its
  running statistics never change (the reference's frozen ResNet-50);
- ``stages:N``: the last N entries of ``backbone.stages`` train, earlier ones are frozen as in ``base``;
- ``none``: everything trains.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from cxr.errors import CxrError
from cxr.models.backbones import create_backbone
from cxr.models.head import Head
from cxr.models.spec import FREEZE_MODES, ModelSpec
from cxr.models.weights import resolve_weights
from cxr.transforms import Preprocessing

log = logging.getLogger(__name__)

class Classifier(nn.Module):
    """A backbone with ``forward_features`` and the MLP head; frozen BatchNorms stay in eval mode."""

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        preprocessing: Preprocessing,
        backbone_name: str = "",
        weights: str = "random",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.preprocessing = preprocessing
        self.backbone_name = backbone_name
        self.weights = weights
        self.freeze = "none"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images (N, C_in, H, W) -> backbone feature map (N, C, h, w)."""
        return self.backbone.forward_features(x)

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        """Feature map (N, C, h, w) or pooled features (N, C) -> logits (N, classes)."""
        return self.head(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def train(self, mode: bool = True) -> Classifier:
        """As nn.Module.train, but the BatchNorms of frozen stages stay in eval mode."""
        super().train(mode)
        if mode:
            for module in frozen_norms(self):
                module.eval()
        return self


def parse_freeze(mode: str, num_stages: int) -> int:
    """Number of trailing backbone stages that train: 0 for base, all for none, N for stages:N."""
    if mode == "base":
        return 0
    if mode == "none":
        return num_stages
    kind, _, count = str(mode).partition(":")
    if kind == "stages" and count.isdigit() and 0 <= int(count) <= num_stages:
        return int(count)
    raise CxrError(
        f"unknown freeze mode {mode!r}; allowed: {', '.join(FREEZE_MODES)} with N in 0..{num_stages}"
    )


def frozen_stages(model: Classifier) -> list[nn.Module]:
    """The backbone stages that are frozen under ``model.freeze``."""
    stages = model.backbone.stages
    trainable = parse_freeze(model.freeze, len(stages))
    return stages[: len(stages) - trainable]


def frozen_norms(model: Classifier) -> list[nn.Module]:
    """BatchNorm modules inside frozen stages (kept in eval mode)."""
    return [
        module
        for stage in frozen_stages(model)
        for module in stage.modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
    ]


def apply_freeze(model: Classifier, mode: str) -> Classifier:
    """Set ``requires_grad`` and BatchNorm modes for a freeze mode; the head always trains."""
    parse_freeze(mode, len(model.backbone.stages))  # validate before changing anything
    model.freeze = mode
    for param in model.parameters():
        param.requires_grad_(True)
    for stage in frozen_stages(model):
        for param in stage.parameters():
            param.requires_grad_(False)
    model.train(model.training)
    return model


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Total, trainable and non-trainable parameter counts (buffers such as BN statistics excluded)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "non_trainable": total - trainable}


def build_model(cfg: ModelSpec, num_classes: int, *, load_weights: bool = True) -> Classifier:
    """Build the classifier of a model config; ``load_weights=False`` touches no file (checkpoint restore)."""
    record = resolve_weights(cfg.weights, cfg.backbone)
    backbone = create_backbone(cfg.backbone, in_chans=record.preprocessing.channels)
    if load_weights:
        record.load(backbone)
    head = Head(backbone.num_features, tuple(cfg.head), num_classes, cfg.dropout, zero_last=cfg.head_init == "zeros")
    model = Classifier(backbone, head, record.preprocessing, backbone_name=cfg.backbone, weights=cfg.weights)
    apply_freeze(model, cfg.freeze)
    counts = count_parameters(model)
    log.debug("built %s (%s weights, freeze %s): %s", cfg.backbone, cfg.weights, cfg.freeze, counts)
    return model


class FrozenNormStats(nn.Module):
    """`model` with every BatchNorm kept in inference mode, also while training (the fine-tuning phase).

    The head phase learned on features computed with the backbone's running statistics. Switching the
    BatchNorms to per-batch statistics would change those features at once (on X-rays, far from the
    ImageNet statistics, by enough to undo much of the head phase), and small per-process batches make
    them noisy. So fine-tuning adapts the convolutions and the BatchNorm scales and shifts, and keeps
    the statistics, as the Keras transfer-learning guide recommends. Its state dict is `model`'s.
    """

    norm_stats_frozen = True  # BatchNorms never use batch statistics: nothing to synchronise under DDP

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.module = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def train(self, mode: bool = True) -> FrozenNormStats:
        super().train(mode)
        for layer in self.module.modules():
            if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                layer.eval()
        return self
