"""One pass of training and one pass of evaluation, for any module and any loader yielding `(x, y)`.

Shaped like torchvision's reference scripts: the full classifier on images, or its head on cached
backbone features shaped (N, C, 1, 1), go through the same two functions. Running sums stay on the
device and are read back only for progress, so a GPU never waits per step.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from cxr.data.dataset import drop_skipped
from cxr.errors import CxrError
from cxr.metrics import epoch_metrics
from cxr.metrics.multilabel import multilabel_epoch_metrics
from cxr.progress import Progress
from cxr.runtime import Compute, gather_arrays
from cxr.transforms import output_probs, tta_probs

PROGRESS_EVERY = 5  # batches between progress updates of the running loss (each reads it back from the device)


def _images(loader: Iterable) -> int | None:
    dataset = getattr(loader, "dataset", None)
    sampler = getattr(loader, "sampler", None)
    for source in (sampler, dataset):  # a rank's sampler knows its share of the dataset
        if source is not None and hasattr(source, "__len__"):
            return len(source)
    return None


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


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    compute: Compute,
    *,
    epoch: int,
    epochs: int | None = None,
    scaler: torch.amp.GradScaler | None = None,
    grad_accum: int = 1,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
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
    loss_sum = torch.zeros((), dtype=torch.float64, device=compute.device)
    seen = 0
    labels: list[torch.Tensor] = []
    probs: list[torch.Tensor] = []
    start = time.perf_counter()
    desc = f"epoch {epoch}/{epochs} train" if epochs else f"epoch {epoch} train"
    with Progress(_images(loader), desc, enabled=compute.progress) as bar:
        for i, (x, y) in enumerate(loader):
            stepping = (i + 1) % grad_accum == 0 or (total_batches is not None and i + 1 == total_batches)
            x, y = drop_skipped(x, y)
            if not len(y):  # every image of the batch was unreadable
                if stepping:
                    _optimizer_step(optimizer, scaler, scheduler)
                continue
            x, y = compute.to(x), y.to(compute.device, non_blocking=True)
            # DDP: all-reduce the gradients only on the micro-batch that steps
            sync = model.no_sync() if not stepping and hasattr(model, "no_sync") else contextlib.nullcontext()
            with sync:
                with compute.autocast():
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
            probs.append(output_probs(logits.detach(), multilabel=y.dim() == 2))
            if bar.drawing and i % PROGRESS_EVERY == 0:
                bar.postfix(loss=f"{loss_sum.item() / seen:.4f}")
            bar.update(n)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if total_batches is None and seen and any(p.grad is not None for p in params):
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


@torch.no_grad()
def evaluate_epoch(
    model: nn.Module,
    loader: Iterable,
    loss_fn: nn.Module,
    compute: Compute,
    *,
    tta: bool = False,
    desc: str = "evaluate",
) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean loss, true labels and softmax probabilities over `loader` (this rank's part), in eval mode.

    With `tta` the probabilities are averaged over `cxr.transforms.tta_views` of each image batch
    (feature batches (N, C, 1, 1) are left as they are) and the loss is their negative log-likelihood.
    """
    model.eval()

    def logits_of(view: torch.Tensor) -> torch.Tensor:
        with compute.autocast():
            return model(compute.to(view))

    loss_sum = torch.zeros((), dtype=torch.float64, device=compute.device)
    seen = 0
    labels: list[torch.Tensor] = []
    probs: list[torch.Tensor] = []
    with Progress(_images(loader), desc, enabled=compute.progress) as bar:
        for x, y in loader:
            x, y = drop_skipped(x, y)
            if not len(y):
                continue
            x, y = compute.to(x), y.to(compute.device, non_blocking=True)
            multilabel = y.dim() == 2
            if tta:
                p = tta_probs(logits_of, x, multilabel)
                # the loss of the averaged probabilities: log-probabilities act as logits of softmax, and
                # log-odds (clamped away from 0 and 1) as logits of the sigmoids
                q = p.clamp(1e-6, 1 - 1e-6)
                loss = loss_fn(torch.log(q / (1 - q)) if multilabel else torch.log(p.clamp_min(1e-12)), y)
            else:
                logits = logits_of(x).float()
                p = output_probs(logits, multilabel)
                loss = loss_fn(logits, y)
            n = y.shape[0]
            loss_sum += loss.double() * n
            seen += n
            labels.append(y)
            probs.append(p)
            bar.update(n)
    if seen == 0:
        return float("nan"), np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
    return loss_sum.item() / seen, torch.cat(labels).cpu().numpy(), torch.cat(probs).cpu().numpy()


def gathered_metrics(loss: float, y_true: np.ndarray, probs: np.ndarray) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Metrics from predictions gathered over all ranks (identity in one process); returns them and the arrays.

    Multi-label targets ((N, C), NaN = unlabelled) get the multi-label row (`multilabel_epoch_metrics`).
    """
    n = np.asarray([len(y_true)], dtype=np.float64)
    loss_sum = np.asarray([loss * len(y_true)], dtype=np.float64)
    y_all, p_all, n_all, s_all = gather_arrays(y_true, probs, n, loss_sum)
    total_loss = float(s_all.sum() / max(n_all.sum(), 1.0))
    if y_all.ndim == 2:
        labelled = ~np.isnan(y_all)
        return multilabel_epoch_metrics(np.nan_to_num(y_all), labelled, p_all, total_loss), y_all, p_all
    return epoch_metrics(y_all, p_all, total_loss), y_all, p_all
