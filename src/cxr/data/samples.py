"""Augmented training images written to disk, like the seed's `aug_images/` folder.

The seed let Keras save augmented batches (`save_to_dir`, prefix `aug`) so a reader can see what
the network was trained on. Here a seeded choice of training samples is read, resized, augmented
with the run's `SeedAugment` and saved as `aug_<index>_<random>.png` (index = position in
`samples`, random = a 7-digit draw, as in Keras' file names). Each PNG carries its class and source
image as text chunks (`LABEL_KEY`, `SOURCE_KEY`), so the report can name the class under it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from cxr.config import AugmentConfig
from cxr.data.discover import Sample
from cxr.errors import CxrError
from cxr.io import read_image
from cxr.logs import RESULT
from cxr.transforms import SeedAugment, resize_gray

log = logging.getLogger(__name__)

NAME_RANDOM_MAX = 10**7  # Keras names saved images aug_<index>_<np.random.randint(1e7)>
LABEL_KEY, SOURCE_KEY = "cxr:label", "cxr:source"  # PNG text chunks of every augmented sample


def pick_indices(count: int, n: int, rng: np.random.Generator) -> list[int]:
    """`n` sample positions out of `count`: distinct while possible, then repeating (new augmentations)."""
    picked: list[int] = []
    while len(picked) < n:
        take = min(count, n - len(picked))
        picked.extend(int(i) for i in rng.choice(count, size=take, replace=False))
    return picked


def write_augmented_samples(
    root: Path,
    samples: Sequence[Sample],
    n: int,
    out_dir: Path,
    cfg: AugmentConfig,
    size: int = 224,
    seed: int = 0,
) -> list[Path]:
    """Write `n` augmented PNGs (uint8) of samples chosen with `seed` to `out_dir`; returns their paths."""
    if n < 0:
        raise CxrError(f"number of augmented samples must be >= 0, got {n}")
    if n and not samples:
        raise CxrError("no training samples to draw augmented examples from")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    augment = SeedAugment(cfg)
    rng = np.random.default_rng(seed)
    paths: list[Path] = []
    for index in pick_indices(len(samples), n, rng):
        img = resize_gray(read_image(Path(root) / samples[index].path), size)
        pixels = augment(img, rng)
        path = _free_name(out_dir, index, rng)
        text = PngInfo()
        text.add_text(LABEL_KEY, str(samples[index].label))
        text.add_text(SOURCE_KEY, str(samples[index].path))
        Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8)).save(path, pnginfo=text)
        paths.append(path)
    log.info("wrote %d augmented samples to %s", len(paths), out_dir, extra=RESULT)  # commands print it
    return paths


def _free_name(out_dir: Path, index: int, rng: np.random.Generator) -> Path:
    """`aug_<index>_<random>.png` that does not exist yet in `out_dir`."""
    while True:
        path = out_dir / f"aug_{index}_{int(rng.integers(NAME_RANDOM_MAX))}.png"
        if not path.exists():
            return path
