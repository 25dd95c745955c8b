"""The temperature of a checkpoint: fitted on the validation split after training, applied everywhere.

Temperature scaling divides the logits by one T > 0 (`cxr.metrics.calibration`): every argmax stays,
the probabilities become calibrated. A study stores T in best.pt (`extra["temperature"]`), and
evaluation, `Predictor` (predict, explain, serve) and the exports divide by it; a checkpoint without
one (older runs, last.pt) behaves as T = 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxr.checkpoint import load_checkpoint
from cxr.errors import CxrError
from cxr.rundir import atomic_write

TEMPERATURE_KEY = "temperature"  # checkpoint extra: the fitted T
SYNTHETIC_KEY = "synthetic_data"  # checkpoint extra: True when trained on cxr.data.synthetic images


def check_temperature(value: Any, where: str | Path = "temperature") -> float:
    """`value` as a float temperature; a CxrError naming `where` for anything that is not finite and > 0."""
    try:
        temperature = float(value)
    except (TypeError, ValueError):
        temperature = math.nan
    if not math.isfinite(temperature) or temperature <= 0:
        raise CxrError(f"{where}: the temperature must be a finite number > 0, got {value!r}")
    return temperature


def temperature_of(ckpt: Mapping[str, Any], source: str | Path = "checkpoint") -> float:
    """The T stored in a checkpoint dict (1.0 when it has none); a CxrError for a value that is not > 0."""
    return check_temperature((ckpt.get("extra") or {}).get(TEMPERATURE_KEY, 1.0), source)


def synthetic_of(ckpt: Mapping[str, Any]) -> bool:
    """Whether a checkpoint says it was trained on synthetic images."""
    return bool((ckpt.get("extra") or {}).get(SYNTHETIC_KEY, False))


class TemperatureScaled(nn.Module):
    """`module`'s logits divided by `temperature` (softmax of them: the calibrated probabilities)."""

    def __init__(self, module: nn.Module, temperature: float = 1.0) -> None:
        super().__init__()
        self.module = module
        self.temperature = check_temperature(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.module(x)
        return logits if self.temperature == 1.0 else logits / self.temperature


def update_extra(path: str | Path, values: Mapping[str, Any]) -> Path:
    """Set `values` in the `extra` of the checkpoint at `path`, rewriting it atomically."""
    state = load_checkpoint(path)
    state["extra"] = {**(state.get("extra") or {}), **dict(values)}
    return atomic_write(path, lambda fh: torch.save(state, fh))
