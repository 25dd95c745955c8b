"""Image/mask pairs for training and evaluating a lung model: folders or a manifest, splits by site.

PAIRS is either an image folder with `--masks FOLDER` (matched by relative path, else by file stem)
or a CSV manifest with columns `path,mask` (relative to the CSV's folder). A pair's site is its
file name up to the first '_' (the lungseg data: `MCUCXR` Montgomery, `CHNCXR` Shenzhen), so a
whole hospital can be held out (`--holdout-site PREFIX`); otherwise a random share is held out.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr.errors import CxrError
from cxr.io import IMAGE_EXTENSIONS

MANIFEST_COLUMNS = ("path", "mask")


@dataclass(frozen=True)
class Pair:
    """One X-ray and its lung mask (both files)."""

    image: Path
    mask: Path

    @property
    def name(self) -> str:
        return self.image.stem

    @property
    def site(self) -> str:
        return self.image.stem.split("_", 1)[0]


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def pairs_from_folders(images: Path, masks: Path) -> list[Pair]:
    """Pairs of an image folder and a mask folder (same relative path, or with `images/` read as
    `masks/` as in Kaggle's v4 layout, else a unique stem); files in a `masks/` folder are not images."""
    for what, folder in (("image", images), ("mask", masks)):
        if not folder.is_dir():
            raise CxrError(f"{what} folder not found: {folder}")
    mask_files = _images(masks)
    same_root = images.resolve() == masks.resolve()
    if same_root:  # one root with <Class>/images/ and <Class>/masks/
        mask_files = [p for p in mask_files if "masks" in p.relative_to(masks).parts]
    mask_set = set(mask_files)
    by_rel = {p.relative_to(masks).with_suffix("").as_posix(): p for p in mask_files}
    stems: dict[str, list[Path]] = {}
    for p in mask_files:
        stems.setdefault(p.stem, []).append(p)
    pairs = []
    for image in _images(images):
        rel_parts = image.relative_to(images).with_suffix("").parts
        inside_masks = not same_root and masks.resolve() in image.resolve().parents
        if image in mask_set or "masks" in rel_parts or inside_masks:  # a mask, not an X-ray (Kaggle v4: <Class>/masks/)
            continue
        keys = ["/".join(rel_parts), "/".join("masks" if part == "images" else part for part in rel_parts)]
        mask = next((by_rel[k] for k in keys if k in by_rel), None)
        if mask is None and len(stems.get(image.stem, [])) == 1:
            mask = stems[image.stem][0]
        if mask is not None:
            pairs.append(Pair(image, mask))
    if not pairs:
        raise CxrError(f"no image in {images} has a mask in {masks} (matched by relative path or file name)")
    return pairs


def pairs_from_manifest(csv_path: Path) -> list[Pair]:
    """Pairs of a CSV manifest `path,mask` (paths relative to the CSV's folder, or absolute)."""
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in MANIFEST_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise CxrError(f"manifest {csv_path} lacks column(s) {', '.join(missing)}; expected path,mask")
        rows = list(reader)
    pairs = []
    for line, row in enumerate(rows, start=2):
        image, mask = (csv_path.parent / row[c].strip() for c in MANIFEST_COLUMNS)
        for what, file in (("image", image), ("mask", mask)):
            if not file.is_file():
                raise CxrError(f"manifest {csv_path} line {line}: {what} file not found: {file}")
        pairs.append(Pair(image, mask))
    if not pairs:
        raise CxrError(f"manifest {csv_path} has a header but no rows")
    return pairs


def find_pairs(data: Path, masks: Path | None = None) -> list[Pair]:
    """Pairs from `data` (an image folder with `masks`, or a `path,mask` CSV manifest)."""
    data = Path(data)
    if data.is_file():
        if data.suffix.lower() != ".csv":
            raise CxrError(f"--data {data}: expected an image folder (with --masks) or a CSV manifest path,mask")
        return pairs_from_manifest(data)
    if masks is None:
        sibling = data.parent / "masks"
        if not (data.is_dir() and sibling.is_dir() and sibling != data):
            raise CxrError(f"--data {data}: give the mask folder with --masks (or a CSV manifest path,mask)")
        masks = sibling
    return pairs_from_folders(data, Path(masks))


def split_pairs(pairs: Sequence[Pair], *, holdout_site: str | None = None, holdout: float = 0.2,
                seed: int = 0) -> tuple[list[Pair], list[Pair]]:
    """(train, held out): every pair whose name starts with `holdout_site`, or a random `holdout` share."""
    if holdout_site:
        test = [p for p in pairs if p.name.startswith(holdout_site)]
        train = [p for p in pairs if not p.name.startswith(holdout_site)]
        if not test or not train:
            sites = sorted({p.site for p in pairs})
            raise CxrError(f"--holdout-site {holdout_site!r} leaves {len(train)} training and {len(test)} held-out "
                           f"pairs; sites here: {', '.join(sites)}")
        return train, test
    if not 0 <= holdout < 1:
        raise CxrError(f"--holdout must be in [0, 1), got {holdout}")
    order = np.random.default_rng(seed).permutation(len(pairs))
    n_test = int(round(holdout * len(pairs))) if holdout > 0 else 0
    if holdout > 0 and len(pairs) > 1:
        n_test = min(max(n_test, 1), len(pairs) - 1)
    test = [pairs[i] for i in sorted(order[:n_test])]
    train = [pairs[i] for i in sorted(order[n_test:])]
    return train, test
