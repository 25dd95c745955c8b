"""What a phase trains on: the classifier built from the config, and image or cached-feature loaders."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from cxr.config import RunConfig
from cxr.data.dataset import SplitDataset, make_loader
from cxr.data.masks import region_options
from cxr.models.build import build_model
from cxr.rundir import SPLITS
from cxr.runtime import Compute, main_process_first
from cxr.study.data import PreparedData
from cxr.training.features import feature_loaders
from cxr.transforms import Preprocessing, SeedAugment

log = logging.getLogger(__name__)


def build_classifier(cfg: RunConfig, num_classes: int, *, load_weights: bool = True) -> nn.Module:
    """The classifier of `cfg`, its preprocessing sized to `data.image_size` (the record fixes the mode)."""
    model = build_model(cfg.model, num_classes, load_weights=load_weights)
    if model.preprocessing.size != cfg.data.image_size:
        model.preprocessing = dataclasses.replace(model.preprocessing, size=cfg.data.image_size)
    return model


def image_loaders(
    prepared: PreparedData, pre: Preprocessing, cfg: RunConfig, splits: Sequence[str] = SPLITS
) -> dict[str, DataLoader]:
    """Image loaders per split: train shuffled and augmented, val/test in split.csv order, clean."""
    augment = SeedAugment(cfg.augment) if cfg.augment.enabled else None
    loaders = {}
    for name in splits:
        dataset = SplitDataset(prepared.root, prepared.split(name), prepared.classes, pre,
                               augment if name == "train" else None, seed=cfg.train.seed, regions=region_options(cfg))
        loaders[name] = make_loader(dataset, batch_size=cfg.train.batch_size, shuffle=name == "train",
                                    num_workers=cfg.data.num_workers, seed=cfg.train.seed)
    return loaders


def wants_feature_cache(cfg: RunConfig) -> bool:
    """The head phase trains on cached features when the base is frozen and `train.feature_cache` is on."""
    if not cfg.train.feature_cache:
        return False
    if cfg.model.freeze != "base":
        log.info("the feature cache needs model.freeze=base (got %r): training on images", cfg.model.freeze)
        return False
    return True


def head_phase_inputs(
    model: nn.Module, prepared: PreparedData, cfg: RunConfig, compute: Compute, cache_dir: Path
) -> tuple[nn.Module, dict[str, DataLoader], bool]:
    """(module to train, loaders, cached?) of phase 1: the head on cached features, or the model on images."""
    if not wants_feature_cache(cfg):
        log.info("training on images (direct path)")
        return model, image_loaders(prepared, model.preprocessing, cfg), False
    model.to(compute.device)
    with main_process_first():  # under torchrun rank 0 extracts, then the others read its entry
        loaders = feature_loaders(model, prepared.root, prepared.rows, prepared.classes, cfg, cache_dir,
                                  compute.device, compute.precision, progress=compute.progress)
    log.info("using the feature cache (%s, %d views per training image): training the head only",
             cache_dir, cfg.train.feature_views)
    return model.head, loaders, True


def to_device(module: nn.Module, compute: Compute) -> nn.Module:
    """`module` on the compute device, NHWC when asked (before DDP, so its gradient buckets match)."""
    module.to(compute.device)
    if compute.channels_last:
        module.to(memory_format=torch.channels_last)
    return module
