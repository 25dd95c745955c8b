"""An engine where code expects a module: evaluation loops written for `model(x) -> logits`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from cxr.engine.base import INT8_ENGINE, Engine, engine_precision
from cxr.engine.select import EngineSpec, select_engine
from cxr.runtime import Compute


class EngineModule(nn.Module):
    """forward(x) = the engine's logits as a float32 CPU tensor (no parameters of its own)."""

    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self.engine = engine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.engine(x)


def evaluation_module(
    model: nn.Module, name: str, compute: Compute, *, batch_size: int, images: int | None = None,
    sample: torch.Tensor | None = None, checkpoint: str | Path | None = None, data_root: str | None = None,
    classes: list[str] | None = None, requested_precision: str = "auto",
) -> tuple[nn.Module, Compute, str]:
    """(module to score with, its Compute, the engine's description) for engine `name` on `model`.

    torch (or `auto` choosing torch) gives `model` and `compute` back unchanged; another engine gives
    an `EngineModule` and `compute` without channels_last (engines take NCHW). 'openvino-int8' needs
    the run's `checkpoint`, `data_root` and `classes` (`cxr.engine.int8`). Exported engines compute
    in `engine_precision(requested_precision)`.
    """
    spec = EngineSpec("logits", precision=compute.precision, export_precision=engine_precision(requested_precision),
                      batch_size=batch_size, device=str(compute.device), channels_last=compute.channels_last)
    if name == INT8_ENGINE:
        from cxr.engine.int8 import int8_engine_for_run

        engine = int8_engine_for_run(model, spec, checkpoint or "", data_root, list(classes or []),
                                     model.preprocessing)
    else:
        engine = select_engine(name, model, spec, sample=sample, images=images)
    if engine.name == "torch":
        return model, compute, engine.describe()
    return EngineModule(engine), dataclasses.replace(compute, channels_last=False), engine.describe()
