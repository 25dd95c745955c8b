"""The training loop: one epoch of training, one pass of evaluation, and `fit` around them.

Shaped like torchvision's reference scripts: small functions that take a module, a loader, an
optimizer and a loss, and work for any module and any loader yielding `(x, y)` — the full
classifier on images, or its head on cached backbone features shaped (N, C, 1, 1).

`fit` adds what a study needs: Keras-semantics metrics per epoch (`history.csv`), atomic
checkpoints (`last.pt` every epoch, `best.pt` on a val-loss improvement), exact resume, early
stopping, class weights, lr schedules, label smoothing, gradient accumulation and discriminative
learning rates. Checkpoints always store the full classifier, whatever module is being trained.
Files are written by the main process only and metrics come from predictions gathered over all
ranks, so `module` may be a DistributedDataParallel wrapper (`cxr.train.distributed.wrap_ddp`); the
training loss is then `GlobalBatchLoss`, so N processes compute what one process would.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from cxr.checkpoint import load_checkpoint, save_checkpoint
from cxr.config import CLASS_WEIGHTS, OPTIMIZERS, SCHEDULES, RunConfig, TrainConfig
from cxr.errors import CxrError
from cxr.evaluate import epoch_metrics
from cxr.runtime import (
    autocast,
    batch_to,
    gather_arrays,
    is_main_process,
    make_grad_scaler,
    rng_state,
    set_rng_state,
    to_channels_last,
)
from cxr.train.distributed import train_loss, unwrap

log = logging.getLogger(__name__)

HISTORY_COLUMNS = (
    "epoch", "lr",
    "train_loss", "train_accuracy", "train_precision", "train_recall", "train_macro_f1",
    "val_loss", "val_accuracy", "val_precision", "val_recall", "val_macro_f1",
    "seconds",
)
PHASE_COLUMN = "phase"  # written after HISTORY_COLUMNS: 1 = the head (seed recipe), 2 = fine-tuning
METRIC_NAMES = ("loss", "accuracy", "precision", "recall", "macro_f1")
SGD_MOMENTUM = 0.9
PROGRESS_EVERY = 5  # batches between progress-bar updates (each reads the running loss back from the device)


# --------------------------------------------------------------------------------------------------
# building blocks: optimizer, schedule, loss


def param_groups(module: nn.Module, lr: float, backbone_lr_ratio: float) -> list[dict[str, Any]]:
    """Trainable parameters as optimizer groups: the head at `lr`, the backbone at `lr * ratio`.

    A module without a `.backbone` (e.g. a head trained on cached features) is one group at `lr`.
    The head group comes first, so `param_groups[0]["lr"]` is the head's learning rate.
    """
    module = unwrap(module)  # DistributedDataParallel, torch.compile and other wrappers
    backbone = getattr(module, "backbone", None)
    backbone_ids = {id(p) for p in backbone.parameters()} if isinstance(backbone, nn.Module) else set()
    head = [p for p in module.parameters() if p.requires_grad and id(p) not in backbone_ids]
    body = [p for p in backbone.parameters() if p.requires_grad] if backbone_ids else []
    groups = [{"params": head, "lr": lr, "name": "head"}] if head else []
    if body:
        groups.append({"params": body, "lr": lr * backbone_lr_ratio, "name": "backbone"})
    if not groups:
        raise CxrError("the model has no trainable parameters; check model.freeze")
    return groups


def build_optimizer(module: nn.Module, tc: TrainConfig) -> torch.optim.Optimizer:
    """Adam (L2 weight decay), AdamW (decoupled) or SGD (momentum 0.9) over `param_groups`."""
    groups = param_groups(module, tc.lr, tc.backbone_lr_ratio)
    name = tc.optimizer.lower()
    # One fused kernel per step instead of a chain of foreach ops: 1.8x faster head training on 2 CPU
    # cores (bench/README.md); it needs every parameter to be a float tensor on the CPU or a GPU.
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for g in groups for p in g["params"])
    if name == "adam":
        return torch.optim.Adam(groups, lr=tc.lr, weight_decay=tc.weight_decay, fused=fused)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=tc.lr, weight_decay=tc.weight_decay, fused=fused)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=tc.lr, momentum=SGD_MOMENTUM, weight_decay=tc.weight_decay)
    raise CxrError(f"unknown optimizer {tc.optimizer!r}; allowed: {', '.join(OPTIMIZERS)}")


def lr_factor(step: int, tc: TrainConfig, steps_per_epoch: int) -> float:
    """Multiplier of the base lr at optimizer step `step` (0-based) for the configured schedule."""
    if tc.schedule == "none":
        return 1.0
    if tc.schedule == "step":
        return tc.step_gamma ** ((step // steps_per_epoch) // max(1, tc.step_epochs))
    if tc.schedule == "cosine":
        warmup = round(tc.warmup_epochs * steps_per_epoch)
        if step < warmup:
            return (step + 1) / warmup
        total = max(1, tc.epochs * steps_per_epoch - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / total)))
    raise CxrError(f"unknown schedule {tc.schedule!r}; allowed: {', '.join(SCHEDULES)}")


def build_scheduler(
    optimizer: torch.optim.Optimizer, tc: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR | None:
    """A per-optimizer-step schedule (None for 'none'); step and cosine are both expressed per step."""
    lr_factor(0, tc, steps_per_epoch)  # validates the schedule name
    if tc.schedule == "none":
        return None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, tc, steps_per_epoch))


def class_weights(mode: str, labels: Sequence[int] | None, num_classes: int) -> torch.Tensor | None:
    """None for 'none'; sklearn's compute_class_weight('balanced') for 'balanced'.

    A class absent from `labels` gets weight 1 (sklearn refuses absent classes).
    """
    if mode == "none":
        return None
    if mode != "balanced":
        raise CxrError(f"unknown train.class_weights {mode!r}; allowed: {', '.join(CLASS_WEIGHTS)}")
    if labels is None or len(labels) == 0:
        raise CxrError("class_weights='balanced' needs the training labels")
    from sklearn.utils.class_weight import compute_class_weight

    y = np.asarray(labels, dtype=np.int64)
    present = np.unique(y)
    weights = np.ones(num_classes, dtype=np.float64)
    weights[present] = compute_class_weight("balanced", classes=present, y=y)
    return torch.tensor(weights, dtype=torch.float32)


# --------------------------------------------------------------------------------------------------
# one epoch


def _progress(loader: Iterable, desc: str, enabled: bool) -> tqdm:
    # disable=None: bar only on a terminal; never on non-main ranks.
    return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True,
                disable=None if enabled and is_main_process() else True)


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    *,
    device: torch.device,
    precision: str,
    scaler: torch.amp.GradScaler | None = None,
    grad_accum: int = 1,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    epoch: int,
    epochs: int | None = None,
    channels_last: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train for one pass over `loader`; returns loss, y_true, probs (this rank's), n, seconds, images_per_s.

    The optimizer steps every `grad_accum` batches (and after the last one); the scheduler, if any,
    steps with the optimizer. Predictions are the training-mode softmax outputs, as Keras reports them.
    """
    if grad_accum < 1:
        raise CxrError(f"train.grad_accum must be >= 1, got {grad_accum}")
    model.train()
    optimizer.zero_grad(set_to_none=True)
    total_batches = len(loader) if hasattr(loader, "__len__") else None
    # Sums stay on the device and are read back only for the progress bar, so a GPU never waits per step.
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    seen = 0
    labels: list[torch.Tensor] = []
    probs: list[torch.Tensor] = []
    start = time.perf_counter()
    label = f"epoch {epoch}/{epochs} train" if epochs else f"epoch {epoch} train"
    bar = _progress(loader, label, progress)
    for i, (x, y) in enumerate(bar):
        x = batch_to(x, device, channels_last)
        y = y.to(device, non_blocking=True)
        stepping = (i + 1) % grad_accum == 0 or (total_batches is not None and i + 1 == total_batches)
        # DDP: all-reduce the gradients only on the micro-batch that steps
        sync = model.no_sync() if not stepping and hasattr(model, "no_sync") else contextlib.nullcontext()
        with sync:
            with autocast(device, precision):
                logits = model(x)
            loss = loss_fn(logits.float(), y)
            scaled = loss / grad_accum
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        if stepping:
            _optimizer_step(optimizer, scaler, scheduler)
        n = y.shape[0]
        loss_sum += loss.detach().double() * n
        seen += n
        labels.append(y.detach())
        probs.append(torch.softmax(logits.detach().float(), dim=1))
        if not bar.disable and i % PROGRESS_EVERY == 0:
            elapsed = time.perf_counter() - start
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", img_s=f"{seen / max(elapsed, 1e-9):.1f}",
                            refresh=False)
    if total_batches is None and seen and any(p.grad is not None for g in optimizer.param_groups for p in g["params"]):
        _optimizer_step(optimizer, scaler, scheduler)  # flush a partial accumulation of an unsized loader
    if seen == 0:
        raise CxrError("the training split is empty: no batch came out of the training loader")
    mean_loss = loss_sum.item() / seen  # waits for the device, so `seconds` covers all the work
    seconds = time.perf_counter() - start
    return {
        "loss": mean_loss,
        "y_true": torch.cat(labels).cpu().numpy(),
        "probs": torch.cat(probs).cpu().numpy(),
        "n": seen,
        "seconds": seconds,
        "images_per_s": seen / max(seconds, 1e-9),
    }


