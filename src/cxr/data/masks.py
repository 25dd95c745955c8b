"""Lung masks and boxes as pixels: loaded at the image's size, cropped to, blanked, and checked.

A region string (`cxr.data.regions`) becomes a boolean (H, W) mask at the size of its image:
- a mask file is binarised (> half its range) and scaled to the image when the aspect ratios agree
  (Kaggle v4 masks are 256x256 for 299x299 images); a mask of another aspect ratio belongs to another
  crop of the picture and is not used (`RegionProblem`);
- boxes are filled rectangles (clipped to the image).

`RegionOptions` says what a dataset does with the mask before resizing: crop to the mask's bounding
box plus a margin (`data.lung_crop`), then optionally blank the lungs or everything outside them
(the masked-region test, `cxr evaluate --occlude`). `attach_masks_dir` / `attach_boxes_csv` add
regions to a discovery from a separate folder or CSV; `check_regions` is the audit's mask check.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cxr.config import FILL_CHOICES, OCCLUDE_CHOICES, RunConfig
from cxr.data.discover import Discovery, Sample
from cxr.data.regions import Box, boxes_spec, check_box, is_box_spec, parse_boxes, region_kind
from cxr.errors import CxrError, ImageReadError
from cxr.io import IMAGE_EXTENSIONS, read_image

log = logging.getLogger(__name__)

ASPECT_TOLERANCE = 0.02  # relative difference of height/width ratios still called "the same"
BOXES_COLUMNS = ("path", "x0", "y0", "x1", "y1")
_SHOWN = 5  # paths named in a warning


class RegionProblem(ImageReadError):
    """A lung mask that cannot be used for its image (unreadable, or another aspect ratio)."""


@dataclass(frozen=True)
class RegionOptions:
    """What to do with an image's lung region before resizing (a field None/False: nothing)."""

    crop_margin: float | None = None  # crop to the region's bounding box plus this fraction of its size
    occlude: str | None = None  # blank the "lungs" or everything "outside" them
    fill: str = "median"  # what blanked pixels become: one of FILL_CHOICES

    def __post_init__(self) -> None:
        if self.occlude is not None and self.occlude not in OCCLUDE_CHOICES:
            raise CxrError(f"unknown occlusion {self.occlude!r}; allowed: {', '.join(OCCLUDE_CHOICES)}")
        if self.fill not in FILL_CHOICES:
            raise CxrError(f"unknown occlusion fill {self.fill!r}; allowed: {', '.join(FILL_CHOICES)}")
        if self.crop_margin is not None and not 0 <= self.crop_margin < 1:
            raise CxrError(f"lung crop margin must be in [0, 1), got {self.crop_margin}")

    @property
    def needs_region(self) -> bool:
        return self.crop_margin is not None or self.occlude is not None


def region_options(cfg: RunConfig, **changes: Any) -> RegionOptions:
    """The lung crop of a run's config (none unless `data.lung_crop`), with `changes` (occlude=...)."""
    margin = cfg.data.lung_crop_margin if cfg.data.lung_crop else None
    return dataclasses.replace(RegionOptions(crop_margin=margin, fill=cfg.eval.occlude_fill), **changes)


# ---------------------------------------------------------------------------------------- loading


def binarise(mask: np.ndarray) -> np.ndarray:
    """A mask image as booleans: above half of 255, or above 0 for a 0/1 mask."""
    return mask > (0 if int(mask.max(initial=0)) <= 1 else 127)


