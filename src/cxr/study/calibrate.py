"""Calibration of a study's model: temperature scaling fitted on the validation split.

After training, best.pt scores the validation split once; the temperature T that minimises the
validation NLL (`cxr.metrics.fit_temperature` on the log-probabilities) is stored in best.pt
(`cxr.temperature`), so evaluation, prediction, serving and the exports all apply it. The test
split, never used for the fit, shows the ECE before and after (each with a bootstrap interval).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import log_softmax
from torch import nn

from cxr.metrics import calibration_report, fit_temperature, stratified_bootstrap, temperature_interval
from cxr.metrics.calibration import TEMPERATURE_BOUNDS
from cxr.metrics.weighted import WeightedScores
from cxr.runtime import Compute
from cxr.temperature import TEMPERATURE_KEY, TemperatureScaled, update_extra
from cxr.training.epoch import evaluate_epoch

log = logging.getLogger(__name__)

MIN_CALIBRATION_IMAGES = 20  # fewer validation images than this cannot fit T: it stays 1
T_BOOTSTRAP = 200  # resamples of the validation split for the interval of the fitted T
METHOD = "temperature scaling (Guo et al. 2017): logits / T, T minimises the validation NLL"


class LogitRecorder(nn.Module):
    """`module` unchanged, keeping a copy of every batch of logits it returns (in call order)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.batches: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.module(x)
        self.batches.append(logits.detach().float().cpu())
        return logits

    def logits(self, classes: int) -> np.ndarray:
        """Every recorded batch as one float64 (N, classes) array."""
        if not self.batches:
            return np.zeros((0, classes))
        return torch.cat(self.batches).double().numpy()


@dataclass
class Scored:
    """One split's labels and probabilities, as the model gives them and with its temperature."""

    y: np.ndarray
    raw: np.ndarray  # softmax of the model's logits (N, C)
    calibrated: np.ndarray  # softmax of logits / temperature
    loss_raw: float  # mean NLL of `raw`
    loss: float  # mean NLL of `calibrated`
    temperature: float = 1.0
    logits: np.ndarray | None = field(default=None, repr=False)  # None under TTA (averaged probabilities)


def _nll(y: np.ndarray, log_probs: np.ndarray) -> float:
    return float(-np.mean(log_probs[np.arange(len(y)), y])) if len(y) else float("nan")


def from_logits(y: np.ndarray, logits: np.ndarray, temperature: float = 1.0) -> Scored:
    """`Scored` from logits (float64), raw and divided by `temperature`."""
    raw_log, cal_log = log_softmax(logits, axis=1), log_softmax(logits / temperature, axis=1)
    return Scored(y, np.exp(raw_log), np.exp(cal_log), _nll(y, raw_log), _nll(y, cal_log), temperature, logits)


def score(
    module: nn.Module, loader: Iterable, compute: Compute, temperature: float = 1.0, *, tta: bool = False,
    desc: str = "evaluate",
) -> Scored:
    """Score every batch of `loader` (eval mode); with `tta`, probabilities averaged over the views
    (two passes when T != 1: the average of the calibrated views is not a function of the raw one)."""
    criterion = nn.CrossEntropyLoss()
    if not tta:
        recorder = LogitRecorder(module)
        _, y, probs = evaluate_epoch(recorder, loader, criterion, compute, desc=desc)
        return from_logits(y, recorder.logits(probs.shape[1] if probs.ndim == 2 else 0), temperature)
    loss_raw, y, raw = evaluate_epoch(module, loader, criterion, compute, tta=True, desc=desc)
    if temperature == 1.0:
        return Scored(y, raw.astype(np.float64), raw.astype(np.float64), loss_raw, loss_raw)
    loss, _, calibrated = evaluate_epoch(TemperatureScaled(module, temperature), loader, criterion, compute,
                                         tta=True, desc=f"{desc} (calibrated)")
    return Scored(y, raw.astype(np.float64), calibrated.astype(np.float64), loss_raw, loss, temperature)


