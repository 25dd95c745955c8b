"""Losses of the two tasks beside cross-entropy: masked binary cross-entropy for multi-label targets.

Multi-label targets are float (N, C) with NaN where a finding is unlabelled (CheXpert's uncertain
-1 under the `ignore` policy): those entries add nothing to the loss or its gradient. The mean is over
the labelled entries of the whole global batch, so N DDP processes compute what one would (the same
scaling as `cxr.training.ddp.GlobalBatchLoss`). `EvalLoss` picks the task's plain loss from the
targets' shape, for validation and test.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from cxr.rank import world_size


class MaskedBCELoss(nn.Module):
    """Binary cross-entropy with logits over the labelled (non-NaN) target entries.

    pos_weight (C,): the weight of each finding's positives (e.g. negatives/positives); label_smoothing
    moves targets towards 0.5 by that amount.
    """

    def __init__(self, pos_weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("pos_weight", pos_weight)
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        labelled = ~torch.isnan(target)
        clean = torch.where(labelled, target, torch.zeros_like(target))
        if self.label_smoothing:
            clean = clean * (1 - self.label_smoothing) + 0.5 * self.label_smoothing
        per_entry = F.binary_cross_entropy_with_logits(logits, clean, pos_weight=self.pos_weight, reduction="none")
        per_entry = per_entry * labelled
        count = labelled.sum().to(per_entry.dtype)
        world = world_size()
        if world == 1:
            return per_entry.sum() / count.clamp_min(1.0)
        totals = torch.stack([per_entry.detach().sum(), count.detach()]).double()
        dist.all_reduce(totals)
        local = per_entry.sum() * (world / totals[1].clamp_min(1.0).to(per_entry.dtype))
        global_mean = (totals[0] / totals[1].clamp_min(1.0)).to(per_entry.dtype)
        return local + (global_mean - local).detach()


class EvalLoss(nn.Module):
    """The plain loss of either task: cross-entropy for class indices (N,), masked BCE for (N, C) targets."""

    def __init__(self) -> None:
        super().__init__()
        self.cross_entropy = nn.CrossEntropyLoss()
        self.bce = MaskedBCELoss()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.bce(logits, target) if target.dim() == 2 else self.cross_entropy(logits, target)


def positive_weights(targets: torch.Tensor) -> torch.Tensor:
    """Per finding negatives/positives of the labelled training targets (1 where a finding has none)."""
    labelled = ~torch.isnan(targets)
    positives = (torch.nan_to_num(targets) * labelled).sum(dim=0)
    negatives = labelled.sum(dim=0) - positives
    return torch.where(positives > 0, negatives / positives.clamp_min(1.0), torch.ones_like(positives))
