"""Optimizer, learning-rate schedule and training loss of a phase, built from its `TrainConfig`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight
from torch import nn

from cxr.config import CLASS_WEIGHTS, OPTIMIZERS, SCHEDULES, TrainConfig
from cxr.errors import CxrError
from cxr.training.ddp import train_loss, unwrap
from cxr.training.losses import MaskedBCELoss, positive_weights

SGD_MOMENTUM = 0.9


def param_groups(module: nn.Module, lr: float, backbone_lr_ratio: float) -> list[dict[str, Any]]:
    """Trainable parameters as optimizer groups: the head at `lr`, the backbone at `lr * ratio`.

    A module without a `.backbone` (e.g. a head trained on cached features) is one group at `lr`.
    The head group comes first, so `param_groups[0]["lr"]` is the head's learning rate.
    """
    module = unwrap(module)  # DistributedDataParallel, torch.compile and other wrappers
    backbone = getattr(module, "backbone", None)
    backbone_ids = {id(p) for p in backbone.parameters()} if isinstance(backbone, nn.Module) else set()
    head = [p for p in module.parameters() if p.requires_grad and id(p) not in backbone_ids]
    body = [p for p in backbone.parameters() if p.requires_grad] if backbone_ids else []
    groups = [{"params": head, "lr": lr, "name": "head"}] if head else []
    if body:
        groups.append({"params": body, "lr": lr * backbone_lr_ratio, "name": "backbone"})
    if not groups:
        raise CxrError("the model has no trainable parameters; check model.freeze")
    return groups


def build_optimizer(module: nn.Module, tc: TrainConfig) -> torch.optim.Optimizer:
    """Adam (L2 weight decay), AdamW (decoupled) or SGD (momentum 0.9) over `param_groups`."""
    groups = param_groups(module, tc.lr, tc.backbone_lr_ratio)
    name = tc.optimizer.lower()
    # One fused kernel per step instead of a chain of foreach ops: 1.8x faster head training on 2 CPU
    # cores (bench/README.md); it needs every parameter to be a float tensor on the CPU or a GPU.
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for g in groups for p in g["params"])
    if name == "adam":
        return torch.optim.Adam(groups, lr=tc.lr, weight_decay=tc.weight_decay, fused=fused)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=tc.lr, weight_decay=tc.weight_decay, fused=fused)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=tc.lr, momentum=SGD_MOMENTUM, weight_decay=tc.weight_decay)
    raise CxrError(f"unknown optimizer {tc.optimizer!r}; allowed: {', '.join(OPTIMIZERS)}")


def lr_factor(step: int, tc: TrainConfig, steps_per_epoch: int) -> float:
    """Multiplier of the base lr at optimizer step `step` (0-based) for the configured schedule."""
    if tc.schedule == "none":
        return 1.0
    if tc.schedule == "step":
        return tc.step_gamma ** ((step // steps_per_epoch) // max(1, tc.step_epochs))
    if tc.schedule == "cosine":
        warmup = round(tc.warmup_epochs * steps_per_epoch)
        if step < warmup:
            return (step + 1) / warmup
        total = max(1, tc.epochs * steps_per_epoch - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / total)))
    raise CxrError(f"unknown schedule {tc.schedule!r}; allowed: {', '.join(SCHEDULES)}")


def build_scheduler(
    optimizer: torch.optim.Optimizer, tc: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR | None:
    """A per-optimizer-step schedule (None for 'none'); step and cosine are both expressed per step."""
    lr_factor(0, tc, steps_per_epoch)  # validates the schedule name
    if tc.schedule == "none":
        return None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, tc, steps_per_epoch))


def class_weights(mode: str, labels: Sequence[int] | None, num_classes: int) -> torch.Tensor | None:
    """None for 'none'; sklearn's compute_class_weight('balanced') for 'balanced'.

    A class absent from `labels` gets weight 1 (sklearn refuses absent classes).
    """
    if mode == "none":
        return None
    if mode != "balanced":
        raise CxrError(f"unknown train.class_weights {mode!r}; allowed: {', '.join(CLASS_WEIGHTS)}")
    if labels is None or len(labels) == 0:
        raise CxrError("class_weights='balanced' needs the training labels")
    y = np.asarray(labels, dtype=np.int64)
    present = np.unique(y)
    weights = np.ones(num_classes, dtype=np.float64)
    weights[present] = compute_class_weight("balanced", classes=present, y=y)
    return torch.tensor(weights, dtype=torch.float32)


def training_criterion(
    tc: TrainConfig, num_classes: int, device: torch.device, train_labels: Any = None
) -> nn.Module:
    """The training loss of a phase: cross-entropy with its class weights and label smoothing, or for
    multi-label targets ((N, C) floats, NaN = unlabelled) masked BCE, `balanced` giving each finding's
    positives the weight negatives/positives (`cxr.training.losses`).

    In one process nn.CrossEntropyLoss; under DDP normalised over the whole global batch, so N
    processes compute what one would (`cxr.training.ddp.GlobalBatchLoss`).
    """
    labels = None if train_labels is None else np.asarray(train_labels)
    if labels is not None and labels.ndim == 2:
        balanced = tc.class_weights == "balanced"
        pos_weight = positive_weights(torch.as_tensor(labels, dtype=torch.float32)).to(device) if balanced else None
        return MaskedBCELoss(pos_weight, tc.label_smoothing)
    weight = class_weights(tc.class_weights, labels, num_classes)
    return train_loss(weight.to(device) if weight is not None else None, tc.label_smoothing)
