"""`fit`: the epochs of one training phase around `train_one_epoch` and `evaluate_epoch`.

Read like torchvision's reference loop: build the optimizer and schedule, restore when resuming,
then per epoch make the data a function of (seed, epoch), train, evaluate on val, record the row
(Keras-semantics metrics, `history.csv`), checkpoint (`last.pt` every epoch, `best.pt` on a val-loss
improvement; multi-label: a val mean AUROC improvement) and check early stopping. Metrics come from predictions gathered over all ranks and
files are written by the main process only, so `module` may be a DistributedDataParallel wrapper.
A later phase (2 = fine-tuning) continues the epoch count, history and best val loss of the one before.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cxr.config import TrainConfig
from cxr.errors import CxrError
from cxr.rundir import METRIC_NAMES, PHASE_COLUMN
from cxr.runtime import Compute, make_grad_scaler, to_channels_last
from cxr.training.epoch import evaluate_epoch, gathered_metrics, train_one_epoch
from cxr.training.losses import EvalLoss
from cxr.training.optim import build_optimizer, build_scheduler, training_criterion
from cxr.training.state import Checkpointer, EarlyStopping, TrainingState, selection_metric

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    """What `fit` returns: the per-epoch history and where the checkpoints are."""

    history: list[dict[str, float]]
    best_epoch: int
    best_val_loss: float
    checkpoint_dir: Path
    stopped_early: bool = False
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def best_path(self) -> Path:
        return self.checkpoint_dir / "best.pt"

    @property
    def last_path(self) -> Path:
        return self.checkpoint_dir / "last.pt"


def set_epoch(loader: Any, epoch: int, seed: int) -> None:
    """Make an epoch's data a pure function of (seed, epoch), so a resumed run sees the same batches.

    `epoch` is 0-based (history row `epoch` minus 1), as DistributedSampler counts. Calls `set_epoch`
    on the dataset (augmentation RNG) and sampler (DistributedSampler) when they have it, and
    re-seeds the loader's shuffle generator from (seed, epoch).
    """
    for obj in (getattr(loader, "dataset", None), getattr(loader, "sampler", None),
                getattr(loader, "batch_sampler", None)):
        if obj is not None and hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)
    epoch_seed = int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0] >> 1)
    seen: set[int] = set()
    for gen in (getattr(loader, "generator", None), getattr(getattr(loader, "sampler", None), "generator", None)):
        if isinstance(gen, torch.Generator) and id(gen) not in seen:
            seen.add(id(gen))
            gen.manual_seed(epoch_seed)


def _row(epoch: int, lr: float, phase: int, train_m: dict[str, float], val_m: dict[str, float]) -> dict[str, float]:
    row: dict[str, float] = {"epoch": epoch, "lr": lr}
    row.update({f"train_{k}": float(train_m[k]) for k in METRIC_NAMES})
    row.update({f"val_{k}": float(val_m[k]) for k in METRIC_NAMES})
    row[PHASE_COLUMN] = phase
    if "mean_auroc" in val_m:  # multi-label: the selection metric (cxr.training.state.selection_score)
        row["val_mean_auroc"] = float(val_m["mean_auroc"])
    return row


def _log_epoch(row: dict[str, float], last_epoch: int, images_per_s: float, improved: bool, with_phase: bool) -> None:
    auroc = f" mean AUROC {row['val_mean_auroc']:.4f}" if "val_mean_auroc" in row else ""
    log.info(
        "epoch %d/%d%s: train loss %.4f acc %.4f | val loss %.4f acc %.4f f1 %.4f%s | %.0f img/s, %.1f s%s",
        row["epoch"], last_epoch, f" (phase {row[PHASE_COLUMN]})" if with_phase else "", row["train_loss"],
        row["train_accuracy"], row["val_loss"], row["val_accuracy"], row["val_macro_f1"], auroc, images_per_s,
        row["seconds"], " (best)" if improved else "",
    )


def fit(
    module: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable,
    *,
    tc: TrainConfig,
    compute: Compute,
    checkpointer: Checkpointer,
    criterion: nn.Module | None = None,
    phase: int = 1,
    prior: FitResult | None = None,
    resume: bool = False,
    on_epoch_end: Callable[[dict[str, float]], None] | None = None,
) -> FitResult:
    """Train `module` for `tc.epochs` epochs of phase `phase`; checkpoints and history.csv via `checkpointer`.

    module:       what is optimised and called on the loaders' inputs: the classifier itself, or its
                  head when the loaders yield cached features (N, C, 1, 1); either may be wrapped
                  (DistributedDataParallel, `FrozenNormStats`).
    criterion:    the training loss (default: cross-entropy with `tc.label_smoothing`; see
                  `cxr.training.optim.training_criterion` for class weights). Val loss is plain
                  cross-entropy, as Keras reports it.
    prior:        the FitResult of the phase before (its history and best val loss continue).
    resume:       continue from the run's last.pt (of this phase), so the result equals an
                  uninterrupted run.
    on_epoch_end: called with each history row after its checkpoint is written.

    Before epoch e the train loader gets `set_epoch(loader, e - 1, tc.seed)`.
    """
    module.to(compute.device)
    to_channels_last(module, compute.channels_last)
    criterion = criterion or training_criterion(tc, 0, compute.device)
    optimizer = build_optimizer(module, tc)
    steps_per_epoch = max(1, math.ceil(len(train_loader) / tc.grad_accum)) if hasattr(train_loader, "__len__") else 1
    scheduler = build_scheduler(optimizer, tc, steps_per_epoch)
    scaler = make_grad_scaler(compute.device, compute.precision)
    state = TrainingState()
    if prior is not None:
        state.load_state_dict({"best_val_loss": prior.best_val_loss, "best_epoch": prior.best_epoch}, prior.history)
    if resume:
        checkpointer.restore(state, optimizer=optimizer, scheduler=scheduler, scaler=scaler, phase=phase,
                             device=compute.device)
    runner = torch.compile(module) if tc.compile else module
    stopper = EarlyStopping(tc.early_stopping)
    offset = state.epochs_before(phase)
    last_epoch = offset + tc.epochs
    started = time.perf_counter()
    for epoch in range(len(state.history) + 1, last_epoch + 1):
        if stopper.should_stop(state):
            break
        t0 = time.perf_counter()
        set_epoch(train_loader, epoch - 1, tc.seed)
        lr = optimizer.param_groups[0]["lr"]
        tr = train_one_epoch(runner, train_loader, optimizer, criterion, compute, epoch=epoch, epochs=last_epoch,
                             scaler=scaler, grad_accum=tc.grad_accum, scheduler=scheduler)
        train_m, _, _ = gathered_metrics(tr["loss"], tr["y_true"], tr["probs"])
        val_loss, y_val, p_val = evaluate_epoch(runner, val_loader, EvalLoss(), compute,
                                                desc=f"epoch {epoch}/{last_epoch} val")
        if len(y_val) == 0:
            raise CxrError("the validation split is empty; it is needed for val metrics and best.pt")
        val_m, _, _ = gathered_metrics(val_loss, y_val, p_val)
        row = _row(epoch, lr, phase, train_m, val_m)
        row["seconds"] = time.perf_counter() - t0
        improved = state.record(row)
        checkpointer.save(state, improved=improved, optimizer=optimizer, phase=phase, phase_start=offset,
                          scheduler=scheduler, scaler=scaler)
        _log_epoch(row, last_epoch, tr["images_per_s"], improved, with_phase=phase > 1 or offset > 0)
        if on_epoch_end is not None:
            on_epoch_end(row)
    stopped = stopper.should_stop(state)
    if stopped:
        log.info("early stopping: no val-%s improvement for %d epochs (best epoch %d)", selection_metric(state.history),
                 state.bad_epochs, state.best_epoch)
    return FitResult(history=state.history, best_epoch=state.best_epoch, best_val_loss=state.best_val_loss,
                     checkpoint_dir=checkpointer.run.checkpoints, stopped_early=stopped,
                     seconds=time.perf_counter() - started, extra={"phase": phase})
