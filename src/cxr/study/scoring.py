"""Scoring rows of images with a model, with the lung-region options of a checkpoint: the shared
step of the external evaluation and the masked-region test.

`score_rows` runs a model over rows (a crop and/or an occlusion applied before resizing) and
returns what it scored; `rows_with_regions` fills in the lung regions of split rows written before
the run knew them (from the data's discovery).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from cxr.data.dataset import SplitDataset, make_loader
from cxr.data.discover import Discovery
from cxr.data.masks import RegionOptions
from cxr.errors import CxrError
from cxr.rundir import SplitRow
from cxr.runtime import Compute
from cxr.training.epoch import evaluate_epoch

log = logging.getLogger(__name__)

_SHOWN = 5  # rows named in an error message


def require_regions(rows: Sequence[SplitRow], what: str) -> None:
    """A CxrError naming the rows without a lung mask or box, for a step that needs one for every image."""
    missing = [r.path for r in rows if not getattr(r, "mask", None)]
    if missing:
        raise CxrError(
            f"{what} needs a lung mask or box for every image, but {len(missing)} of {len(rows)} have none "
            f"(e.g. {', '.join(missing[:_SHOWN])}); give masks (Kaggle v4 masks/ folders, --masks DIR) or "
            "boxes (--boxes FILE, a manifest lung_box column), or let the built-in segmenter make them (--lungs auto)"
        )


def rows_with_regions(rows: Sequence[SplitRow], found: Discovery | None) -> list[SplitRow]:
    """`rows` with the lung region of each row that has none taken from `found` (same path)."""
    if found is None:
        return list(rows)
    regions = {s.path: s.mask for s in found.samples if s.mask}
    return [r if r.mask or r.path not in regions else dataclasses.replace(r, mask=regions[r.path]) for r in rows]


@dataclass
class Scored:
    """What a pass scored: the rows read (in order), labels, probabilities, loss and the rows skipped."""

    rows: list[SplitRow]
    y_true: np.ndarray
    probs: np.ndarray
    loss: float
    skipped: list[dict[str, str]]


def score_rows(
    model: nn.Module,
    root: str | Path,
    rows: Sequence[SplitRow],
    classes: Sequence[str],
    compute: Compute,
    *,
    regions: RegionOptions | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    seed: int = 0,
    tta: bool = False,
    desc: str = "evaluate",
) -> Scored:
    """Probabilities of `model` on `rows` (paths relative to `root`); unreadable images are skipped and named."""
    dataset = SplitDataset(root, rows, classes, model.preprocessing, None, seed=seed, regions=regions)
    loader = make_loader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, seed=seed)
    model.eval()
    loss, y_true, probs = evaluate_epoch(model, loader, nn.CrossEntropyLoss(), compute, tta=tta, desc=desc)
    skipped = [{"path": row.path, "reason": reason} for row, reason in dataset.unreadable()]
    if skipped:
        log.warning("%s: %d image(s) skipped: %s", desc, len(skipped),
                    "; ".join(f"{s['path']} ({s['reason']})" for s in skipped[:_SHOWN]))
    return Scored(dataset.readable_rows(), y_true, probs, loss, skipped)
