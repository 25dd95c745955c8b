"""Checkpoint files: one dict, saved atomically, loaded without unpickling arbitrary objects.

Keys: format, model (state dict), optimizer (state dict or None), epoch, config (resolved run config
as a plain dict), classes, preprocessing, metrics, history (list of per-epoch dicts), extra.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxr.config import RunConfig, from_dict, to_dict
from cxr.errors import CxrError
from cxr.models.build import build_model
from cxr.rundir import atomic_write
from cxr.transforms import Preprocessing

FORMAT = "cxr-checkpoint/1"


def save_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    config: RunConfig,
    classes: list[str],
    preprocessing: Preprocessing,
    epoch: int,
    optimizer: torch.optim.Optimizer | None = None,
    metrics: dict[str, Any] | None = None,
    history: list[dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the checkpoint atomically (`cxr.rundir.atomic_write`: temp file, fsync, rename)."""
    module = model.module if hasattr(model, "module") else model
    state = {
        "format": FORMAT,
        "model": module.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "epoch": int(epoch),
        "config": to_dict(config),
        "classes": list(classes),
        "preprocessing": preprocessing.to_dict(),
        "metrics": metrics or {},
        "history": history or [],
        "extra": extra or {},
    }
    return atomic_write(path, lambda fh: torch.save(state, fh))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict safely (`weights_only=True`); user errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise CxrError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any decoding failure is a bad file for the user
        raise CxrError(f"{path} is not a readable cxr checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CxrError(f"{path} is not a cxr checkpoint (expected format {FORMAT!r})")
    return ckpt


def config_of(ckpt: dict[str, Any]) -> RunConfig:
    """The run config stored in a checkpoint."""
    return from_dict(ckpt["config"], check_files=False)  # weights files need not exist where it is read


def model_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """Rebuild the classifier of a checkpoint and load its weights (no pretrained download)."""

    cfg = config_of(ckpt)
    model = build_model(cfg.model, num_classes=len(ckpt["classes"]), load_weights=False)
    model.preprocessing = Preprocessing.from_dict(ckpt["preprocessing"])
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model
