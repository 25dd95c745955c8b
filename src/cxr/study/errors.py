"""Error analysis of a study: the most confident mistakes on the test split, with their Grad-CAM.

For every (true, predicted) pair of classes the test images of that confusion are ranked by the
probability the model gave the wrong class; the first `PER_PAIR` are drawn as small figures (the
X-ray beside the Grad-CAM of the predicted class, `cxr.explain`) under figures/errors/, and listed in
metrics.json["errors"] for the report. A reader sees what the model confuses, and on what.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from cxr.errors import CxrError, ImageReadError
from cxr.explain import explain
from cxr.io import read_image
from cxr.predict import Predictor
from cxr.rundir import RunDir, SplitRow
from cxr.study.calibrate import Scored
from cxr.study.phases import TrainingRun

log = logging.getLogger(__name__)

PER_PAIR = 3  # mistakes shown per (true, predicted) pair
ERRORS_FOLDER = "errors"  # under figures/


def confident_mistakes(y: np.ndarray, probs: np.ndarray, per_pair: int = PER_PAIR) -> list[tuple[int, int, int]]:
    """(row, true, predicted) of up to `per_pair` mistakes per (true, predicted) pair, most confident
    first (highest probability of the predicted class); pairs in class order."""
    pred = probs.argmax(axis=1)
    out = []
    k = probs.shape[1]
    for true in range(k):
        for wrong in range(k):
            if true == wrong:
                continue
            rows = np.flatnonzero((y == true) & (pred == wrong))
            ranked = rows[np.argsort(-probs[rows, wrong], kind="stable")]
            out.extend((int(r), true, wrong) for r in ranked[:per_pair])
    return out


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "class"


def write_error_gallery(
    trained: TrainingRun, rows: Sequence[SplitRow], test: Scored, run: RunDir, per_pair: int = PER_PAIR
) -> dict[str, Any]:
    """Draw the most confident mistakes of best.pt (its weights in trained.model) into figures/errors/;
    returns metrics.json["errors"] (per item: path, true, predicted, probability, figure)."""
    classes = trained.prepared.classes
    folder = run.figures / ERRORS_FOLDER
    for old in folder.glob("*.png"):
        old.unlink()  # a resumed run draws its own
    predictor = Predictor(trained.model, classes, trained.model.preprocessing, device=trained.compute.device,
                          precision="fp32", temperature=test.temperature)
    items = []
    for row_index, true, wrong in confident_mistakes(test.y, test.calibrated, per_pair):
        row = rows[row_index]
        probability = float(test.calibrated[row_index, wrong])
        try:
            gray = read_image(trained.prepared.root / row.path)
            result = explain(predictor, gray, classes[wrong])
        except (ImageReadError, CxrError) as exc:
            log.warning("error gallery: %s skipped (%s)", row.path, exc)
            continue
        rank = sum(1 for item in items if item["true"] == classes[true] and item["predicted"] == classes[wrong])
        name = f"{_slug(classes[true])}_as_{_slug(classes[wrong])}_{rank + 1}.png"
        title = f"true {classes[true]}, predicted {classes[wrong]} (p = {probability:.3f})"
        figure = result.save_figure(folder / name, thumbnail=True, title=title, formats=("png",))
        items.append({"path": row.path, "true": classes[true], "predicted": classes[wrong],
                      "probability": probability, "true_probability": float(test.calibrated[row_index, true]),
                      "figure": figure.relative_to(run.root).as_posix()})
    mistakes = int(np.sum(test.calibrated.argmax(axis=1) != test.y))
    log.info("error gallery: %d of %d test mistakes drawn in %s", len(items), mistakes, folder)
    return {"per_pair": per_pair, "mistakes": mistakes, "n": int(len(test.y)), "items": items,
            "explained_class": "predicted"}
