"""`cxr lungs predict`: lung masks of a folder of X-rays, written where `--masks DIR` finds them.

Each image `IMAGES/<rel>.<ext>` gets `OUT/<rel>.png` (0 background, 255 lung, at the image's size),
the layout `cxr.data.masks.attach_masks_dir` matches by relative path, and one row in `OUT/qc.csv`
with the QC numbers and flag. Unreadable images are skipped, named in a warning and in the CSV.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from cxr.errors import CxrError, ImageReadError
from cxr.io import IMAGE_EXTENSIONS, read_image
from cxr.lungs.qc import LungQC
from cxr.lungs.segmenter import LungSegmenter
from cxr.progress import Progress

log = logging.getLogger(__name__)

QC_COLUMNS = ("path", "mask", "area_fraction", "parts", "balance", "confidence", "flag", "reason")


def list_images(source: Path) -> tuple[Path, list[Path]]:
    """(root, image files): a folder's images (recursive; hidden folders and `masks/` folders skipped), or one file."""
    if source.is_file():
        return source.parent, [source]
    if not source.is_dir():
        raise CxrError(f"images not found: {source}")
    files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                   and not any(part.startswith(".") or part == "masks" for part in p.relative_to(source).parent.parts))
    if not files:
        raise CxrError(f"{source} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return source, files


def _row(rel: str, mask: str, qc: LungQC | None, reason: str = "") -> dict[str, object]:
    if qc is None:
        return {"path": rel, "mask": "", "area_fraction": "", "parts": "", "balance": "", "confidence": "",
                "flag": "unreadable", "reason": reason}
    return {"path": rel, "mask": mask, "area_fraction": f"{qc.area_fraction:.4f}", "parts": qc.parts,
            "balance": f"{qc.balance:.3f}", "confidence": f"{qc.confidence:.3f}", "flag": qc.flag, "reason": qc.reason}


def write_masks(segmenter: LungSegmenter, root: Path, files: Sequence[Path], out: Path) -> list[dict[str, object]]:
    """Masks of `files` (below `root`) as PNGs under `out`, and `out/qc.csv`; returns the CSV rows."""
    rows: list[dict[str, object]] = []
    with Progress(len(files), "lungs: segmenting", unit="img") as bar:
        for start in range(0, len(files), segmenter.batch_size):
            chunk, images = [], []
            for file in files[start:start + segmenter.batch_size]:
                rel = file.relative_to(root).as_posix()
                try:
                    images.append(read_image(file))
                    chunk.append(rel)
                except ImageReadError as exc:
                    log.warning("lungs: skipped unreadable image %s: %s", rel, exc)
                    rows.append(_row(rel, "", None, str(exc)))
            for rel, result in zip(chunk, segmenter.segment(images) if images else [], strict=True):
                mask_rel = Path(rel).with_suffix(".png").as_posix()
                target = out / mask_rel
                target.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(result.mask.astype(np.uint8) * 255).save(target)
                rows.append(_row(rel, mask_rel, result.qc))
            bar.update(len(files[start:start + segmenter.batch_size]))
    with (out / "qc.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=QC_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return rows
