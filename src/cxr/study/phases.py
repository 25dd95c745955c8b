"""The training phases of a study and running one of them.

Phase 1 is the seed's: the head on a frozen base (on cached features when possible, else on images).
With `train.finetune_epochs > 0` phase 2 follows: the backbone unfrozen (`train.finetune_freeze`),
starting from phase 1's best weights, its BatchNorm statistics kept (`FrozenNormStats`). Under
torchrun each phase trains DistributedDataParallel on per-rank shares of the loaders.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import DataLoader

from cxr.checkpoint import load_checkpoint
from cxr.config import RunConfig
from cxr.errors import CxrError
from cxr.models.build import FrozenNormStats, apply_freeze, count_parameters
from cxr.rundir import RunDir
from cxr.runtime import Compute
from cxr.study.data import PreparedData
from cxr.study.inputs import decoded_cache_of, head_phase_inputs, image_loaders, to_device
from cxr.study.presets import finetune_config
from cxr.training.ddp import shard_loaders, wrap_ddp
from cxr.training.distributed import DistributedContext, barrier
from cxr.training.loop import FitResult, fit
from cxr.training.optim import training_criterion
from cxr.training.state import Checkpointer

log = logging.getLogger(__name__)


@dataclass
class TrainingRun:
    """What training left behind, for evaluation and the report."""

    cfg: RunConfig
    prepared: PreparedData
    model: nn.Module
    module: nn.Module  # what the last phase trained: the model, or its head on cached features
    loaders: dict[str, DataLoader]
    feature_cache: bool
    compute: Compute
    result: FitResult
    cache_dir: Path | None = None  # the feature (and decoded image) cache of the run
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


def phase_info(phase: int, cfg: RunConfig, model: nn.Module, cached: bool) -> dict[str, Any]:
    """One entry of metrics.json 'phases': what the phase trained, and how."""
    return {"phase": phase, "freeze": cfg.model.freeze, "epochs": cfg.train.epochs, "lr": cfg.train.lr,
            "feature_cache": cached, "trainable": count_parameters(model)["trainable"]}


def checkpoint_phase(run: RunDir) -> int:
    """The training phase of the run's last.pt (1 = head / seed recipe, 2 = fine-tuning)."""
    state = load_checkpoint(run.last)
    return int((state.get("extra") or {}).get("phase", 1))


def run_phase(
    module: nn.Module,
    loaders: dict[str, DataLoader],
    prepared: PreparedData,
    *,
    cfg: RunConfig,
    compute: Compute,
    checkpointer: Checkpointer,
    dist_ctx: DistributedContext | None,
    **fit_kwargs: Any,
) -> FitResult:
    """`fit` one phase (`cfg` holds its settings) on the train and val loaders; DDP under torchrun."""
    tc = cfg.train
    criterion = training_criterion(tc, len(prepared.classes), compute.device, prepared.labels("train"))
    runner = wrap_ddp(to_device(module, compute), dist_ctx)
    sharded = shard_loaders(loaders, batch_size=tc.batch_size, seed=tc.seed, ctx=dist_ctx)
    try:
        return fit(runner, sharded["train"], sharded["val"], tc=tc, compute=compute, checkpointer=checkpointer,
                   criterion=criterion, **fit_kwargs)
    finally:
        del runner
        if dist_ctx is not None:
            gc.collect()  # free the DDP reducer and its gradient hooks before another phase wraps these parameters


def train_phases(
    model: nn.Module,
    prepared: PreparedData,
    cfg: RunConfig,
    run: RunDir,
    *,
    compute: Compute,
    cache_dir: Path,
    resume: bool,
    dist_ctx: DistributedContext | None,
    on_save: Callable[[], None] | None = None,
    on_epoch_end: Callable[[dict[str, float]], None] | None = None,
    tags: dict[str, Any] | None = None,
) -> tuple[nn.Module, dict[str, DataLoader], bool, FitResult, list[dict[str, Any]]]:
    """Run phase 1 and, when configured, phase 2; returns (module, loaders, cached, result, phases).

    `on_epoch_end` gets each history row (the experiment tracker's `log_epoch`); `tags` go into the
    `extra` of every checkpoint written (see `Checkpointer`)."""
    resume_phase = checkpoint_phase(run) if resume else 0
    checkpointer = Checkpointer(run, classifier=model, config=cfg, classes=prepared.classes, on_save=on_save,
                                tags=tags)
    common: dict[str, Any] = dict(compute=compute, checkpointer=checkpointer, dist_ctx=dist_ctx)
    if on_epoch_end is not None:
        common["on_epoch_end"] = on_epoch_end
    result: FitResult | None = None
    module, loaders, cached = model, {}, False
    if resume_phase <= 1:
        module, loaders, cached = head_phase_inputs(model, prepared, cfg, compute, cache_dir)
        result = run_phase(module, loaders, prepared, cfg=cfg, resume=resume_phase == 1, **common)
    phases = [phase_info(1, cfg, model, cached)]  # model still has model.freeze applied
    if cfg.train.finetune_epochs > 0:
        ft = finetune_config(cfg)
        if resume_phase <= 1:  # fine-tuning starts from the head phase's best weights
            barrier()  # under torchrun: rank 0 has written best.pt
            model.load_state_dict(load_checkpoint(run.best, map_location=compute.device)["model"])
        apply_freeze(model, ft.model.freeze)
        phases.append(phase_info(2, ft, model, False))
        log.info("fine-tuning (freeze %s, %s trainable parameters) for %d epochs at lr %g",
                 ft.model.freeze, f"{phases[-1]['trainable']:,}", ft.train.epochs, ft.train.lr)
        module, cached = model, False
        loaders = image_loaders(prepared, model.preprocessing, cfg, decoded_cache=decoded_cache_of(compute, cache_dir),
                                progress=compute.progress)
        result = run_phase(FrozenNormStats(model), loaders, prepared, cfg=ft, resume=resume_phase == 2, phase=2,
                           prior=result, **common)
    if result is None:
        raise CxrError(f"{run.last} is of the fine-tuning phase, but train.finetune_epochs is 0; "
                       "resume with the run's config")
    return module, loaders, cached, result, phases