def fit(val: Scored, seed: int = 0) -> tuple[float, str, dict[str, Any]]:
    """The temperature for validation scores (with logits), how it was chosen, and the fit's record.

    T stays 1 when the validation split is too small; when every validation image is right (the NLL
    keeps falling as T -> 0: no finite T is supported); when the 95% bootstrap interval of the fitted
    T reaches the search bounds (resamples that are nearly separable: T is not pinned down); and
    when that interval holds 1 (no evidence of miscalibration). A noisy T fitted on a few, nearly
    all right, images makes other images worse: measured on the demo's 24 validation images."""
    n = len(val.y)
    if n < MIN_CALIBRATION_IMAGES:
        log.warning("calibration: only %d validation images (< %d): temperature kept at 1", n, MIN_CALIBRATION_IMAGES)
        return 1.0, f"kept at 1: {n} validation images (fewer than {MIN_CALIBRATION_IMAGES})", {}
    if bool(np.all(val.raw.argmax(axis=1) == val.y)):
        log.warning("calibration: every validation image is classified right, so no temperature can be fitted; "
                    "temperature kept at 1")
        return 1.0, "kept at 1: every validation image is classified right (no finite optimum)", {}
    log_probs = log_softmax(val.logits, axis=1)
    fitted = fit_temperature(log_probs, val.y, kind="log_probs")
    low, high = temperature_interval(log_probs, val.y, kind="log_probs", n_boot=T_BOOTSTRAP, seed=seed)
    found = {"fitted": fitted, "fitted_ci": [low, high]}
    if np.isclose(low, TEMPERATURE_BOUNDS[0], rtol=1e-3) or np.isclose(high, TEMPERATURE_BOUNDS[1], rtol=1e-3):
        log.warning("calibration: the temperature is not pinned down by the %d validation images (resamples reach "
                    "the search bound %s): temperature kept at 1", n, TEMPERATURE_BOUNDS)
        return 1.0, (f"kept at 1: on resamples of the {n} validation images the fitted T reaches the search bound "
                     f"(95% interval [{low:.3f}, {high:.3f}]): too few images, or nearly all right"), found
    if low <= 1.0 <= high:
        return 1.0, (f"kept at 1: the T fitted on the {n} validation images, {fitted:.3f}, has a 95% interval "
                     f"[{low:.3f}, {high:.3f}] that holds 1 (no evidence of miscalibration)"), found
    return fitted, f"fitted on the {n} validation images (95% interval [{low:.3f}, {high:.3f}])", found


def calibrate(val: Scored, checkpoint: Path, seed: int = 0) -> tuple[Scored, dict[str, Any]]:
    """Fit T on `val` (from logits), store it in `checkpoint`; returns val rescored with T and the record."""
    temperature, how, found = fit(val, seed)
    rescored = from_logits(val.y, val.logits, temperature)
    record = {"temperature": temperature, **found, "fitted_on": "val", "val_images": int(len(val.y)), "how": how,
              "method": METHOD, "val_nll_before": val.loss_raw, "val_nll_after": rescored.loss}
    update_extra(checkpoint, {TEMPERATURE_KEY: temperature, "calibration": record})
    log.info("calibration: temperature %.4g (%s); validation NLL %.4f -> %.4f, stored in %s", temperature, how,
             val.loss_raw, rescored.loss, checkpoint)
    return rescored, record


def ece_interval(y: np.ndarray, probs: np.ndarray, bins: int, n_boot: int, seed: int) -> list[float] | None:
    """The stratified BCa 95% interval of the ECE (None without resamples)."""
    if n_boot < 1 or len(y) < 2:
        return None
    scores = WeightedScores(y, probs, bins, ranking=False)
    result = stratified_bootstrap(y, lambda w: {"ece": scores(w)["ece"]}, n_boot, seed)["ece"]
    return result.ci


def calibration_entry(scored: Scored, record: dict[str, Any] | None, *, bins: int, n_boot: int,
                      seed: int) -> dict[str, Any]:
    """metrics["calibration"]: T, how it was fitted, and ECE (with interval), NLL and reliability
    bins before and after on the scored split."""
    report = calibration_report(scored.y, scored.raw, scored.calibrated, bins, scored.temperature)
    for side, probs in (("before", scored.raw), ("after", scored.calibrated)):
        report[side]["ece_ci"] = ece_interval(scored.y, probs, bins, n_boot, seed)
    report["before"]["nll"], report["after"]["nll"] = scored.loss_raw, scored.loss
    fitted = {k: v for k, v in (record or {}).items() if k != "temperature"}
    return {**report, **fitted, "method": METHOD}

