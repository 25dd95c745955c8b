"""How many images of a set the out-of-distribution checks flag (`cxr evaluate`, a study's test split
and external sets): metrics.json's `ood` entry, so a foreign set's flag rate is seen beside its accuracy."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from cxr.errors import ImageReadError
from cxr.io import read_image
from cxr.ood.detector import FeatureDetector
from cxr.ood.fit import detector_of, pass_features
from cxr.ood.image_checks import DEFAULT_CHECKS, colour_reason, gray_reasons
from cxr.rundir import SplitRow
from cxr.runtime import Compute

log = logging.getLogger(__name__)


def flag_share(model: nn.Module, root: str | Path, rows: list[SplitRow], classes: list[str], cfg: Any,
               compute: Compute, extra: dict[str, Any] | FeatureDetector | None, desc: str = "test") -> dict[str, Any]:
    """{"n", "flagged", "share", "image_checks", "detector", "reasons", "method"} for `rows`' readable images.

    `extra`: the checkpoint's extra (its stored detector) or a detector; without one only the image
    checks count (`method` None)."""
    detector = extra if isinstance(extra, FeatureDetector) or extra is None else detector_of(extra)
    by_image: list[list[str]] = []
    readable: list[SplitRow] = []
    for row in rows:
        path = Path(root) / row.path
        try:
            gray = read_image(path)
        except ImageReadError:
            continue
        colour = colour_reason(path, DEFAULT_CHECKS)
        by_image.append(([colour] if colour else []) + gray_reasons(gray, DEFAULT_CHECKS))
        readable.append(row)
    flagged_feat = np.zeros(len(readable), dtype=bool)
    if detector is not None and readable:
        feats, logits = pass_features(model, readable, root, classes, cfg, compute, f"ood: {desc}")
        if len(feats) == len(readable):
            flagged_feat = detector.flags(feats, logits)[1]
        else:
            log.warning("ood share of %s: %d of %d images scored; the detector's flags are left out", desc,
                        len(feats), len(readable))
    image_flag = np.array([bool(r) for r in by_image], dtype=bool)
    flagged = image_flag | flagged_feat
    reasons = Counter(reason.split(" (")[0].split(":")[0] for r in by_image for reason in r)
    n = len(readable)
    entry = {"n": n, "flagged": int(flagged.sum()), "share": float(flagged.mean()) if n else None,
             "image_checks": int(image_flag.sum()), "detector": int(flagged_feat.sum()),
             "method": detector.method if detector is not None else None, "reasons": dict(reasons.most_common(5))}
    log.info("out of distribution on %s: %d of %d images flagged (%.1f%%; image checks %d, %s %d)", desc,
             entry["flagged"], n, 100 * (entry["share"] or 0), entry["image_checks"], entry["method"] or "no detector",
             entry["detector"])
    return entry
