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
from cxr.data.dataset import SplitDataset, label_targets, make_loader
from cxr.data.image_cache import DecodedImages, build_image_cache
from cxr.data.masks import region_options
from cxr.device_augment import DEVICE_FILL_MODES, DeviceAugment
from cxr.models.build import build_model
from cxr.rundir import SPLITS
from cxr.runtime import Compute, main_process_first, scoring_precision
from cxr.study.data import PreparedData
from cxr.training.features import feature_loaders
from cxr.transforms import Preprocessing, SeedAugment

log = logging.getLogger(__name__)


def build_classifier(cfg: RunConfig, num_classes: int, *, load_weights: bool = True) -> nn.Module:
    """The classifier of `cfg`, its preprocessing sized to `data.image_size` (the record fixes the mode)
    and standardised by `data.intensity`."""
    model = build_model(cfg.model, num_classes, load_weights=load_weights)
    if cfg.data.intensity != "none":  # stored in the checkpoint's preprocessing record with the rest
        model.preprocessing = dataclasses.replace(model.preprocessing, intensity=cfg.data.intensity)
    if model.preprocessing.size != cfg.data.image_size and cfg.model.weights != "random":
        log.info("weights %s were trained at %d px; data.image_size is %d", cfg.model.weights,
                 model.preprocessing.size, cfg.data.image_size)
    if model.preprocessing.size != cfg.data.image_size:
        model.preprocessing = dataclasses.replace(model.preprocessing, size=cfg.data.image_size)
    return model


def with_device_augment(cfg: RunConfig, pre: Preprocessing, compute: Compute) -> Compute:
    """`compute` with a DeviceAugment input transform when `data.decoded_cache` is on for its device
    (auto: CUDA only), so image batches are augmented where the model runs; else `compute` as is."""
    mode = cfg.data.decoded_cache
    if mode == "off" or (mode == "auto" and compute.device.type != "cuda"):
        return compute
    if cfg.data.lung_crop:  # the cache holds whole images; crops are made per image
        log.info("data.lung_crop crops each image on the CPU: decoded cache off")
        return compute
    if pre.intensity != "none" or cfg.augment.scanner not in ("none", ""):  # per-image CPU work (robust recipe)
        log.info("intensity standardisation / scanner augmentations run on the CPU: decoded cache off")
        return compute
    if cfg.augment.fill_mode not in DEVICE_FILL_MODES:
        if mode == "on":
            DeviceAugment(pre, cfg.augment.fill_mode)  # raises, naming the fill modes the device supports
        log.info("augment.fill_mode %r runs on the CPU: decoded cache off", cfg.augment.fill_mode)
        return compute
    log.info("decoded image cache and augmentation on %s", compute.device)
    return dataclasses.replace(compute, input_transform=DeviceAugment(pre, cfg.augment.fill_mode,
                                                                      compute.channels_last))


def decoded_cache_of(compute: Compute, cache_dir: Path) -> Path | None:
    """Where decoded images live when `compute` augments on the device (see `with_device_augment`)."""
    return cache_dir if isinstance(compute.input_transform, DeviceAugment) else None


def image_loaders(
    prepared: PreparedData, pre: Preprocessing, cfg: RunConfig, splits: Sequence[str] = SPLITS, *,
    decoded_cache: Path | None = None, progress: bool = True,
) -> dict[str, DataLoader]:
    """Image loaders per split: train shuffled and augmented, val/test in split.csv order, clean.

    With `decoded_cache` the items are uint8 images from that cache plus the augmentation draws,
    for a `DeviceAugment` input transform; else decoded, augmented and normalised in the workers.
    """
    augment = SeedAugment(cfg.augment) if cfg.augment.enabled else None
    loaders = {}
    for name in splits:
        rows = prepared.split(name)
        aug = augment if name == "train" else None
        if decoded_cache is not None:
            images = build_image_cache(prepared.root, rows, pre.size, decoded_cache, progress=progress)
            targets = label_targets(rows, prepared.classes, prepared.multilabel)
            dataset = DecodedImages(images, targets, aug, cfg.train.seed)
        else:
            dataset = SplitDataset(prepared.root, rows, prepared.classes, pre, aug, seed=cfg.train.seed,
                                   multilabel=prepared.multilabel, regions=region_options(cfg))
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
        loaders = image_loaders(prepared, model.preprocessing, cfg, decoded_cache=decoded_cache_of(compute, cache_dir),
                                progress=compute.progress)
        return model, loaders, False
    model.to(compute.device)
    with main_process_first():  # under torchrun rank 0 extracts, then the others read its entry
        loaders = feature_loaders(model, prepared.root, prepared.rows, prepared.classes, cfg, cache_dir, compute.device,
                                  scoring_precision(cfg.train.precision, compute.device), progress=compute.progress)
    log.info("using the feature cache (%s, %d views per training image): training the head only",
             cache_dir, cfg.train.feature_views)
    return model.head, loaders, True


def to_device(module: nn.Module, compute: Compute) -> nn.Module:
    """`module` on the compute device, NHWC when asked (before DDP, so its gradient buckets match)."""
    module.to(compute.device)
    if compute.channels_last:
        module.to(memory_format=torch.channels_last)
    return module
