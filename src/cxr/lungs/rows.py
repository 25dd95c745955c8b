"""Automatic lung regions for rows of images (split rows, an external set's rows): each row without
a lung mask or box gets the cached automatic mask's path as its region, so every step that reads
masks (the shortcut audit, the lung crop, the masked-region test, the feature cache's key) works
unchanged. A region the user gave always wins.

What a `suspect` mask becomes depends on the use:
- `crop` (a lung-crop model's input): the whole image (an all-lung mask of its size), with a
  WARNING naming the images;
- `audit` (the shortcut audit): no region, so the image is left out, and the count is reported.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxr.errors import CxrError
from cxr.lungs.auto import AutoLungs, suspect_warning

log = logging.getLogger(__name__)

PURPOSES = ("crop", "audit")
_KEPT = 20  # suspect images named in the summary


@dataclass
class LungFill:
    """Rows with automatic regions filled in, and what was done: `summary` (JSON-ready)."""

    rows: list[Any]
    summary: dict[str, Any] = field(default_factory=dict)


def fill_rows(rows: Sequence[Any], root: str | Path, auto: AutoLungs | None, *, purpose: str,
              what: str = "images") -> LungFill:
    """`rows` (anything with `path` relative to `root` and `mask`) with automatic lung regions where
    none was given (see the module docstring); unchanged when `auto` is None (data.lungs: masks)."""
    if purpose not in PURPOSES:
        raise CxrError(f"unknown purpose {purpose!r} of automatic lungs; allowed: {', '.join(PURPOSES)}")
    rows = list(rows)
    if auto is None:
        return LungFill(rows, {})
    wanted = [i for i, r in enumerate(rows) if not r.mask or auto.owns(r.mask)]
    summary: dict[str, Any] = {"images": len(rows), "given": len(rows) - len(wanted), "auto": 0, "suspect": 0,
                               "unreadable": 0, "suspect_images": [], "purpose": purpose, "root": str(root)}
    if not wanted:
        return LungFill(rows, summary)
    found = auto.masks([Path(root) / rows[i].path for i in wanted], desc=f"lung masks ({what})")
    summary["model"] = auto.digest
    suspect: list[tuple[str, str]] = []
    suspect_masks: list[str] = []
    for i, mask in zip(wanted, found, strict=True):
        row = rows[i]
        if mask is None:
            summary["unreadable"] += 1
            region = None
        elif mask.suspect:
            suspect.append((row.path, mask.reason))
            suspect_masks.append(str(mask.path))
            region = str(auto.cache.whole(mask.width, mask.height)) if purpose == "crop" else None
        else:
            summary["auto"] += 1
            region = str(mask.path)
        rows[i] = dataclasses.replace(row, mask=region)
    summary["suspect"] = len(suspect)
    summary["suspect_images"] = [{"path": p, "reason": r, "mask": m}
                                 for (p, r), m in zip(suspect[:_KEPT], suspect_masks, strict=False)]
    summary["examples"] = [{"path": rows[i].path, "mask": rows[i].mask} for i in wanted if rows[i].mask][:_KEPT]
    if purpose == "crop":
        suspect_warning(suspect)
    elif suspect:
        log.warning("automatic lungs (%s): %d of %d mask(s) suspect, left out of the shortcut audit: %s", what,
                    len(suspect), len(wanted), ", ".join(p for p, _ in suspect[:5]))
    log.info("automatic lungs (%s): %d mask(s) made or cached, %d suspect, %d given by the user", what,
             summary["auto"], len(suspect), summary["given"])
    return LungFill(rows, summary)
