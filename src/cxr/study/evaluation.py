"""Scoring the best.pt of a study: its temperature fitted on the validation split, then the test split.

Single-label runs are calibrated (`cxr.study.calibrate`) and scored with the calibrated probabilities
that predict and serve give; multi-label runs get per-finding thresholds chosen on validation instead
(`cxr.study.multilabel`). Any checkpoint on any data: `cxr.study.checkpoint_eval`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from cxr.checkpoint import load_checkpoint
from cxr.engine.module import evaluation_module
from cxr.errors import CxrError
from cxr.metrics import classification_metrics
from cxr.ood.share import flag_share
from cxr.rundir import SPLITS, SplitRow
from cxr.study.calibrate import Scored, calibrate, calibration_entry, score
from cxr.study.conformal import calibrate_sets, sets_entry
from cxr.study.inputs import decoded_cache_of, image_loaders
from cxr.study.multilabel import score_multilabel, store_thresholds, validation_thresholds
from cxr.study.ood import fit_study_detector
from cxr.study.operating import operating_entry
from cxr.study.phases import TrainingRun
from cxr.training.epoch import evaluate_epoch
from cxr.training.losses import EvalLoss

log = logging.getLogger(__name__)

EVALUATION_SPLITS = (*SPLITS, "all")


def scored_rows(loader: Any, rows: list[SplitRow]) -> list[SplitRow]:
    """The rows a pass over `loader` scored: all of them, less the unreadable ones it skipped (logged)."""
    dataset = getattr(loader, "dataset", None)
    if not hasattr(dataset, "unreadable"):
        return rows
    skipped = dataset.unreadable()
    if skipped:
        log.warning("%d unreadable image(s) skipped: %s", len(skipped),
                    "; ".join(f"{row.path} ({reason})" for row, reason in skipped[:10]))
    return dataset.readable_rows()


@dataclass
class Calibration:
    """The temperature fitted on the validation split, the split rescored with it, how it was fitted."""

    temperature: float
    val: Scored | None
    record: dict[str, Any]


def split_inputs(run: TrainingRun, split: str, *, tta: bool = False) -> tuple[nn.Module, Any, Any]:
    """best.pt's weights into run.model; the module, loader and compute that score `split` (cached
    features when the run used them; images otherwise and with TTA, on the configured engine)."""
    best = load_checkpoint(run.result.best_path, map_location=run.compute.device)
    run.model.load_state_dict(best["model"])
    compute = run.compute
    if run.feature_cache and not tta:
        module, loader = run.module, run.loaders[split]
    else:
        decoded = decoded_cache_of(compute, run.cache_dir) if run.cache_dir is not None else None
        loader = image_loaders(run.prepared, run.model.preprocessing, run.cfg, (split,), decoded_cache=decoded,
                               progress=compute.progress)[split]
        run.model.to(compute.device)
        module, compute, _ = evaluation_module(
            run.model, run.cfg.eval.engine, compute, batch_size=run.cfg.train.batch_size,
            images=len(run.prepared.split(split)), checkpoint=run.result.best_path, data_root=run.cfg.data.root,
            classes=run.prepared.classes, requested_precision=run.cfg.train.precision)
    module.to(compute.device)
    return module, loader, compute


def calibrate_best(run: TrainingRun) -> Calibration:
    """Fit the temperature of best.pt on the validation split and store it in best.pt (single-label);
    multi-label runs choose their thresholds on validation at test time instead (T stays 1). The
    out-of-distribution detector is fitted and stored first (`cxr.study.ood`)."""
    fit_study_detector(run)
    if run.prepared.multilabel:
        return Calibration(1.0, None, {"temperature": 1.0, "how": "multi-label: per-finding thresholds instead"})
    module, loader, compute = split_inputs(run, "val")
    val, record = calibrate(score(module, loader, compute, desc="validation"), run.result.best_path,
                            seed=run.cfg.train.seed)
    calibrate_sets(val.y, val.calibrated, run.prepared.classes, run.cfg, run.result.best_path)  # prediction sets
    return Calibration(record["temperature"], val, record)


def evaluate_best(run: TrainingRun, calibration: Calibration) -> tuple[dict[str, Any], list[SplitRow], Scored]:
    """Metrics of best.pt (with its temperature) on the test split, the rows scored and their scores.

    The metrics are those of the calibrated probabilities (what predict and serve give); `calibration`
    adds the ECE before and after, `operating_points` the validation-chosen thresholds on the test split."""
    cfg = run.cfg
    if not run.prepared.split("test"):
        raise CxrError(f"the test split is empty; change data.ratios (now {list(cfg.data.ratios)})")
    if run.prepared.multilabel:
        return _evaluate_best_multilabel(run)
    module, loader, compute = split_inputs(run, "test", tta=cfg.eval.tta)
    test = score(module, loader, compute, calibration.temperature, tta=cfg.eval.tta, desc="test")
    classes = run.prepared.classes
    metrics = classification_metrics(test.y, test.calibrated, classes, loss=test.loss, n_boot=cfg.eval.bootstrap,
                                     ece_bins=cfg.eval.ece_bins, seed=cfg.train.seed)
    metrics["temperature"] = calibration.temperature
    metrics["calibration"] = calibration_entry(test, calibration.record, bins=cfg.eval.ece_bins,
                                               n_boot=cfg.eval.bootstrap, seed=cfg.train.seed)
    metrics["operating_points"] = operating_entry(calibration.val, test, classes)
    metrics["conformal"] = sets_entry(run.result.best_path, test.y, test.calibrated)  # prediction sets
    metrics["ood"] = flag_share(run.model, run.prepared.root, run.prepared.split("test"), classes, cfg, run.compute,
                                load_checkpoint(run.result.best_path).get("extra"))  # share out of distribution
    return metrics, scored_rows(loader, run.prepared.split("test")), test


def _evaluate_best_multilabel(run: TrainingRun) -> tuple[dict[str, Any], list[SplitRow], Scored]:
    """Per-finding metrics on the test split at thresholds chosen on validation (stored in best.pt)."""
    cfg = run.cfg
    module, loader, compute = split_inputs(run, "test", tta=cfg.eval.tta)
    loss, y_true, probs = evaluate_epoch(module, loader, EvalLoss(), compute, tta=cfg.eval.tta, desc="test")
    val_module, val_loader, val_compute = split_inputs(run, "val")
    thresholds = validation_thresholds(val_module, val_loader, val_compute)
    store_thresholds(run.result.best_path, thresholds)
    metrics = score_multilabel(y_true, probs, run.prepared.classes, cfg, loss=loss, thresholds=thresholds)
    probs = probs.astype(np.float64)
    scored = Scored(y_true, probs, probs, loss, loss)
    return metrics, scored_rows(loader, run.prepared.split("test")), scored
