"""Lung regions as text: a mask file or lung bounding boxes, in one string that rides with a sample.

A sample's region (`Sample.mask`, `SplitRow.mask`, the `mask` column of split.csv) is either
- the path of a lung mask image, relative to the data root like the image (Kaggle v4 ships one per
  image, `<Class>/masks/<name>.png`), or
- `box:x0 y0 x1 y1[;x0 y0 x1 y1 ...]`: lung bounding boxes in image pixels (x right, y down, the
  upper corner exclusive), one per lung or one for both; a box stands for a rectangular mask.

Manifests give a mask as a `mask` column (a path) and boxes as a `lung_box` column (`x0 y0 x1 y1`,
several separated by `;`; commas work as separators too). No numpy, no torch: the text side only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from cxr.errors import CxrError

BOX_PREFIX = "box:"
MASK_FOLDER = "masks"  # Kaggle v4: <Class>/masks/ beside <Class>/images/
MANIFEST_MASK = "mask"  # manifest column: mask path
MANIFEST_BOX = "lung_box"  # manifest column: lung boxes
_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")
_BOX_VALUES = 4


@dataclass(frozen=True)
class Box:
    """A lung bounding box in image pixels: columns x0..x1, rows y0..y1 (x1, y1 exclusive)."""

    x0: float
    y0: float
    x1: float
    y1: float

    def text(self) -> str:
        return " ".join(f"{v:g}" for v in (self.x0, self.y0, self.x1, self.y1))


def parse_boxes(text: str, where: str = "box") -> list[Box]:
    """'x0 y0 x1 y1[; x0 y0 x1 y1 ...]' (blanks or commas between numbers) -> boxes; a CxrError names
    `where` and the text when it is not that."""
    body = text.strip()
    if body.startswith(BOX_PREFIX):
        body = body[len(BOX_PREFIX):]
    boxes = []
    for part in (p for p in body.split(";") if p.strip()):
        values = [v for v in re.split(r"[\s,]+", part.strip()) if v]
        if len(values) != _BOX_VALUES or not all(_NUMBER.match(v) for v in values):
            raise CxrError(f"{where}: {text!r} is not a lung box; expected 'x0 y0 x1 y1' in image pixels "
                           "(several separated by ';')")
        box = Box(*(float(v) for v in values))
        check_box(box, where)
        boxes.append(box)
    if not boxes:
        raise CxrError(f"{where}: empty lung box {text!r}; expected 'x0 y0 x1 y1'")
    return boxes


def check_box(box: Box, where: str = "box") -> Box:
    """x0 < x1, y0 < y1 and no negative coordinate; else a CxrError naming `where`."""
    if min(box.x0, box.y0) < 0 or box.x1 <= box.x0 or box.y1 <= box.y0:
        raise CxrError(f"{where}: lung box {box.text()!r} must have 0 <= x0 < x1 and 0 <= y0 < y1")
    return box


def boxes_spec(boxes: list[Box]) -> str:
    """The region string of lung boxes ('box:10 20 60 200;70 20 120 200')."""
    return BOX_PREFIX + ";".join(b.text() for b in boxes)


def is_box_spec(spec: str | None) -> bool:
    """Whether a region string holds boxes (else it is a mask path)."""
    return spec is not None and spec.startswith(BOX_PREFIX)


def region_kind(spec: str | None) -> str:
    """'mask', 'box' or 'none'."""
    if not spec:
        return "none"
    return "box" if is_box_spec(spec) else "mask"


def mask_beside(image: Path, class_dir: Path, extensions: frozenset[str]) -> Path | None:
    """The Kaggle v4 mask of `image`: `<class_dir>/masks/<the image's path below class_dir or its
    images/ folder>`, same stem, any image extension; None when there is none."""
    try:
        rel = image.relative_to(class_dir)
    except ValueError:
        return None
    if rel.parts and rel.parts[0] == "images":
        rel = Path(*rel.parts[1:])
    folder = class_dir / MASK_FOLDER / rel.parent
    same = folder / rel.name
    if same.is_file():
        return same
    for ext in sorted(extensions):
        candidate = folder / (rel.stem + ext)
        if candidate.is_file():
            return candidate
    return None


def manifest_region(row: dict[str, str], where: str) -> str | None:
    """The region string of a manifest row: its `mask` path, else its `lung_box` boxes, else None."""
    mask = (row.get(MANIFEST_MASK) or "").strip()
    if mask:
        return mask
    box = (row.get(MANIFEST_BOX) or "").strip()
    return boxes_spec(parse_boxes(box, where)) if box else None
