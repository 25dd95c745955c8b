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

Batches are `(features float32 (N, C, 1, 1), labels int64)`: `model.head` (GAP -> MLP) runs on them
unchanged, so the trained head drops straight back into the full classifier.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from cxr.config import RunConfig, to_dict
from cxr.errors import CxrError
from cxr.runtime import (
    autocast,
    batch_to,
    describe,
    resolve_precision,
    resolve_workers,
    to_channels_last,
)

log = logging.getLogger(__name__)

FORMAT = "cxr-feature-cache/1"
SPLITS = ("train", "val", "test")
STORE_DTYPE = np.float16
_FP16_TOLERANCE = 1e-3  # largest float16 rounding error allowed, relative to the largest feature
_HASH_CHUNK = 1 << 20


# ----------------------------------------------------------------------------------------------
# Public hook
# ----------------------------------------------------------------------------------------------


def feature_loaders(
    model: nn.Module,
    root: Path,
    rows: Sequence[Any],
    classes: list[str],
    cfg: RunConfig,
    cache_dir: Path,
    device: torch.device,
    precision: str,
) -> dict[str, DataLoader]:
    """Loaders over cached backbone features for train/val/test, extracting them on a cache miss.

    `rows` are `SplitRow`s (path relative to `root`, label, split). The train loader's dataset has
    `set_epoch(epoch)`, which picks the view of each image for that epoch.
    """
    precision = resolve_precision(precision, device)
    views = _effective_views(cfg)
    by_split = {s: [r for r in rows if r.split == s] for s in SPLITS}
    if not by_split["train"]:
        raise CxrError("the split has no training images; the feature cache needs at least one")
    key = cache_key(model, Path(root), rows, classes, cfg, views, precision)
    entry = Path(cache_dir) / key[:32]
    manifest = _read_manifest(entry, key)
    if manifest is not None:
        log.info("feature cache hit: %s", entry)
    else:
        manifest = _build_entry(model, Path(root), by_split, classes, cfg, views, device, precision, entry, key)
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
        return torch.from_numpy(vec).view(-1, 1, 1), int(self.labels[index])


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


# ----------------------------------------------------------------------------------------------
# Cache key
# ----------------------------------------------------------------------------------------------