def same_aspect(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether two (height, width) shapes have the same aspect ratio within ASPECT_TOLERANCE."""
    ra, rb = a[0] / a[1], b[0] / b[1]
    return abs(ra - rb) <= ASPECT_TOLERANCE * rb


def scale_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A boolean mask resized to (height, width) (bilinear, then > 0.5), as is when it fits."""
    if mask.shape == tuple(shape):
        return mask
    image = Image.fromarray(mask.astype(np.uint8) * 255).resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    return np.asarray(image) > 127


def boxes_mask(boxes: Sequence[Box], shape: tuple[int, int]) -> np.ndarray:
    """Filled rectangles (clipped to the image) as a boolean mask of `shape`."""
    h, w = shape
    mask = np.zeros((h, w), dtype=bool)
    for box in boxes:
        x0, x1 = (int(round(min(max(v, 0), w))) for v in (box.x0, box.x1))
        y0, y1 = (int(round(min(max(v, 0), h))) for v in (box.y0, box.y1))
        mask[y0:y1, x0:x1] = True
    return mask


def load_region(root: str | Path, spec: str | None, shape: tuple[int, int]) -> np.ndarray | None:
    """The lung mask of region `spec` at an image's (height, width); None when `spec` is None.

    A mask file that cannot be read or has another aspect ratio is a `RegionProblem` (an
    ImageReadError, so a dataset skips and names the image like an unreadable one).
    """
    if not spec:
        return None
    if is_box_spec(spec):
        return boxes_mask(parse_boxes(spec), shape)
    path = Path(root) / spec
    try:
        mask = read_image(path)
    except ImageReadError as exc:
        raise RegionProblem(path, f"lung mask unreadable: {exc.reason}") from None
    if not same_aspect(mask.shape, shape):
        raise RegionProblem(path, f"lung mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                                  f"{shape[1]}x{shape[0]}: another aspect ratio, not used")
    return scale_mask(binarise(mask), shape)


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of the True pixels (x1, y1 exclusive), None for an empty mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def crop_box(mask: np.ndarray, margin: float) -> tuple[int, int, int, int] | None:
    """The bounding box of `mask` widened by `margin` of its width/height on each side, clipped."""
    box = bounding_box(mask)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    dx, dy = round(margin * (x1 - x0)), round(margin * (y1 - y0))
    h, w = mask.shape
    return max(0, x0 - dx), max(0, y0 - dy), min(w, x1 + dx), min(h, y1 + dy)


def apply_region(img: np.ndarray, mask: np.ndarray, options: RegionOptions) -> tuple[np.ndarray, np.ndarray]:
    """Crop (when `crop_margin`), then blank (when `occlude`) an image and its mask, before resizing.

    An empty mask is not cropped to (the whole image is kept); blanking the lungs of an empty mask
    changes nothing, blanking outside it blanks everything.
    """
    if options.crop_margin is not None:
        box = crop_box(mask, options.crop_margin)
        if box is not None:
            x0, y0, x1, y1 = box
            img, mask = img[y0:y1, x0:x1], mask[y0:y1, x0:x1]
    if options.occlude is not None:
        blank = mask if options.occlude == "lungs" else ~mask
        value = np.median(img) if options.fill == "median" else 0
        img = img.copy()
        img[blank] = np.uint8(round(float(value)))
    return img, mask


Region = Sequence[Box] | Box | tuple[float, float, float, float] | np.ndarray | str  # what callers give


def region_mask(region: Region, shape: tuple[int, int]) -> np.ndarray:
    """A caller's lung region as a boolean mask of an image's (height, width): boxes (`Box`es, 4-tuples
    or 'x0 y0 x1 y1[;...]' text) or a mask array (binarised, scaled when the aspect ratio matches)."""
    if isinstance(region, str):
        return boxes_mask(parse_boxes(region), shape)
    if isinstance(region, np.ndarray):
        if region.ndim != 2 or not same_aspect(region.shape, shape):
            raise CxrError(f"lung mask of shape {region.shape} does not fit an image of {shape[1]}x{shape[0]}")
        return scale_mask(binarise(region) if region.dtype != bool else region, shape)
    if isinstance(region, Box):
        items: list[Any] = [region]
    elif len(region) == 4 and all(isinstance(v, int | float | np.number) for v in region):
        items = [region]  # one (x0, y0, x1, y1)
    else:
        items = list(region)
    boxes = [b if isinstance(b, Box) else check_box(Box(*map(float, b)), "lung box") for b in items]
    return boxes_mask(boxes, shape)


def crop_to_lungs(gray: np.ndarray, margin: float | None, region: Region | None) -> np.ndarray:
    """A model's input before resizing: `gray` cropped to `region`'s bounding box plus `margin`
    (the lung crop, `data.lung_crop`); unchanged when `margin` is None. A lung-crop model given no
    region is a CxrError that says how to give one."""
    if margin is None:
        return gray
    if region is None:
        raise CxrError("this model was trained on lung crops (data.lung_crop): give the lung region of each image, "
                       "e.g. predict(..., box=(x0, y0, x1, y1)) or `cxr predict --box x0,y0,x1,y1` / `--mask FILE`, "
                       "or let the built-in lung segmenter find them (data.lungs / --lungs auto)")
    cropped, _ = apply_region(gray, region_mask(region, gray.shape), RegionOptions(crop_margin=margin))
    return cropped


# ----------------------------------------------------------------------------- attaching regions


def _index_files(folder: Path) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """Image files below `folder` by relative path without extension, and by stem."""
    by_rel: dict[str, Path] = {}
    by_stem: dict[str, list[Path]] = {}
    for file in sorted(folder.rglob("*")):
        if file.is_file() and file.suffix.lower() in IMAGE_EXTENSIONS and not file.name.startswith("."):
            by_rel[file.relative_to(folder).with_suffix("").as_posix()] = file
            by_stem.setdefault(file.stem, []).append(file)
    return by_rel, by_stem


def _match(path: str, by_rel: dict[str, Any], by_stem: dict[str, list[Any]]) -> Any:
    """The entry for an image path: same relative path (with or without its images/ folder), else the
    only entry with its stem; None otherwise."""
    rel = Path(path).with_suffix("")
    keys = [rel.as_posix(), Path(*[p for p in rel.parts if p != "images"]).as_posix()]
    for key in keys:
        if key in by_rel:
            return by_rel[key]
    same = by_stem.get(rel.name, [])
    return same[0] if len(same) == 1 else None


def _with_regions(found: Discovery, regions: dict[str, str], source: str) -> Discovery:
    samples = [dataclasses.replace(s, mask=regions.get(s.path, s.mask)) for s in found.samples]
    without = sum(s.mask is None for s in samples)
    log.info("lung regions from %s: %d of %d images%s", source, len(regions), len(samples),
             f"; {without} without one" if without else "")
    return dataclasses.replace(found, samples=samples)


def attach_masks_dir(found: Discovery, masks_dir: str | Path) -> Discovery:
    """Masks from a separate folder, matched by relative path, else by a unique file stem."""
    folder = Path(masks_dir)
    if not folder.is_dir():
        raise CxrError(f"masks folder not found: {folder}")
    by_rel, by_stem = _index_files(folder)
    if not by_rel:
        raise CxrError(f"masks folder {folder} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    regions = {}
    for sample in found.samples:
        file = _match(sample.path, by_rel, by_stem)
        if file is not None:
            regions[sample.path] = _relative_to(file, found.root)
    if not regions:
        raise CxrError(f"no mask in {folder} matches an image of {found.root} (masks are matched by relative "
                       f"path or file name, e.g. {found.samples[0].path})")
    return _with_regions(found, regions, str(folder))


def read_boxes_csv(csv_path: str | Path) -> dict[str, list[Box]]:
    """`path,x0,y0,x1,y1` rows -> boxes per path (several rows of one path: several boxes)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise CxrError(f"boxes file not found: {csv_path}")
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in BOXES_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise CxrError(f"boxes file {csv_path} lacks column(s) {', '.join(missing)}; found "
                           f"{', '.join(reader.fieldnames or []) or '(none)'}; expected {','.join(BOXES_COLUMNS)}")
        boxes: dict[str, list[Box]] = {}
        for line, row in enumerate(reader, start=2):
            text = " ".join(str(row[c]).strip() for c in BOXES_COLUMNS[1:])
            boxes.setdefault(row["path"].strip(), []).extend(parse_boxes(text, f"boxes file {csv_path} line {line}"))
    if not boxes:
        raise CxrError(f"boxes file {csv_path} has a header but no rows")
    return boxes


def attach_boxes_csv(found: Discovery, boxes_csv: str | Path) -> Discovery:
    """Lung boxes from a CSV `path,x0,y0,x1,y1` (paths as discovered, or unique file names)."""
    table = read_boxes_csv(boxes_csv)
    by_rel = {Path(p).with_suffix("").as_posix(): b for p, b in table.items()}
    by_stem: dict[str, list[list[Box]]] = {}
    for p, b in table.items():
        by_stem.setdefault(Path(p).stem, []).append(b)
    regions, used = {}, set()
    for sample in found.samples:
        boxes = _match(sample.path, by_rel, by_stem)
        if boxes is not None:
            regions[sample.path] = boxes_spec(boxes)
            used.add(id(boxes))
    if not regions:
        raise CxrError(f"no row of {boxes_csv} matches an image of {found.root} (paths relative to the data, "
                       f"e.g. {found.samples[0].path}, or file names)")
    if len(used) < len(table):
        log.warning("%d path(s) of %s match no image", len(table) - len(used), boxes_csv)
    return _with_regions(found, regions, str(boxes_csv))


def _relative_to(file: Path, root: Path) -> str:
    try:
        return file.resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return file.resolve().as_posix()


def with_regions(
    found: Discovery, masks: str | Path | None = None, boxes: str | Path | None = None, *, missing_ok: bool = False
) -> Discovery:
    """`found` with masks from `masks` (a folder) and/or boxes from `boxes` (a CSV) attached; a mask
    found by discovery is replaced by the given one. `missing_ok` (paths from a checkpoint's config,
    perhaps of another machine): a path that does not exist is skipped with a warning."""
    for what, path in (("masks folder", masks), ("boxes file", boxes)):
        if missing_ok and path is not None and not Path(path).exists():
            log.warning("the run's %s %s is not here: its lung regions are not used", what, path)
    if missing_ok:
        masks = masks if masks is not None and Path(masks).exists() else None
        boxes = boxes if boxes is not None and Path(boxes).exists() else None
    if masks is not None:
        found = attach_masks_dir(found, masks)
    if boxes is not None:
        found = attach_boxes_csv(found, boxes)
    return found


# ------------------------------------------------------------------------------------------ audit


def check_regions(root: Path, samples: Sequence[Sample], sizes: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """The audit's lung-region check: kinds, images without one, empty and unusable masks, scaled masks
    and the lung area fraction. `sizes`: (width, height) of each readable image by path."""
    kinds = {"mask": 0, "box": 0, "none": 0}
    empty, unusable, scaled, fractions = [], [], 0, []
    for sample in samples:
        kinds[region_kind(sample.mask)] += 1
        if sample.mask is None or sample.path not in sizes:
            continue
        width, height = sizes[sample.path]
        try:
            mask = load_region(root, sample.mask, (height, width))
        except RegionProblem as exc:
            unusable.append({"path": sample.path, "mask": sample.mask, "reason": exc.reason})
            continue
        if not is_box_spec(sample.mask):
            scaled += Image.open(root / sample.mask).size != (width, height)
        fraction = float(mask.mean()) if mask is not None else 0.0
        if fraction == 0.0:
            empty.append(sample.path)
        fractions.append(fraction)
    return {
        "with_region": kinds["mask"] + kinds["box"], "masks": kinds["mask"], "boxes": kinds["box"],
        "without_region": kinds["none"], "scaled_to_image": int(scaled), "empty": empty, "unusable": unusable,
        "area_fraction": ({"mean": float(np.mean(fractions)), "min": float(np.min(fractions)),
                           "max": float(np.max(fractions))} if fractions else None),
    }


def region_warnings(report: dict[str, Any]) -> list[str]:
    """One line per lung-region problem of a `check_regions` report."""
    out = []
    if report["empty"]:
        out.append(f"{len(report['empty'])} empty lung mask(s): {', '.join(report['empty'][:_SHOWN])}")
    if report["unusable"]:
        shown = "; ".join(f"{u['path']} ({u['reason']})" for u in report["unusable"][:_SHOWN])
        out.append(f"{len(report['unusable'])} lung mask(s) not usable: {shown}")
    if report["without_region"] and report["with_region"]:
        out.append(f"{report['without_region']} image(s) have no lung mask or box")
    return out
