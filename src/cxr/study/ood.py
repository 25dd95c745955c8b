"""The out-of-distribution detector of a finished study's best.pt (`cxr.ood`): fitted on the
training split's pooled features of the final model, its threshold chosen on validation, stored in
best.pt's extra. A failure to fit is logged and leaves the image checks alone in charge."""

from __future__ import annotations

import logging

from cxr.checkpoint import load_checkpoint
from cxr.errors import CxrError
from cxr.ood.detector import FeatureDetector
from cxr.ood.fit import fit_on_rows, store_state
from cxr.study.phases import TrainingRun

log = logging.getLogger(__name__)


def fit_study_detector(run: TrainingRun) -> FeatureDetector | None:
    """Fit the detector on best.pt's weights and store it in best.pt (None when it cannot be fitted)."""
    best = load_checkpoint(run.result.best_path, map_location=run.compute.device)
    run.model.load_state_dict(best["model"])
    rows = run.prepared.split("train") + run.prepared.split("val")
    try:
        detector = fit_on_rows(run.model, rows, run.prepared.root, run.prepared.classes, run.cfg, run.compute)
    except CxrError as exc:
        log.warning("no out-of-distribution detector for %s: %s (image checks only)", run.result.best_path, exc)
        detector = None
    store_state(run.result.best_path, detector)
    return detector
