"""The state a training run carries from epoch to epoch, and the pieces that save and judge it.

- `TrainingState`: the history rows and the early-stopping bookkeeping (best val loss and epoch,
  epochs without improvement), with `state_dict` / `load_state_dict` like a torch module.
  The selection metric is the val loss, or for multi-label runs the val mean AUROC (`selection_score`):
  a rare finding's loss is dominated by its negatives, so the loss can keep falling while the head
  ranks no better than chance (nih-dev: val F1 0 from epoch 2, best.pt near chance).
- `EarlyStopping`: stop after `patience` epochs without an improvement of the selection metric.
- `Checkpointer`: writes `last.pt` every epoch, `best.pt` on an improvement and `history.csv`
  into the run folder (main process only), and restores a run from `last.pt` exactly: model,
  optimizer, scheduler, gradient scaler, RNG state and training state.

Checkpoints always hold the full classifier, whatever module is trained (the head alone on cached
features, or the model wrapped by DDP), so `best.pt` is ready for prediction.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxr.checkpoint import load_checkpoint, save_checkpoint
from cxr.config import RunConfig
from cxr.errors import CxrError
from cxr.rank import is_main_process
from cxr.rundir import PHASE_COLUMN, RunDir, write_history_csv
from cxr.runtime import rng_state, set_rng_state

log = logging.getLogger(__name__)


def selection_score(row: dict[str, float]) -> float:
    """Lower is better: minus the val mean AUROC where the row has a finite one (multi-label), else the val loss."""
    auroc = row.get("val_mean_auroc")
    if auroc is not None and math.isfinite(auroc):
        return -float(auroc)
    return float(row["val_loss"])


def selection_metric(history: Sequence[dict[str, float]]) -> str:
    """What `selection_score` ranks the rows by, in words."""
    last = history[-1] if history else {}
    return "mean-AUROC" if math.isfinite(last.get("val_mean_auroc", math.nan)) else "loss"


@dataclass
class TrainingState:
    """Per-epoch history and the early-stopping bookkeeping of a run (all phases)."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_val_loss: float = math.inf  # the val loss of the best epoch
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the last improvement of the selection metric
    best_score: float = math.inf  # selection_score of the best epoch

    def record(self, row: dict[str, float]) -> bool:
        """Append an epoch's row; True when it is the best so far (`selection_score`)."""
        self.history.append(row)
        score = selection_score(row)
        if score < self.best_score:
            self.best_score, self.best_val_loss = score, row["val_loss"]
            self.best_epoch, self.bad_epochs = int(row["epoch"]), 0
            return True
        self.bad_epochs += 1
        return False

    def epochs_before(self, phase: int) -> int:
        """Epochs that earlier phases ran (the epoch count continues over phases)."""
        return sum(1 for row in self.history if int(row.get(PHASE_COLUMN, 1)) < phase)

    def state_dict(self) -> dict[str, Any]:
        return {"best_val_loss": self.best_val_loss, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "best_score": self.best_score}

    def load_state_dict(self, state: dict[str, Any], history: Sequence[dict[str, Any]]) -> None:
        """Restore; a state without `best_score` (older checkpoints, a phase's FitResult) takes it from the
        history row of its best epoch."""
        self.history = [dict(row) for row in history]
        self.best_val_loss = float(state.get("best_val_loss", math.inf))
        self.best_epoch = int(state.get("best_epoch", 0))
        self.bad_epochs = int(state.get("bad_epochs", 0))
        best_rows = [row for row in self.history if int(row.get("epoch", 0)) == self.best_epoch]
        fallback = selection_score(best_rows[-1]) if best_rows else self.best_val_loss
        self.best_score = float(state.get("best_score", fallback))


@dataclass(frozen=True)
class EarlyStopping:
    """Stop after `patience` epochs without a val-loss improvement; 0 never stops."""

    patience: int = 0

    def should_stop(self, state: TrainingState) -> bool:
        return self.patience > 0 and state.bad_epochs >= self.patience


class Checkpointer:
    """Saves and restores the checkpoints and history of a run folder.

    classifier: the full model stored in every checkpoint (it needs `.preprocessing`).
    config, classes: the run's, stored with it.
    on_save: called after every save.
    tags: written into the `extra` of every checkpoint (e.g. that the data were synthetic).
    Only the main process writes; every process can restore.
    """

    def __init__(self, run: RunDir | str | Path, *, classifier: nn.Module, config: RunConfig,
                 classes: Sequence[str], on_save: Callable[[], None] | None = None,
                 tags: Mapping[str, Any] | None = None) -> None:
        if getattr(classifier, "preprocessing", None) is None:
            raise TypeError("Checkpointer: the classifier stored in checkpoints needs a .preprocessing record")
        self.run = run if isinstance(run, RunDir) else RunDir(run)
        self.classifier = classifier
        self.config = config
        self.classes = list(classes)
        self.on_save = on_save  # called after each save (e.g. to record the run's wall time so far)
        self.tags = dict(tags or {})

    def save(
        self,
        state: TrainingState,
        *,
        improved: bool,
        optimizer: torch.optim.Optimizer,
        phase: int,
        phase_start: int,
        scheduler: Any = None,
        scaler: Any = None,
    ) -> None:
        """After an epoch: best.pt if it improved, then last.pt (with everything to resume) and history.csv."""
        if not is_main_process():
            return
        row = state.history[-1]
        common = dict(model=self.classifier, config=self.config, classes=self.classes,
                      preprocessing=self.classifier.preprocessing, epoch=int(row["epoch"]), optimizer=optimizer,
                      metrics=row, history=state.history)
        if improved:
            save_checkpoint(self.run.best, **common,
                            extra={**self.tags, "phase": phase, "phase_start_epoch": phase_start})
        extra = {
            **self.tags,
            "phase": phase,
            "phase_start_epoch": phase_start,  # epochs of the phases before this one
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": rng_state(),
            **state.state_dict(),
        }
        save_checkpoint(self.run.last, **common, extra=extra)
        write_history_csv(state.history, self.run.history)
        if self.on_save is not None:
            self.on_save()

    def restore(
        self,
        state: TrainingState,
        *,
        optimizer: torch.optim.Optimizer,
        phase: int,
        device: torch.device,
        scheduler: Any = None,
        scaler: Any = None,
    ) -> int:
        """Load last.pt (which must be of `phase` and of these classes) into everything; returns its epoch."""
        path = self.run.last
        ckpt = load_checkpoint(path, map_location=device)
        if list(ckpt["classes"]) != self.classes:
            raise CxrError(f"cannot resume: {path} has classes {ckpt['classes']}, the data has {self.classes}")
        extra = ckpt.get("extra") or {}
        if int(extra.get("phase", 1)) != phase:
            raise CxrError(f"cannot resume phase {phase} from {path}, which is of phase {extra.get('phase', 1)}")
        self.classifier.load_state_dict(ckpt["model"])
        if ckpt.get("optimizer"):
            optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and extra.get("scheduler"):
            scheduler.load_state_dict(extra["scheduler"])
        if scaler is not None and extra.get("scaler"):
            scaler.load_state_dict(extra["scaler"])
        if extra.get("rng"):
            set_rng_state(extra["rng"])
        state.load_state_dict(extra, ckpt.get("history") or [])
        log.info("resuming from %s after epoch %d", path, int(ckpt["epoch"]))
        return int(ckpt["epoch"])