def cache_key(
    model: nn.Module,
    root: Path,
    rows: Sequence[Any],
    classes: list[str],
    cfg: RunConfig,
    views: int,
    precision: str,
) -> str:
    """SHA-256 hex digest naming a cache entry; any change to what the features depend on changes it.

    Covers the image bytes (`files_digest`), the row order, classes, backbone name, weights spec and
    state, preprocessing, augmentation, image size, views, seed and precision; not the head.
    """
    pre = getattr(model, "preprocessing", None)
    settings = {
        "format": FORMAT,
        "classes": list(classes),
        "backbone": cfg.model.backbone,
        "weights": cfg.model.weights,
        "backbone_state": state_digest(model),
        "preprocessing": pre.to_dict() if pre is not None else None,
        "augment": to_dict(cfg.augment),
        "image_size": cfg.data.image_size,
        "views": views,
        "seed": cfg.train.seed,
        "precision": precision,
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    digest.update(files_digest(root, rows).encode())
    for row in rows:  # features are stored in the rows' order, which the loaders' batches follow
        digest.update(f"{row.split}\0{row.path}\n".encode())
    return digest.hexdigest()


def files_digest(root: Path, rows: Sequence[Any]) -> str:
    """SHA-256 over each image's path, label, split and bytes, streamed in sorted path order."""
    digest = hashlib.sha256()
    for row in sorted(rows, key=lambda r: r.path):
        digest.update(f"{row.path}\0{row.label}\0{row.split}\0".encode())
        try:
            with open(Path(root) / row.path, "rb") as fh:
                while chunk := fh.read(_HASH_CHUNK):
                    digest.update(chunk)
        except OSError as exc:
            raise CxrError(f"cannot read image {Path(root) / row.path} for the feature cache key: {exc}") from None
        digest.update(b"\0")
    return digest.hexdigest()


def state_digest(model: nn.Module) -> str:
    """SHA-256 of every tensor the backbone uses (the state dict without the head's entries)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith("head."):
            continue
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        if t.numel():
            digest.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------
# Extraction
# ----------------------------------------------------------------------------------------------


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


def extract_features(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    precision: str,
    desc: str = "features",
    channels_last: bool = True,
    forward: PooledBackbone | None = None,
) -> np.ndarray:
    """GAP'd backbone features of every batch of `loader`, as an (N, C) float32 array.

    The model runs in eval mode under `torch.inference_mode`, channels_last, and autocast for bf16/fp16,
    through `forward` (default: eager). The tqdm bar shows images/s.
    """
    model.eval()
    forward = forward or PooledBackbone(model)
    chunks: list[np.ndarray] = []
    total = len(loader.dataset) if hasattr(loader.dataset, "__len__") else None
    bar = tqdm(total=total, unit="img", desc=desc, disable=None, leave=False, dynamic_ncols=True)
    with torch.inference_mode(), bar:
        for batch in loader:
            images = batch[0] if isinstance(batch, list | tuple) else batch
            with autocast(device, precision):
                feats = forward(batch_to(images, device, channels_last))
            chunks.append(feats.float().cpu().numpy())
            bar.update(len(chunks[-1]))
    if not chunks:
        raise CxrError("no images to extract features from")
    return np.concatenate(chunks)


def backbone_features(
    model: nn.Module, images: torch.Tensor, device: torch.device, precision: str, channels_last: bool = True
) -> torch.Tensor:
    """`model.forward_features(images).mean((2, 3))` as float32 (N, C), with the precision policy applied."""
    x = batch_to(images, device, channels_last)
    with autocast(device, precision):
        fmap = model.forward_features(x)
    return fmap.float().mean((2, 3))


def compare_precision(
    model: nn.Module,
    images: torch.Tensor,
    precision: str = "bf16",
    device: torch.device | None = None,
) -> dict[str, float]:
    """Numerics check: features and predictions under `precision` against fp32 on the same images.

    Returns the mean and minimum cosine similarity of the feature vectors, the largest error relative
    to the largest fp32 feature, and the fraction of images whose predicted class (`model.head` on
    the pooled features) agrees.
    """
    device = device or torch.device("cpu")
    model.eval()
    with torch.inference_mode():
        ref = backbone_features(model, images, device, "fp32")
        low = backbone_features(model, images, device, precision)
        cos = nn.functional.cosine_similarity(ref, low, dim=1)
        scale = ref.abs().max().clamp_min(torch.finfo(torch.float32).tiny)
        pred_ref = model.head(ref[:, :, None, None]).argmax(1)
        pred_low = model.head(low[:, :, None, None]).argmax(1)
    return {
        "precision": precision,
        "images": int(images.shape[0]),
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
        "max_rel_error": float((ref - low).abs().max() / scale),
        "prediction_agreement": float((pred_ref == pred_low).float().mean()),
    }


@dataclass
class _Extraction:
    """Everything one cache build needs, shared by its splits."""

    model: nn.Module
    root: Path
    classes: list[str]
    cfg: RunConfig
    device: torch.device
    precision: str
    forward: PooledBackbone


def _build_entry(
    model: nn.Module,
    root: Path,
    by_split: dict[str, list[Any]],
    classes: list[str],
    cfg: RunConfig,
    views: int,
    device: torch.device,
    precision: str,
    entry: Path,
    key: str,
) -> dict[str, Any]:
    """Extract every split into a temporary folder, then rename it to `entry` (atomic publish)."""
    model.to(device)
    to_channels_last(model, cfg.train.channels_last)
    job = _Extraction(model, root, classes, cfg, device, precision,
                      PooledBackbone(model, compiled=cfg.train.compile, batch_size=cfg.train.batch_size))
    log.info("feature cache: extracting %s on %s (%d views per training image%s)",
             cfg.model.backbone, describe(device, precision), views, ", compiled" if cfg.train.compile else "")
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{entry.name}-", dir=entry.parent))
    started = time.perf_counter()
    try:
        splits: dict[str, Any] = {}
        images_done = 0
        for split in SPLITS:
            rows = by_split[split]
            n_views = views if split == "train" else 1
            labels = np.array([classes.index(r.label) for r in rows], dtype=np.int64)
            np.save(tmp / f"{split}_labels.npy", labels)
            channels = _extract_split(job, split, rows, n_views, tmp / f"{split}.npy")
            splits[split] = {"images": len(rows), "views": n_views, "channels": channels}
            images_done += len(rows) * n_views
        seconds = time.perf_counter() - started
        manifest = {
            "format": FORMAT,
            "key": key,
            "dtype": {s: np.load(tmp / f"{s}.npy", mmap_mode="r").dtype.name for s in SPLITS},
            "classes": list(classes),
            "seed": cfg.train.seed,
            "views": views,
            "precision": precision,
            "backbone": cfg.model.backbone,
            "weights": cfg.model.weights,
            "splits": splits,
            "extract_seconds": round(seconds, 3),
            "images_per_second": round(images_done / seconds, 2) if seconds > 0 else None,
        }
        _write_json(tmp / "manifest.json", manifest)
        try:
            os.rename(tmp, entry)
        except OSError:  # another process published the same key first, or a stale entry is in the way
            if _read_manifest(entry, key) is None:
                shutil.rmtree(entry, ignore_errors=True)
                os.rename(tmp, entry)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info(
        "feature cache: extracted %d forward passes in %.1f s (%.1f images/s)",
        images_done, seconds, images_done / max(seconds, 1e-9),
    )
    return manifest


def _extract_split(job: _Extraction, split: str, rows: list[Any], n_views: int, path: Path) -> int:
    """Write `path` = (views, images, channels) float16 features of one split; returns the channel count.

    View v of the training split uses the augmentation draws of the direct path's (0-based) epoch v.
    """
    from cxr.data.dataset import SplitDataset, make_loader
    from cxr.transforms import SeedAugment

    if not rows:
        np.save(path, np.zeros((n_views, 0, 0), dtype=STORE_DTYPE))
        return 0
    cfg = job.cfg
    augment = SeedAugment(cfg.augment) if split == "train" and cfg.augment.enabled else None
    dataset = SplitDataset(job.root, list(rows), job.classes, job.model.preprocessing, augment, cfg.train.seed)
    loader = make_loader(dataset, batch_size=cfg.train.batch_size, shuffle=False,
                         num_workers=resolve_workers(cfg.data.num_workers), seed=cfg.train.seed)
    store: np.ndarray | None = None
    for view in range(n_views):
        dataset.set_epoch(view)
        desc = f"features {split}" + (f" view {view + 1}/{n_views}" if n_views > 1 else "")
        feats = extract_features(job.model, loader, job.device, job.precision, desc=desc,
                                 channels_last=cfg.train.channels_last, forward=job.forward)
        if store is None:  # the first view tells the channel count
            store = np.lib.format.open_memmap(path, mode="w+", dtype=STORE_DTYPE, shape=(n_views, *feats.shape))
        if store.dtype != np.float32 and not fits_float16(feats):
            store = _widen(store, path)
        store[view] = feats
    store.flush()
    return int(store.shape[2])


def fits_float16(feats: np.ndarray) -> bool:
    """True when float16 keeps every value within 0.1% of the largest one (no overflow, no underflow).

    Trained backbones give pooled features of order 0.01-100, which float16 holds to about 3 decimal
    digits. Random-init backbones can give values near 1e5 (overflow) or 1e-8 (flushed to zero).
    """
    if not feats.size:
        return True
    peak = float(np.abs(feats).max())
    with np.errstate(over="ignore"):
        error = float(np.abs(feats.astype(np.float16).astype(np.float32) - feats).max())
    return np.isfinite(error) and error <= _FP16_TOLERANCE * peak


def _widen(store: np.ndarray, path: Path) -> np.ndarray:
    """Rewrite a float16 store as float32 (keeping what it holds), for features float16 cannot represent."""
    log.warning("feature cache: these features do not fit float16 (too large or too small); storing float32")
    wide = np.array(store, dtype=np.float32)
    del store
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=wide.shape)
    out[:] = wide
    return out


# ----------------------------------------------------------------------------------------------
# Reading the cache
# ----------------------------------------------------------------------------------------------


def _read_manifest(entry: Path, key: str) -> dict[str, Any] | None:
    """The entry's manifest when it is complete and belongs to `key`, else None."""
    path = entry / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("format") != FORMAT or manifest.get("key") != key:
        return None
    if not all((entry / f"{s}.npy").is_file() and (entry / f"{s}_labels.npy").is_file() for s in SPLITS):
        return None
    return manifest


def _make_loaders(entry: Path, manifest: dict[str, Any], cfg: RunConfig, device: torch.device) -> dict[str, DataLoader]:
    from cxr.data.dataset import make_loader

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


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with open(path, "w") as fh:
        json.dump(data, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
