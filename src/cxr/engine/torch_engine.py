"""PyTorch as an engine: eager (the reference every other engine is checked against) or compiled."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cxr.engine.base import Engine
from cxr.runtime import autocast, batch_to


class PooledBackbone:
    """x -> `model.forward_features(x).mean((2, 3))`, eager or compiled.

    Compiled: `torch.compile` with weight freezing (the backbone is frozen, so its weights can be
    folded into the graph), static shapes, and batches padded to `batch_size` so a short last batch
    does not trigger a second compilation.
    """

    def __init__(self, model: nn.Module, compiled: bool = False, batch_size: int = 0) -> None:
        self.model = model
        self.compiled = compiled
        self.batch_size = batch_size
        self._fn = torch.compile(self._eager, dynamic=False, options={"freezing": True}) if compiled else self._eager

    def _eager(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x).float().mean((2, 3))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if self.compiled and n < self.batch_size:
            x = torch.cat([x, x.new_zeros(self.batch_size - n, *x.shape[1:])])
        return self._fn(x)[:n]


class TorchEngine(Engine):
    """`model` (features: through `PooledBackbone`; logits: its forward) in eval mode under
    `torch.inference_mode`, with the precision policy's autocast and NHWC inputs when asked."""

    name = "torch"

    def __init__(self, model: nn.Module, output: str, *, device: torch.device | None = None,
                 precision: str = "fp32", channels_last: bool = False, compiled: bool = False,
                 batch_size: int = 0) -> None:
        super().__init__(output, precision, torch.get_num_threads())
        self.model = model.eval()
        self.device = device or torch.device("cpu")
        self.channels_last = channels_last
        if channels_last:
            model.to(memory_format=torch.channels_last)  # NHWC weights too, as the training path has them
        self.forward = PooledBackbone(model, compiled, batch_size) if output == "features" else model

    def tensor(self, x: torch.Tensor) -> torch.Tensor:
        """The engine's output as a float32 tensor on its device (no copy to the host)."""
        with torch.inference_mode(), autocast(self.device, self.precision):
            return self.forward(batch_to(x, self.device, self.channels_last)).float()

    def run(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) if isinstance(x, np.ndarray) else x
        return self.tensor(tensor).cpu().numpy()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.tensor(x)

    def describe(self) -> str:
        layout = ", channels_last" if self.channels_last else ""
        compiled = ", compiled" if getattr(self.forward, "compiled", False) else ""
        return f"torch ({self.device}, {self.precision}{layout}{compiled}, {torch.get_num_threads()} threads)"
