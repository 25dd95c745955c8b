"""The engines' tests share a tiny classifier: the operations of the real backbones, exported in a second."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from cxr.engine.parity import synthetic_inputs
from cxr.models.build import Classifier, apply_freeze
from cxr.models.head import Head
from cxr.transforms import Preprocessing

SIZE = 32


class TinyBackbone(torch.nn.Module):
    """Conv-BN-ReLU6 twice, with the backbone contract (forward_features, num_features, stages)."""

    num_features = 16

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU6(),
            torch.nn.Conv2d(8, self.num_features, 3, stride=2, padding=1), torch.nn.BatchNorm2d(self.num_features),
            torch.nn.ReLU6())
        self.stages = [self.body]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@pytest.fixture()
def tiny_classifier() -> Callable[..., Classifier]:
    """Factory: a 3-class tiny classifier at 32 px, seeded, BatchNorm statistics of synthetic X-rays."""

    def make(seed: int = 0) -> Classifier:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            backbone = TinyBackbone()
            model = Classifier(backbone, Head(backbone.num_features, (8,), 3), Preprocessing("half", SIZE))
            model.train()
            with torch.no_grad():  # so that the outputs are not uniform
                model(synthetic_inputs(model.preprocessing, 8))
        return apply_freeze(model, "base").eval()

    return make
