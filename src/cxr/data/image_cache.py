"""Decoded images, once: every image of a split resized to the network side and kept as a uint8 memory map.

PNG decoding and resizing cost more CPU per image than a GPU spends on the model, so a GPU host
training on images is input-bound (about 2,000 images/s with 8 workers on an H200 host against a
model that runs 15,000-22,000). With `data.decoded_cache` the images are decoded once per (files,
size) into `<cache>/images/<key>/images.npy` (N, S, S) uint8, published atomically like the feature
cache; `DecodedImages` then hands out uint8 images plus the augmentation draws of the epoch (the
same `SeedAugment.sample_params` from the same generator `np.random.default_rng([seed, epoch, i])` as
`SplitDataset`), and `cxr.device_augment.DeviceAugment` augments whole batches on the device.
The key is a SHA-256 over the image files' bytes, the rows' order and the side.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from cxr.device_augment import pack_params
from cxr.errors import CxrError
from cxr.hashing import update_with_file
from cxr.io import read_image
from cxr.progress import Progress
from cxr.rundir import SplitRow, write_json
from cxr.transforms import SeedAugment, resize_gray

log = logging.getLogger(__name__)

FORMAT = "cxr-image-cache/1"


def image_cache_key(root: Path, rows: Sequence[SplitRow], size: int) -> str:
    """SHA-256 naming an entry: the files' bytes in row order, their labels and the side."""
    digest = hashlib.sha256(json.dumps({"format": FORMAT, "size": int(size)}).encode())
    for row in rows:
        digest.update(f"{row.path}\0{row.label}\0".encode())
        try:
            update_with_file(digest, Path(root) / row.path)
        except OSError as exc:
            raise CxrError(f"cannot read image {Path(root) / row.path} for the image cache: {exc}") from None
    return digest.hexdigest()


def build_image_cache(
    root: Path, rows: Sequence[SplitRow], size: int, cache_dir: Path, *, progress: bool = True
) -> np.ndarray:
    """The (N, size, size) uint8 images of `rows`, from the cache or decoded into it now (memory-mapped)."""
    key = image_cache_key(root, rows, size)
    entry = Path(cache_dir) / "images" / key[:32]
    path = entry / "images.npy"
    if path.is_file():
        log.info("image cache hit: %s", entry)
        return np.load(path, mmap_mode="r")
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{entry.name}-", dir=entry.parent))
    try:
        store = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8,
                                          shape=(len(rows), size, size))
        with Progress(len(rows), "decoding images", enabled=progress) as bar:
            for i, row in enumerate(rows):
                store[i] = resize_gray(read_image(Path(root) / row.path), size)
                bar.update(1)
        store.flush()
        del store
        write_json(tmp / "manifest.json", {"format": FORMAT, "key": key, "images": len(rows), "size": size})
        try:
            os.rename(tmp, entry)
        except OSError:  # published by another process meanwhile
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("image cache: decoded %d images to %s", len(rows), entry)
    return np.load(path, mmap_mode="r")


class DecodedImages(Dataset):
    """Cached uint8 images of one split as `({"image": (S, S) uint8, "params": (7,)}, class index)`.

    `augment` draws each item's parameters from `np.random.default_rng([seed, epoch, index])`, the
    generator `SplitDataset` uses, so the device-augmented batches equal the CPU path's images.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, augment: SeedAugment | None, seed: int) -> None:
        self.images = images
        self.labels = np.asarray(labels)  # class indices, or multi-label target vectors
        self.augment = augment
        self.seed = int(seed)
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[dict[str, torch.Tensor], int]:
        image = torch.from_numpy(np.array(self.images[index]))  # a copy: the memory map stays read-only
        params = None
        if self.augment is not None and self.augment.cfg.enabled:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            params = self.augment.sample_params(rng, tuple(image.shape))
        label = self.labels[index]
        target = torch.from_numpy(np.array(label, dtype=np.float32)) if np.ndim(label) else int(label)
        return {"image": image, "params": pack_params(params)}, target
