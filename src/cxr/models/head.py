"""The seed's classification head: GAP -> Linear(C, 2048) -> ReLU -> 512 -> ReLU -> 128 -> ReLU -> classes.

Hidden widths come from ``ModelConfig.head``; the input width is read from the backbone. Weights use
Glorot-uniform with zero biases, as Keras' Dense layers of the reference; `zero_last` starts the last
layer at zero (`model.head_init: zeros`, the multi-label recipe: a linear head then starts where a
logistic regression does).
"""

from __future__ import annotations

import torch
from torch import nn

from cxr.errors import CxrError


class Head(nn.Module):
    """Global average pooling, then an MLP with ReLU between layers; outputs logits (no softmax)."""

    def __init__(
        self, in_features: int, hidden: tuple[int, ...], num_classes: int, dropout: float = 0.0,
        zero_last: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise CxrError(f"a classifier needs at least 2 classes, got {num_classes}")
        if any(int(width) < 1 for width in hidden):
            raise CxrError(f"head widths must be positive integers, got {tuple(hidden)}")
        if not 0.0 <= dropout < 1.0:
            raise CxrError(f"head dropout must be in [0, 1), got {dropout}")
        self.pool = nn.AdaptiveAvgPool2d(1)
        layers: list[nn.Module] = []
        width_in = in_features
        for width in hidden:
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            layers += [nn.Linear(width_in, int(width)), nn.ReLU(inplace=True)]
            width_in = int(width)
        layers.append(nn.Linear(width_in, num_classes))
        self.mlp = nn.Sequential(*layers)
        self.in_features = in_features
        self.num_classes = num_classes
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_last:  # after the Glorot draws, so the random stream (and any hidden layer) is unchanged
            nn.init.zeros_(self.mlp[-1].weight)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """Logits from a feature map (N, C, h, w) or from already pooled features (N, C)."""
        if feats.ndim == 4:
            feats = self.pool(feats).flatten(1)
        return self.mlp(feats)