def _optimizer_step(
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
) -> None:
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if scheduler is not None:
        scheduler.step()


@torch.no_grad()
def evaluate_epoch(
    model: nn.Module,
    loader: Iterable,
    loss_fn: nn.Module,
    *,
    device: torch.device,
    precision: str,
    channels_last: bool = False,
    tta: bool = False,
    progress: bool = True,
    desc: str = "evaluate",
) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean loss, true labels and softmax probabilities over `loader` (this rank's part), in eval mode.

    With `tta` the probabilities are averaged over `cxr.predict.tta_views` of each image batch
    (flip and small shifts; feature batches (N, C, 1, 1) are left as they are).
    """
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    seen = 0
    labels: list[torch.Tensor] = []
    probs: list[torch.Tensor] = []
    for x, y in _progress(loader, desc, progress):
        x = batch_to(x, device, channels_last)
        y = y.to(device, non_blocking=True)
        if tta and x.dim() == 4 and min(x.shape[-2:]) > 1:
            from cxr.predict import tta_views  # the same views `cxr predict --tta` averages

            views = tta_views(x)
        else:
            views = [x]
        p: torch.Tensor | None = None
        for view in views:
            with autocast(device, precision):
                logits = model(batch_to(view, device, channels_last))
            soft = torch.softmax(logits.float(), dim=1)
            p = soft if p is None else p + soft
        p = p / len(views)
        loss = loss_fn(torch.log(p.clamp_min(1e-12)), y) if tta else loss_fn(logits.float(), y)
        n = y.shape[0]
        loss_sum += loss.double() * n
        seen += n
        labels.append(y)
        probs.append(p)
    if seen == 0:
        return float("nan"), np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
    return loss_sum.item() / seen, torch.cat(labels).cpu().numpy(), torch.cat(probs).cpu().numpy()


def gathered_metrics(loss: float, y_true: np.ndarray, probs: np.ndarray) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Metrics from predictions gathered over all ranks (identity in one process); returns them and the arrays."""
    n = np.asarray([len(y_true)], dtype=np.float64)
    loss_sum = np.asarray([loss * len(y_true)], dtype=np.float64)
    y_all, p_all, n_all, s_all = gather_arrays(y_true, probs, n, loss_sum)
    total_loss = float(s_all.sum() / max(n_all.sum(), 1.0))
    return epoch_metrics(y_all, p_all, total_loss), y_all, p_all


# --------------------------------------------------------------------------------------------------
# fit


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


def _set_epoch(loader: Any, epoch: int, seed: int) -> None:
    """Make an epoch's data a pure function of (seed, epoch), so a resumed run sees the same batches.

    `epoch` is the 0-based epoch index (history row `epoch` minus 1), as DistributedSampler counts.
    Calls `set_epoch` on the dataset (augmentation RNG) and sampler (DistributedSampler) when they have
    it, and re-seeds the loader's shuffle generator from (seed, epoch).
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


def write_history_csv(history: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write the per-epoch rows (HISTORY_COLUMNS, then PHASE_COLUMN) atomically: temp file then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            columns = (*HISTORY_COLUMNS, PHASE_COLUMN)
            writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            for row in history:
                writer.writerow({k: row.get(k, 1 if k == PHASE_COLUMN else None) for k in columns})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_history_csv(path: str | Path) -> list[dict[str, float]]:
    """The rows of a history.csv as floats (epoch and phase as int)."""
    with open(path, newline="") as fh:
        return [
            {k: (int(v) if k in ("epoch", PHASE_COLUMN) else float(v)) for k, v in row.items()}
            for row in csv.DictReader(fh)
        ]


def fit(
    module: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable,
    *,
    cfg: RunConfig,
    classes: Sequence[str],
    out_dir: str | Path,
    device: torch.device,
    precision: str,
    classifier: nn.Module | None = None,
    train_labels: Sequence[int] | None = None,
    resume: bool = False,
    progress: bool = True,
    on_epoch_end: Callable[[dict[str, float]], None] | None = None,
    train_cfg: TrainConfig | None = None,
    phase: int = 1,
    prior: FitResult | None = None,
) -> FitResult:
    """Train `module` for `train_cfg.epochs` epochs; write history.csv and checkpoints under `out_dir`.

    module:       what is optimised and called on the loaders' inputs — the classifier itself, or
                  `classifier.head` when the loaders yield cached features (N, C, 1, 1); either may be
                  wrapped (DistributedDataParallel, `FrozenNormStats`), already on `device`.
    classifier:   the full `Classifier` stored in every checkpoint (default: `module`); it must have
                  `.preprocessing`.
    cfg:          the run's config, stored in the checkpoints.
    train_cfg:    the settings of this phase (default `cfg.train`); a fine-tuning phase passes its own
                  epochs and lr.
    phase, prior: a later phase (2 = fine-tuning) continues the epoch count, history and best val
                  loss of `prior`, the FitResult of the phase before; rows carry their `phase`.
    train_labels: class indices of the training set, needed for class_weights='balanced'.
    resume:       continue from `out_dir/checkpoints/last.pt` (which must be of this phase): model,
                  optimizer, scheduler, scaler, RNG state, history and early-stopping state, so the
                  result equals an uninterrupted run.
    on_epoch_end: called with each history row after its checkpoint is written (tests, callbacks).

    History rows count epochs from 1 over all phases; before epoch e the train loader's dataset and
    sampler get `set_epoch(e - 1)` when they have that method, and its shuffle generator is re-seeded
    from (train_cfg.seed, e - 1).
    """
    tc = train_cfg or cfg.train
    classifier = module if classifier is None else classifier
    preprocessing = getattr(classifier, "preprocessing", None)
    if preprocessing is None:
        raise TypeError("fit(): the classifier stored in checkpoints needs a .preprocessing record")
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    num_classes = len(classes)
    main = is_main_process()

    module.to(device)
    to_channels_last(module, tc.channels_last)
    weight = class_weights(tc.class_weights, train_labels, num_classes)
    # nn.CrossEntropyLoss in one process; under DDP normalised over the whole global batch
    train_loss_fn = train_loss(weight.to(device) if weight is not None else None, tc.label_smoothing)
    val_loss_fn = nn.CrossEntropyLoss()  # Keras: class weights and smoothing only shape the training loss
    optimizer = build_optimizer(module, tc)
    steps_per_epoch = max(1, math.ceil(len(train_loader) / tc.grad_accum)) if hasattr(train_loader, "__len__") else 1
    scheduler = build_scheduler(optimizer, tc, steps_per_epoch)
    scaler = make_grad_scaler(device, precision)
    runner = torch.compile(module) if tc.compile else module

    history: list[dict[str, float]] = [dict(row) for row in prior.history] if prior else []
    best_val = prior.best_val_loss if prior else math.inf
    best_epoch = prior.best_epoch if prior else 0
    bad_epochs = 0
    if resume:
        ckpt = load_checkpoint(ckpt_dir / "last.pt", map_location=device)
        if list(ckpt["classes"]) != list(classes):
            raise CxrError(
                f"cannot resume: {ckpt_dir / 'last.pt'} has classes {ckpt['classes']}, the data has {list(classes)}"
            )
        extra = ckpt.get("extra") or {}
        if int(extra.get("phase", 1)) != phase:
            raise CxrError(f"cannot resume phase {phase} from {ckpt_dir / 'last.pt'}, which is of phase {extra.get('phase', 1)}")
        classifier.load_state_dict(ckpt["model"])
        if ckpt.get("optimizer"):
            optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and extra.get("scheduler"):
            scheduler.load_state_dict(extra["scheduler"])
        if scaler is not None and extra.get("scaler"):
            scaler.load_state_dict(extra["scaler"])
        if extra.get("rng"):
            set_rng_state(extra["rng"])
        history = [dict(row) for row in ckpt.get("history") or []]
        best_val = float(extra.get("best_val_loss", math.inf))
        best_epoch = int(extra.get("best_epoch", 0))
        bad_epochs = int(extra.get("bad_epochs", 0))
        log.info("resuming from %s after epoch %d", ckpt_dir / "last.pt", int(ckpt["epoch"]))
    offset = sum(1 for row in history if int(row.get(PHASE_COLUMN, 1)) < phase)  # epochs of earlier phases
    done = len(history) - offset
    last_epoch = offset + tc.epochs

    started = time.perf_counter()
    stopped_early = bool(tc.early_stopping and bad_epochs >= tc.early_stopping)
    for epoch in range(offset + done + 1, last_epoch + 1):
        if stopped_early:
            break
        t0 = time.perf_counter()
        _set_epoch(train_loader, epoch - 1, tc.seed)  # 0-based: the first epoch is set_epoch(0)
        lr = optimizer.param_groups[0]["lr"]
        tr = train_one_epoch(
            runner, train_loader, optimizer, train_loss_fn, device=device, precision=precision, scaler=scaler,
            grad_accum=tc.grad_accum, scheduler=scheduler, epoch=epoch, epochs=last_epoch,
            channels_last=tc.channels_last, progress=progress,
        )
        train_m, _, _ = gathered_metrics(tr["loss"], tr["y_true"], tr["probs"])
        val_loss, y_val, p_val = evaluate_epoch(
            runner, val_loader, val_loss_fn, device=device, precision=precision,
            channels_last=tc.channels_last, progress=progress, desc=f"epoch {epoch}/{last_epoch} val",
        )
        if len(y_val) == 0:
            raise CxrError("the validation split is empty; it is needed for val metrics and best.pt")
        val_m, _, _ = gathered_metrics(val_loss, y_val, p_val)
        row: dict[str, float] = {"epoch": epoch, "lr": lr}
        row.update({f"train_{k}": float(train_m[k]) for k in METRIC_NAMES})
        row.update({f"val_{k}": float(val_m[k]) for k in METRIC_NAMES})
        row["seconds"] = time.perf_counter() - t0
        row[PHASE_COLUMN] = phase
        history.append(row)

        improved = row["val_loss"] < best_val
        if improved:
            best_val, best_epoch, bad_epochs = row["val_loss"], epoch, 0
        else:
            bad_epochs += 1
        if main:
            common = dict(model=classifier, config=cfg, classes=list(classes), preprocessing=preprocessing,
                          epoch=epoch, optimizer=optimizer, metrics=row, history=history)
            if improved:
                save_checkpoint(ckpt_dir / "best.pt", **common, extra={"phase": phase, "phase_start_epoch": offset})
            extra = {
                "phase": phase,
                "phase_start_epoch": offset,  # epochs of the phases before this one
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": rng_state(),
                "best_val_loss": best_val,
                "best_epoch": best_epoch,
                "bad_epochs": bad_epochs,
            }
            save_checkpoint(ckpt_dir / "last.pt", **common, extra=extra)
            write_history_csv(history, out_dir / "history.csv")
        log.info(
            "epoch %d/%d%s: train loss %.4f acc %.4f | val loss %.4f acc %.4f f1 %.4f | %.0f img/s, %.1f s%s",
            epoch, last_epoch, f" (phase {phase})" if phase > 1 or offset else "", row["train_loss"],
            row["train_accuracy"], row["val_loss"], row["val_accuracy"], row["val_macro_f1"], tr["images_per_s"],
            row["seconds"], " (best)" if improved else "",
        )
        if on_epoch_end is not None:
            on_epoch_end(row)
        if tc.early_stopping and bad_epochs >= tc.early_stopping:
            stopped_early = True
            log.info("early stopping: no val-loss improvement for %d epochs (best epoch %d)", bad_epochs, best_epoch)
    return FitResult(
        history=history,
        best_epoch=best_epoch,
        best_val_loss=best_val,
        checkpoint_dir=ckpt_dir,
        stopped_early=stopped_early,
        seconds=time.perf_counter() - started,
        extra={"phase": phase},
    )
