"""The cache of automatic lung masks: one PNG (0/255, the image's size) and one JSON (the mask's
quality control and the image's size) per image, keyed like the feature cache by what the mask
depends on: the SHA-256 of the image file's bytes and the digest of the segmenter's weights.

Layout: `<root>/<model digest[:16]>/<sha[:2]>/<sha>.png` and `.json`, with `<root>` =
`$CXR_CACHE_DIR/lungs` (else `~/.cache/cxr/lungs`, beside the engine exports). Both files are
written atomically (temp + rename), the JSON last: an entry without its JSON is not there. A lung
crop of an image whose mask is `suspect` uses `whole/<W>x<H>.png`, an all-lung mask of the image's
size (the crop keeps the whole image), so every region made here is recognised by its folder
(`is_auto_region`).
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cxr.engine.exports import cache_root

log = logging.getLogger(__name__)

FORMAT = "cxr-lung-mask/1"
FOLDER = "lungs"  # below the cxr cache folder
WHOLE = "whole"  # the all-lung masks of suspect images' crops
OK = "ok"


def default_mask_dir() -> Path:
    """$CXR_CACHE_DIR/lungs, else $XDG_CACHE_HOME/cxr/lungs (~/.cache/cxr/lungs)."""
    return cache_root() / FOLDER


@dataclass(frozen=True)
class AutoMask:
    """An automatic lung mask on disk: its PNG, its QC values (`LungQC.to_dict()`) and the image's size."""

    path: Path
    qc: dict[str, Any]
    width: int
    height: int

    @property
    def suspect(self) -> bool:
        """Whether the quality control flagged the mask (not `ok`): it is not trusted."""
        return self.qc.get("flag") != OK

    @property
    def reason(self) -> str:
        return str(self.qc.get("reason") or "")


def _png_bytes(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _publish(path: Path, data: bytes) -> Path:
    """Write `data` to a temporary file beside `path` and rename it over `path` (atomic; no fsync: a
    cache entry lost in a crash is made again)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class MaskCache:
    """The automatic masks of one segmenter (its weights `digest`) below `root`."""

    def __init__(self, digest: str, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_mask_dir()
        self.digest = digest
        self.folder = self.root / digest[:16]

    def files(self, image_sha: str) -> tuple[Path, Path]:
        """The PNG and JSON of the image whose bytes hash to `image_sha`."""
        base = self.folder / image_sha[:2] / image_sha
        return base.with_suffix(".png"), base.with_suffix(".json")

    def get(self, image_sha: str) -> AutoMask | None:
        """The cached mask of an image, None when there is none (or it is unreadable)."""
        png, meta = self.files(image_sha)
        if not (meta.is_file() and png.is_file()):
            return None
        try:
            doc = json.loads(meta.read_text(encoding="utf-8"))
            return AutoMask(png, dict(doc["qc"]), int(doc["width"]), int(doc["height"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("automatic lung mask cache entry %s is unreadable (%s): made again", meta, exc)
            return None

    def put(self, image_sha: str, mask: np.ndarray, qc: dict[str, Any]) -> AutoMask:
        """Store one image's mask and QC values (atomically, the JSON last); returns the entry."""
        png, meta = self.files(image_sha)
        _publish(png, _png_bytes(mask))
        height, width = mask.shape
        doc = {"format": FORMAT, "model": self.digest, "image_sha256": image_sha, "width": width, "height": height,
               "qc": qc}
        _publish(meta, (json.dumps(doc, indent=1) + "\n").encode())
        return AutoMask(png, dict(qc), int(width), int(height))

    def whole(self, width: int, height: int) -> Path:
        """An all-lung mask of (width, height): the lung crop of a suspect image is the whole image."""
        path = self.folder / WHOLE / f"{width}x{height}.png"
        if not path.is_file():
            _publish(path, _png_bytes(np.ones((height, width), dtype=bool)))
        return path


def is_auto_region(spec: str | None, root: str | Path | None = None) -> bool:
    """Whether a region string is a mask made by the automatic lungs (below `root`, default
    `default_mask_dir()`, of any segmenter): a cached mask or a suspect image's whole-image crop."""
    if not spec or spec.startswith("box:"):
        return False
    base = Path(root) if root is not None else default_mask_dir()
    try:
        Path(spec).resolve().relative_to(base.resolve())
    except ValueError:
        return False
    return True
