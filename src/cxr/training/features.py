"""Frozen-backbone feature cache: run the backbone once per image and view, train the head on the results.

With `freeze=base` the seed re-runs a ResNet-50 over every augmented image in every epoch, which is
nearly all of its cost. Here the backbone's globally average-pooled features are computed once:

- train: K = `cfg.train.feature_views` augmented views per image. View v of image i is augmented
  exactly as the direct path augments image i in its v-th epoch (0-based, as `fit` calls
  `set_epoch`): `SplitDataset.set_epoch(v)`, RNG `np.random.default_rng([seed, v, i])`. So with
  K = epochs the head sees the same augmented images as on the direct path, in another epoch order.
- val/test: one clean (not augmented) view.

Each epoch shows one view per training image. The choice is a pure function of (seed, epoch, index)
for a given split: epochs are grouped in rounds of K, and in round r every image walks through its own
random permutation of the K views (drawn from `np.random.default_rng([seed, r])`), so every view of
every image is used exactly once per K epochs, in an order that differs between images. K = 1
therefore means one fixed augmentation for the whole run.

Features are stored as float16 `.npy` memory maps (float32 only where float16 would overflow or
flush them) under `cache_dir/<key>/` with a `manifest.json`, written to a temporary folder and
renamed into place. The key is a SHA-256 over the image files' bytes (streamed, in sorted path
order), the rows' split and order, the backbone name, weights spec and a digest of the backbone's
state dict, the preprocessing, augmentation and image size, K, the seed and the compute precision.
A second call with the same key computes nothing ("feature cache hit"); any change makes a new entry.
Old entries are never deleted automatically: remove the cache folder to reclaim the space.

The key and the reading of entries are in `cxr.training.features_store`, the extraction in
`cxr.training.extract`, which runs the backbone on the engine of `train.engine`: PyTorch by default
(the reference), in the precision the trained model scores images in (`runtime.scoring_precision`:
fp32 on a CPU unless bf16 is named), so the head trains on the features `cxr predict` computes. What
extracts is part of the key (`features_store.extractor_record`): engines agree with PyTorch only
within their parity bound, and training amplifies the difference (test accuracy 0.833 vs 0.8125 on
the demo), so an entry filled by one engine is never read by a run of another. Batches are
`(features float32 (N, C, 1, 1), labels int64)`: `model.head` (GAP -> MLP) runs on them
unchanged, so the trained head drops straight back into the full classifier.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cxr.config import RunConfig
from cxr.data.dataset import make_loader
from cxr.errors import CxrError
from cxr.rundir import SPLITS
from cxr.runtime import resolve_precision, to_channels_last
from cxr.training.extract import build_entry, extraction_engine
from cxr.training.features_store import cache_key, extractor_record, read_manifest

log = logging.getLogger(__name__)


def feature_loaders(
    model: nn.Module,
    root: Path,
    rows: Sequence[Any],
    classes: list[str],
    cfg: RunConfig,
    cache_dir: Path,
    device: torch.device,
    precision: str,
    progress: bool = True,
) -> dict[str, DataLoader]:
    """Loaders over cached backbone features for train/val/test, extracting them on a cache miss.

    `rows` are `SplitRow`s (path relative to `root`, label, split); `precision` is what PyTorch extracts
    in (studies pass `runtime.scoring_precision`). The train loader's dataset has `set_epoch(epoch)`,
    which picks the view of each image for that epoch.
    """
    precision = resolve_precision(precision, device)
    views = _effective_views(cfg)
    by_split = {s: [r for r in rows if r.split == s] for s in SPLITS}
    if not by_split["train"]:
        raise CxrError("the split has no training images; the feature cache needs at least one")
    model.to(device)
    to_channels_last(model, cfg.train.channels_last)
    forwards = sum(len(r) * (views if s == "train" else 1) for s, r in by_split.items())
    engine = extraction_engine(model, Path(root), by_split, classes, cfg, device, precision, forwards)
    extractor = extractor_record(engine.name, engine.precision, cfg, device)
    key = cache_key(model, Path(root), rows, classes, cfg, views, extractor)
    entry = Path(cache_dir) / key[:32]
    manifest = read_manifest(entry, key)
    if manifest is not None:
        log.info("feature cache hit: %s", entry)
    else:
        manifest = build_entry(model, Path(root), by_split, classes, cfg, views, device, precision, entry, key,
                               engine, progress)
    _log_summary(manifest, entry)
    return _make_loaders(entry, manifest, cfg, device)


class CachedFeatureDataset(Dataset):
    """Cached features of one split: item i is (float32 (C, 1, 1), int label).

    With several views (train), `set_epoch` chooses the view of each image as described in the
    module docstring; with one view every epoch returns the same features.
    """

    def __init__(self, features: np.ndarray, labels: np.ndarray, seed: int) -> None:
        if features.ndim != 3:
            raise CxrError(f"cached features must have shape (views, images, channels), got {features.shape}")
        self.features = features
        self.labels = labels
        self.seed = int(seed)
        self.num_views = int(features.shape[0])
        self.epoch = 0
        self.views = np.zeros(len(labels), dtype=np.int64)
        self._round = -1
        self._perms = np.zeros((len(labels), self.num_views), dtype=np.int64)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Pick each image's view for `epoch` (deterministic in seed, epoch and index)."""
        self.epoch = int(epoch)
        if self.num_views == 1:
            return
        rnd, pos = divmod(self.epoch, self.num_views)
        if self._round != rnd:  # one draw per round of K epochs
            self._round, self._perms = rnd, round_permutations(self.seed, rnd, self.num_views, len(self.labels))
        self.views = self._perms[:, pos]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        vec = np.array(self.features[self.views[index], index], dtype=np.float32)  # a writable copy
        label = self.labels[index]
        target = torch.from_numpy(np.array(label)) if np.ndim(label) else int(label)  # multi-label: a vector
        return torch.from_numpy(vec).view(-1, 1, 1), target


