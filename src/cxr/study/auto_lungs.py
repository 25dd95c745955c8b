"""Automatic lungs in a study and in `cxr evaluate` (`data.lungs`): the rows of a lung-crop model
and of the shortcut audit get the default segmenter's masks where the user gave none
(`cxr.lungs.rows`), and the run folder gets `lungs.json` and `figures/lungs_auto.png` (a grid of
automatic masks outlined on their images) for the report's section (`cxr.report.sections.lungs`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cxr.config import RunConfig
from cxr.data.masks import scale_mask
from cxr.errors import ImageReadError
from cxr.explain_masks import OUTLINE_RGB, outline
from cxr.io import read_image
from cxr.lungs.auto import auto_lungs_of
from cxr.lungs.rows import fill_rows
from cxr.report.sections.lungs import GRID_FIGURE, LUNGS_JSON
from cxr.rundir import RunDir, read_json, write_json

log = logging.getLogger(__name__)

GRID_TILES = 8  # images in the grid
TILE = 192  # pixels per tile side
SUSPECT_RGB = (255, 48, 48)  # the outline and frame of a suspect mask


def crop_rows(rows: Sequence[Any], root: str | Path, cfg: RunConfig, what: str, *, progress: bool = True) -> list[Any]:
    """The rows of a lung-crop model (`data.lung_crop`) with automatic regions where none was given
    (suspect masks: the whole image, warned about); unchanged without lung crop or with data.lungs: masks."""
    if not cfg.data.lung_crop:
        return list(rows)
    return fill_rows(rows, root, auto_lungs_of(cfg, progress=progress), purpose="crop", what=what).rows


def audit_rows(rows: Sequence[Any], root: str | Path, cfg: RunConfig | None, what: str,
               *, progress: bool = True) -> tuple[list[Any], dict[str, Any]] | None:
    """The rows of the shortcut audit with automatic masks where none was given (suspect ones left
    out) and what was done; None when data.lungs is none (no audit). Without a config: as given."""
    if cfg is None:
        return list(rows), {}
    if cfg.data.lungs == "none":
        log.info("shortcut audit (%s): data.lungs is none; skipped", what)
        return None
    filled = fill_rows(rows, root, auto_lungs_of(cfg, progress=progress), purpose="audit", what=what)
    return filled.rows, filled.summary


def lung_sets(added: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The automatic-lungs summaries of the audits in metrics.json entries (test, external sets)."""
    sets = {}
    if (added.get("shortcut") or {}).get("lungs"):
        sets["test"] = added["shortcut"]["lungs"]
    for name, entry in ((added.get("external") or {}).get("sets") or {}).items():
        lungs = (entry.get("shortcut") or {}).get("lungs") if isinstance(entry, dict) else None
        if lungs:
            sets[f"external {name}"] = lungs
    return sets


def write_lungs_report(run: RunDir, added: dict[str, Any]) -> Path | None:
    """lungs.json (merged with an earlier one) and the grid of automatic masks, when any audit used them."""
    sets = {k: v for k, v in lung_sets(added).items() if v.get("model")}
    if not sets:
        return None
    path = run.root / LUNGS_JSON
    previous = read_json(path) if path.is_file() else {}
    merged = {**(previous.get("sets") or {}), **sets}
    tiles = _grid(merged, run.figures / Path(GRID_FIGURE).name)
    model = next(iter(sets.values()))["model"]
    return write_json(path, {"model": model, "sets": merged, "grid": tiles})


def _choose(sets: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Up to GRID_TILES examples: a quarter suspect (when there are any), the rest ok, over the sets."""
    ok = [{"set": n, "root": s.get("root", ""), **e, "flag": "ok"} for n, s in sets.items()
          for e in s.get("examples") or [] if e.get("mask")]
    bad = [{"set": n, "root": s.get("root", ""), **e, "flag": "suspect"} for n, s in sets.items()
           for e in s.get("suspect_images") or [] if e.get("mask")]
    shown_bad = bad[: max(1, GRID_TILES // 4)] if bad else []
    return ok[: GRID_TILES - len(shown_bad)] + shown_bad


def _tile(example: dict[str, Any]) -> np.ndarray | None:
    """One example's image with its mask's outline (green; red with a red frame when suspect), TILE px."""
    try:
        image = read_image(Path(example["root"]) / example["path"])
        mask = scale_mask(read_image(example["mask"]) > 127, image.shape)
    except (ImageReadError, OSError):
        return None
    rgb = np.repeat(image[..., None], 3, axis=2)
    rgb[outline(mask)] = OUTLINE_RGB if example["flag"] == "ok" else SUSPECT_RGB
    tile = np.array(Image.fromarray(rgb).resize((TILE, TILE), Image.Resampling.BILINEAR))
    if example["flag"] != "ok":
        tile[:4], tile[-4:], tile[:, :4], tile[:, -4:] = SUSPECT_RGB, SUSPECT_RGB, SUSPECT_RGB, SUSPECT_RGB
    return tile


def _grid(sets: dict[str, dict[str, Any]], file: Path) -> dict[str, Any] | None:
    """figures/lungs_auto.png: the chosen examples in one row of tiles (a red frame: suspect)."""
    shown, tiles = [], []
    for example in _choose(sets):
        tile = _tile(example)
        if tile is not None:
            tiles.append(tile)
            shown.append({"set": example["set"], "path": example["path"], "flag": example["flag"]})
    if not tiles:
        return None
    columns = min(len(tiles), GRID_TILES // 2)
    rows = -(-len(tiles) // columns)
    canvas = np.full((rows * TILE, columns * TILE, 3), 255, dtype=np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, columns)
        canvas[r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE] = tile
    file.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(file)
    return {"figure": f"{file.parent.name}/{file.name}", "tiles": shown}
