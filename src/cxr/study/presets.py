"""Named settings of a study: the demo's, the fine-tuning phase's, and where caches live."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from cxr.config import RunConfig

DEMO_DATA_SEED = 0  # seed of the synthetic demo images
DEMO_IMAGES_PER_CLASS = 60
DEMO_IMAGE_SIZE = 160  # side of the generated PNGs (the network sees data.image_size)


def demo_config() -> RunConfig:
    """The settings of `cxr demo`: the seed recipe's shape, sized for a few minutes on 2 CPU cores.

    EfficientNet-Lite0 with its ImageNet weights (frozen base, as in the seed) at 128 px; the feature
    cache makes the head's epochs nearly free.
    """
    cfg = RunConfig(name="demo")
    cfg.data.image_size = 128
    cfg.model.backbone = "efficientnet_lite0"
    cfg.model.weights = "lite0-imagenet"
    cfg.train.epochs = 8
    cfg.train.lr = 1e-3
    cfg.eval.aug_samples = 12
    cfg.eval.grid_per_class = 4
    return cfg


def finetune_config(cfg: RunConfig) -> RunConfig:
    """The settings of the fine-tuning phase: finetune_freeze, finetune_epochs and finetune_lr take the
    place of model.freeze, train.epochs and train.lr; everything else (and `cfg` itself) is unchanged."""
    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, freeze=cfg.train.finetune_freeze),
        train=dataclasses.replace(cfg.train, epochs=cfg.train.finetune_epochs, lr=cfg.train.finetune_lr),
    )


def default_cache_dir() -> Path:
    """Where feature caches live: $CXR_CACHE_DIR, else $XDG_CACHE_HOME/cxr/features (~/.cache/...)."""
    explicit = os.environ.get("CXR_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cxr" / "features"