def view_schedule(seed: int, epoch: int, num_views: int, num_images: int) -> np.ndarray:
    """View index per image for `epoch`: each block of `num_views` epochs uses every view once."""
    if num_views == 1:
        return np.zeros(num_images, dtype=np.int64)
    rnd, pos = divmod(int(epoch), num_views)
    return round_permutations(seed, rnd, num_views, num_images)[:, pos]


def round_permutations(seed: int, rnd: int, num_views: int, num_images: int) -> np.ndarray:
    """(images, views): row i is the order in which image i walks through its views in round `rnd`."""
    keys = np.random.default_rng([seed, rnd]).random((num_images, num_views))
    return np.argsort(keys, axis=1, kind="stable").astype(np.int64)


def _make_loaders(entry: Path, manifest: dict[str, Any], cfg: RunConfig, device: torch.device) -> dict[str, DataLoader]:
    loaders = {}
    for split in SPLITS:
        feats = np.load(entry / f"{split}.npy", mmap_mode="r")
        labels = np.load(entry / f"{split}_labels.npy")
        dataset = CachedFeatureDataset(feats, labels, cfg.train.seed)
        loaders[split] = make_loader(
            dataset, batch_size=cfg.train.batch_size, shuffle=split == "train", num_workers=0, seed=cfg.train.seed
        )
    return loaders


def _log_summary(manifest: dict[str, Any], entry: Path) -> None:
    size = sum(f.stat().st_size for f in entry.iterdir() if f.is_file())
    counts = {s: manifest["splits"][s]["images"] for s in SPLITS}
    log.info(
        "feature cache: %d views, %d images (train %d, val %d, test %d), %.1f MB, key %s",
        manifest["views"], sum(counts.values()), counts["train"], counts["val"], counts["test"],
        size / 1e6, manifest["key"][:16],
    )


def _effective_views(cfg: RunConfig) -> int:
    views = cfg.train.feature_views
    if views < 1:
        raise CxrError(f"train.feature_views must be at least 1, got {views}")
    if not cfg.augment.enabled and views > 1:
        log.info("feature cache: augmentation is off, so %d views would be identical; using 1", views)
        return 1
    return views
