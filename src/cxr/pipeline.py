"""One study, end to end: data folder -> split -> figures -> training -> test evaluation -> report.

`run_study` is what `cxr run` and `cxr demo` call; `train` stops after training; `evaluate_checkpoint`
scores a saved model on a data folder. Everything a study produces lands in one run directory
(see DESIGN.md): config.yaml, split.csv, checkpoints/{last,best}.pt, history.csv, metrics.json,
predictions.csv, figures/*.png, aug_images/*.png, report.md, report.html and log.txt.

With `model.freeze=base` and `train.feature_cache` the head is trained on cached backbone features
(`cxr.train.features`, when installed); otherwise every epoch runs the whole network on images.
With `train.finetune_epochs > 0` a fine-tuning phase follows (see `finetune_config`, `FrozenNormStats`).

Under torchrun (WORLD_SIZE > 1) training runs DistributedDataParallel (`cxr.train.distributed`):
rank 0 audits and splits the data and builds the feature cache, every rank trains its share of each
global batch, and only rank 0 writes files, evaluates the test split and writes the report.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import gc
import importlib.util
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from cxr import __version__
from cxr.checkpoint import config_of, load_checkpoint, model_from_checkpoint
from cxr.config import RunConfig, save_config
from cxr.data.discover import Discovery, discover
from cxr.errors import CxrError
from cxr.logs import RESULT
from cxr.rundir import SPLITS, RunDir, SplitRow, read_split_csv, write_split_csv
from cxr.runtime import (
    describe,
    is_main_process,
    main_process_first,
    resolve_device,
    resolve_precision,
    seed_everything,
    set_threads,
)
from cxr.train.distributed import (
    DistributedContext,
    barrier,
    distributed_session,
    run_on_main,
    shard_loaders,
    wrap_ddp,
)
from cxr.train.loop import FitResult, evaluate_epoch, fit, read_history_csv
from cxr.transforms import Preprocessing, SeedAugment

log = logging.getLogger(__name__)

FEATURES_MODULE = "cxr.train.features"
RUN_LOGGER = "cxr"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DEMO_DATA_SEED = 0  # seed of the synthetic demo images
DEMO_IMAGES_PER_CLASS = 60
DEMO_IMAGE_SIZE = 160  # side of the generated PNGs (the network sees data.image_size)


# --------------------------------------------------------------------------------------------------
# configuration helpers


def demo_config() -> RunConfig:
    """The settings of `cxr demo`: the seed recipe's shape, sized for a few minutes on 2 CPU cores.

    EfficientNet-Lite0 with its ImageNet weights (frozen base, as in the seed) at 128 px; the feature
    cache makes the head's epochs nearly free when it is available.
    """
    cfg = RunConfig(name="demo")
    cfg.data.image_size = 128
    cfg.model.backbone = "efficientnet_lite0"
    cfg.model.weights = "lite0-imagenet"
    cfg.train.epochs = 8
    cfg.train.lr = 1e-3
    cfg.eval.aug_samples = 12
    cfg.eval.grid_per_class = 4
    return cfg


def default_cache_dir() -> Path:
    """Where feature caches live: $CXR_CACHE_DIR, else $XDG_CACHE_HOME/cxr/features (~/.cache/...)."""
    explicit = os.environ.get("CXR_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cxr" / "features"


# --------------------------------------------------------------------------------------------------
# logging to the run directory


@contextlib.contextmanager
def run_log(out_dir: Path, append: bool = False) -> Iterator[Path]:
    """Copy every `cxr` log record of INFO and above to out_dir/log.txt for the duration of the block.

    The console keeps its own level (-q still means quiet): only the file handler sees INFO.
    """
    logger = logging.getLogger(RUN_LOGGER)
    path = out_dir / "log.txt"
    if not is_main_process():
        yield path
        return
    old_level = logger.level
    effective = logger.getEffectiveLevel()
    raised: list[tuple[logging.Handler, int]] = []
    if effective > logging.INFO:
        for handler in logger.handlers:
            if handler.level < effective:
                raised.append((handler, handler.level))
                handler.setLevel(effective)
        logger.setLevel(logging.INFO)
    file_handler = logging.FileHandler(path, mode="a" if append else "w", encoding="utf-8")
    file_handler.setLevel(logging.INFO)
    file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logger.addHandler(file_handler)
    try:
        yield path
    finally:
        logger.removeHandler(file_handler)
        file_handler.close()
        logger.setLevel(old_level)
        for handler, level in raised:
            handler.setLevel(level)


# --------------------------------------------------------------------------------------------------
# data: discovery, split, figures


@dataclass
class PreparedData:
    """The data side of a run: where the images are, their classes, and the split rows."""

    root: Path
    classes: list[str]
    rows: list[SplitRow]
    discovery: Discovery | None = None
    split_report: dict[str, Any] | None = None

    def split(self, name: str) -> list[SplitRow]:
        return [r for r in self.rows if r.split == name]

    def counts(self) -> dict[str, dict[str, int]]:
        """split -> class -> images."""
        out = {s: dict.fromkeys(self.classes, 0) for s in SPLITS}
        for row in self.rows:
            out[row.split][row.label] += 1
        return out

    def labels(self, split: str) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[r.label] for r in self.split(split)], dtype=np.int64)


def prepare_data(
    cfg: RunConfig,
    data: Path,
    out_dir: Path,
    *,
    resume: bool = False,
    split_csv: Path | None = None,
    progress: bool = True,
) -> PreparedData:
    """Discover the images and make (or reuse) the split; writes split.csv (and audit.json) to out_dir.

    A given `split_csv` is used as is; on resume an existing out_dir/split.csv is reused, so the
    resumed run trains on exactly the same images.
    """
    from cxr.data.audit import audit
    from cxr.data.split import make_split

    found = discover(data)
    classes = list(found.classes)
    target = out_dir / "split.csv"
    report: dict[str, Any] | None = None
    if split_csv is not None:
        rows = read_split_csv(split_csv)
        log.info("using the split in %s (%d images)", split_csv, len(rows))
    elif resume and target.is_file():
        rows = read_split_csv(target)
        log.info("resume: reusing %s (%d images)", target, len(rows))
    else:
        audited = audit(found, near_threshold=cfg.data.near_duplicate_threshold, progress=progress)
        for warning in audited.warnings():
            log.warning("data: %s", warning)
        if is_main_process():
            _write_json(out_dir / "audit.json", audited.to_json())
        rows, report = make_split(
            found, ratios=tuple(cfg.data.ratios), seed=cfg.data.split_seed,
            near_threshold=cfg.data.near_duplicate_threshold, progress=progress, audit_report=audited,
        )
    unknown = sorted({r.label for r in rows} - set(classes))
    if unknown:
        raise CxrError(f"split labels {unknown} are not classes of the data at {data}: {classes}")
    if is_main_process() and (split_csv is None or Path(split_csv).resolve() != target.resolve()):
        write_split_csv(rows, target)
    prepared = PreparedData(root=found.root, classes=classes, rows=rows, discovery=found, split_report=report)
    for name in ("train", "val"):
        if not prepared.split(name):
            raise CxrError(
                f"the {name} split is empty ({len(rows)} images in all); add images or change data.ratios "
                f"(now {list(cfg.data.ratios)})"
            )
    return prepared


def write_dataset_figures(prepared: PreparedData, cfg: RunConfig, out_dir: Path) -> list[Path]:
    """figures/bar_chart.png, pie_chart.png (images per class, all splits) and dataset_images.png."""
    from cxr.report import dataset_figures

    totals = {c: sum(per[c] for per in prepared.counts().values()) for c in prepared.classes}
    return dataset_figures.write_dataset_figures(prepared.root, prepared.rows, out_dir / "figures", counts=totals,
                                                 per_class=cfg.eval.grid_per_class, seed=cfg.train.seed)


def write_augmented_samples(prepared: PreparedData, cfg: RunConfig, out_dir: Path) -> list[Path]:
    """aug_images/aug_*.png: training images as the training augmentation shows them (the seed's folder).

    The same writer as `cxr data augment-samples`; earlier files are replaced, so a resumed run
    does not accumulate them.
    """
    from cxr.data.samples import write_augmented_samples as write_samples

    aug_dir = out_dir / "aug_images"
    for old in aug_dir.glob("aug_*.png"):
        old.unlink()
    train_rows = sorted(prepared.split("train"), key=lambda r: r.path)
    return write_samples(prepared.root, train_rows, cfg.eval.aug_samples, aug_dir, cfg.augment,
                         size=cfg.data.image_size, seed=cfg.train.seed)


# --------------------------------------------------------------------------------------------------
# model and loaders


def build_classifier(cfg: RunConfig, num_classes: int, *, load_weights: bool = True) -> nn.Module:
    """The classifier of `cfg`, its preprocessing sized to `data.image_size` (the record fixes the mode)."""
    from cxr.models.build import build_model

    model = build_model(cfg.model, num_classes, load_weights=load_weights)
    if model.preprocessing.size != cfg.data.image_size:
        model.preprocessing = dataclasses.replace(model.preprocessing, size=cfg.data.image_size)
    return model


def image_loaders(
    prepared: PreparedData, pre: Preprocessing, cfg: RunConfig, splits: Sequence[str] = SPLITS
) -> dict[str, DataLoader]:
    """Image loaders per split: train shuffled and augmented, val/test in split.csv order, clean."""
    from cxr.data.dataset import SplitDataset, make_loader

    augment = SeedAugment(cfg.augment) if cfg.augment.enabled else None
    loaders = {}
    for name in splits:
        dataset = SplitDataset(prepared.root, prepared.split(name), prepared.classes, pre,
                               augment if name == "train" else None, seed=cfg.train.seed)
        loaders[name] = make_loader(dataset, batch_size=cfg.train.batch_size, shuffle=name == "train",
                                    num_workers=cfg.data.num_workers, seed=cfg.train.seed)
    return loaders


def features_available() -> bool:
    """True when the feature-cache module is installed."""
    return importlib.util.find_spec(FEATURES_MODULE) is not None


def wants_feature_cache(cfg: RunConfig, use_feature_cache: bool | None) -> bool:
    """Feature cache on: freeze=base and train.feature_cache (or forced on), unless turned off."""
    if use_feature_cache is False:
        return False
    if cfg.model.freeze != "base":
        if use_feature_cache:
            log.warning("the feature cache needs model.freeze=base (got %r): training on images", cfg.model.freeze)
        return False
    if not (cfg.train.feature_cache or use_feature_cache):
        return False
    if not features_available():
        log.info("feature cache asked for, but %s is not installed: training on images", FEATURES_MODULE)
        return False
    return True


@dataclass
class TrainingRun:
    """What training left behind, for evaluation and the report."""

    cfg: RunConfig
    prepared: PreparedData
    model: nn.Module
    module: nn.Module  # what was trained: the model, or its head on cached features
    loaders: dict[str, DataLoader]
    feature_cache: bool
    device: torch.device
    precision: str
    result: FitResult
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


def _train(
    cfg: RunConfig,
    data: Path,
    out_dir: Path,
    *,
    resume: bool,
    use_feature_cache: bool | None,
    split_csv: Path | None,
    cache_dir: Path | None,
    progress: bool,
    figures: bool,
    dist_ctx: DistributedContext | None = None,
) -> TrainingRun:
    started = time.perf_counter()
    set_threads()
    seed_everything(cfg.train.seed)
    device = dist_ctx.device if dist_ctx is not None else resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    ranks = f", {dist_ctx.world_size} processes ({dist_ctx.backend})" if dist_ctx is not None else ""
    log.info("cxr %s: run %s in %s on %s%s", __version__, cfg.name, out_dir, describe(device, precision), ranks)
    if is_main_process():
        save_config(cfg, out_dir / "config.yaml")

    # under torchrun rank 0 audits and splits, and every rank gets its result (or its CxrError)
    prepared = run_on_main(
        lambda: prepare_data(cfg, data, out_dir, resume=resume, split_csv=split_csv, progress=progress)
    )
    counts = prepared.counts()
    log.info("classes %s; %s", prepared.classes,
             ", ".join(f"{s} {sum(counts[s].values())}" for s in SPLITS))
    if figures and is_main_process():
        write_dataset_figures(prepared, cfg, out_dir)
        write_augmented_samples(prepared, cfg, out_dir)

    from cxr.models.build import count_parameters

    model = build_classifier(cfg, len(prepared.classes))
    params = count_parameters(model)
    log.info("model %s (%s weights, freeze %s): %s parameters, %s trainable", cfg.model.backbone,
             cfg.model.weights, cfg.model.freeze, f"{params['total']:,}", f"{params['trainable']:,}")

    resume_phase = _checkpoint_phase(out_dir) if resume else 0
    labels = prepared.labels("train")
    cached = wants_feature_cache(cfg, use_feature_cache)
    result: FitResult | None = None
    loaders: dict[str, DataLoader] = {}
    module: nn.Module = model
    if resume_phase <= 1:  # phase 1 (the seed's): the head, on cached features or on images
        if cached:
            from cxr.train.features import feature_loaders

            cache = cache_dir or default_cache_dir()
            model.to(device)
            with main_process_first():  # under torchrun rank 0 extracts, then the others read its entry
                loaders = feature_loaders(model, prepared.root, prepared.rows, prepared.classes, cfg, cache,
                                          device, precision)
            module = model.head
            log.info("using the feature cache (%s, %d views per training image): training the head only",
                     cache, cfg.train.feature_views)
        else:
            loaders = image_loaders(prepared, model.preprocessing, cfg)
            log.info("training on images (direct path)")
        result = _fit_phase(
            module, loaders, dist_ctx, cfg=cfg, classes=prepared.classes, out_dir=out_dir, device=device,
            precision=precision, classifier=model, train_labels=labels, resume=resume_phase == 1, progress=progress,
        )
    phases = [_phase_info(1, cfg, model, cached)]  # model still has model.freeze applied
    if cfg.train.finetune_epochs > 0:  # phase 2: unfreeze (finetune_freeze) and fine-tune on images
        from cxr.models.build import apply_freeze

        ft = finetune_config(cfg)
        if resume_phase <= 1:  # fine-tuning starts from the head phase's best weights
            barrier()  # under torchrun: rank 0 has written best.pt
            model.load_state_dict(load_checkpoint(out_dir / "checkpoints" / "best.pt", map_location=device)["model"])
        apply_freeze(model, ft.model.freeze)
        phases.append(_phase_info(2, ft, model, False))
        log.info("fine-tuning (freeze %s, %s trainable parameters) for %d epochs at lr %g",
                 ft.model.freeze, f"{phases[-1]['trainable']:,}", ft.train.epochs, ft.train.lr)
        cached, module = False, model
        loaders = image_loaders(prepared, model.preprocessing, cfg)
        result = _fit_phase(
            FrozenNormStats(model), loaders, dist_ctx, cfg=cfg, classes=prepared.classes, out_dir=out_dir,
            device=device, precision=precision, classifier=model, train_labels=labels, resume=resume_phase == 2,
            progress=progress, train_cfg=ft.train, phase=2, prior=result,
        )
    if result is None:
        raise CxrError(f"{out_dir / 'checkpoints' / 'last.pt'} is of the fine-tuning phase, "
                       "but train.finetune_epochs is 0; resume with the run's config")
    return TrainingRun(cfg=cfg, prepared=prepared, model=model, module=module, loaders=loaders,
                       feature_cache=cached, device=device, precision=precision, result=result,
                       seconds=time.perf_counter() - started, info={"parameters": params, "phases": phases})


def _fit_phase(
    module: nn.Module,
    loaders: dict[str, DataLoader],
    dist_ctx: DistributedContext | None,
    *,
    device: torch.device,
    cfg: RunConfig,
    **fit_kwargs: Any,
) -> FitResult:
    """`fit` on the train and val loaders; under torchrun on DDP and per-rank shares of the loaders."""
    tc = fit_kwargs.get("train_cfg") or cfg.train
    module.to(device)
    if tc.channels_last:
        module.to(memory_format=torch.channels_last)  # before DDP, so its gradient buckets match the layout
    runner = wrap_ddp(module, dist_ctx)
    sharded = shard_loaders(loaders, batch_size=tc.batch_size, seed=tc.seed, ctx=dist_ctx)
    try:
        return fit(runner, sharded["train"], sharded["val"], device=device, cfg=cfg, **fit_kwargs)
    finally:
        del runner
        if dist_ctx is not None:
            gc.collect()  # free the DDP reducer and its gradient hooks before another phase wraps these parameters


class FrozenNormStats(nn.Module):
    """`model` with every BatchNorm kept in inference mode, also while training (the fine-tuning phase).

    The head phase learned on features computed with the backbone's running statistics. Switching the
    BatchNorms to per-batch statistics would change those features at once (on X-rays, far from the
    ImageNet statistics, by enough to undo much of the head phase), and small per-process batches make
    them noisy. So fine-tuning adapts the convolutions and the BatchNorm scales and shifts, and keeps
    the statistics, as the Keras transfer-learning guide recommends. Its state dict is `model`'s.
    """

    norm_stats_frozen = True  # BatchNorms never use batch statistics: nothing to synchronise under DDP

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.module = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def train(self, mode: bool = True) -> FrozenNormStats:
        super().train(mode)
        for layer in self.module.modules():
            if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                layer.eval()
        return self


def finetune_config(cfg: RunConfig) -> RunConfig:
    """The settings of the fine-tuning phase: finetune_freeze, finetune_epochs and finetune_lr take the
    place of model.freeze, train.epochs and train.lr; everything else (and `cfg` itself) is unchanged."""
    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, freeze=cfg.train.finetune_freeze),
        train=dataclasses.replace(cfg.train, epochs=cfg.train.finetune_epochs, lr=cfg.train.finetune_lr),
    )


def _phase_info(phase: int, cfg: RunConfig, model: nn.Module, cached: bool) -> dict[str, Any]:
    """One entry of metrics.json 'phases': what the phase trained, and how."""
    from cxr.models.build import count_parameters

    return {"phase": phase, "freeze": cfg.model.freeze, "epochs": cfg.train.epochs, "lr": cfg.train.lr,
            "feature_cache": cached, "trainable": count_parameters(model)["trainable"]}


def _checkpoint_phase(out_dir: Path) -> int:
    """The training phase of out_dir/checkpoints/last.pt (1 = head / seed recipe, 2 = fine-tuning)."""
    state = load_checkpoint(out_dir / "checkpoints" / "last.pt")
    return int((state.get("extra") or {}).get("phase", 1))


def _start(cfg: RunConfig, data: Path, out_dir: Path, resume: bool, force: bool = False) -> RunConfig:
    """Check data and out_dir before anything is written; with `force`, delete a previous run's outputs."""
    data = Path(data)
    if not data.exists():
        raise CxrError(f"data not found: {data}")
    if resume and force:
        raise CxrError("--resume continues the run in --out and --force replaces it: give one of them")
    last = out_dir / "checkpoints" / "last.pt"
    if resume and not last.is_file():
        raise CxrError(f"cannot resume: {last} does not exist (run without --resume to start)")
    if not resume and not force and last.is_file():
        raise CxrError(f"{out_dir} already holds a run ({last}); use --resume to continue it, --force to "
                       "replace it, or choose another --out")
    if force and is_main_process():
        removed = RunDir(out_dir).clear()
        if removed:
            log.info("--force: deleted the previous run's %s", ", ".join(p.name for p in removed))
    out_dir.mkdir(parents=True, exist_ok=True)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(data.resolve())))


# --------------------------------------------------------------------------------------------------
# public entry points


def train(
    cfg: RunConfig,
    data: str | Path,
    out_dir: str | Path,
    *,
    resume: bool = False,
    use_feature_cache: bool | None = None,
    split_csv: str | Path | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    force: bool = False,
) -> Path:
    """Train only: config.yaml, split.csv, history.csv, checkpoints/ and log.txt in `out_dir`; returns it.
    `force` first deletes a previous run's outputs in `out_dir` (`RunDir.clear`) instead of refusing it."""
    out_dir = Path(out_dir)
    if force and split_csv is not None and Path(split_csv).resolve() == RunDir(out_dir).split.resolve():
        raise CxrError(f"--force would delete {split_csv}, the --split-csv to train on: copy it out of {out_dir} first")
    with distributed_session(cfg.train.device) as dist_ctx:  # no-op unless launched by torchrun
        cfg = _start(cfg, Path(data), out_dir, resume, force)
        with run_log(out_dir, append=resume):
            run = _train(cfg, Path(data), out_dir, resume=resume, use_feature_cache=use_feature_cache,
                         split_csv=Path(split_csv) if split_csv else None,
                         cache_dir=Path(cache_dir) if cache_dir else None, progress=progress, figures=False,
                         dist_ctx=dist_ctx)
            log.info("training done in %.1f s: best epoch %d (val loss %.4f), checkpoints in %s",
                     run.seconds, run.result.best_epoch, run.result.best_val_loss, run.result.checkpoint_dir)
    return out_dir


def run_study(
    cfg: RunConfig,
    data: str | Path,
    out_dir: str | Path,
    *,
    resume: bool = False,
    use_feature_cache: bool | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    force: bool = False,
) -> Path:
    """The whole study: split, figures, training, test evaluation of best.pt, figures and report.

    use_feature_cache: None follows the config (cache with freeze=base and train.feature_cache),
    False forces the direct image path. `force` first deletes a previous run's outputs in `out_dir`
    (`RunDir.clear`) instead of refusing the folder. Returns the run directory. Under torchrun every
    rank trains; rank 0 alone evaluates and writes the report.
    """
    out_dir = Path(out_dir)
    with distributed_session(cfg.train.device) as dist_ctx:  # no-op unless launched by torchrun
        return _run_study(cfg, Path(data), out_dir, resume=resume, use_feature_cache=use_feature_cache,
                          cache_dir=cache_dir, progress=progress, dist_ctx=dist_ctx, force=force)


def _run_study(
    cfg: RunConfig,
    data: Path,
    out_dir: Path,
    *,
    resume: bool,
    use_feature_cache: bool | None,
    cache_dir: str | Path | None,
    progress: bool,
    dist_ctx: DistributedContext | None,
    force: bool = False,
) -> Path:
    started = time.perf_counter()
    cfg = _start(cfg, data, out_dir, resume, force)
    with run_log(out_dir, append=resume):
        run = _train(cfg, data, out_dir, resume=resume, use_feature_cache=use_feature_cache,
                     split_csv=None, cache_dir=Path(cache_dir) if cache_dir else None, progress=progress,
                     figures=True, dist_ctx=dist_ctx)
        if not is_main_process():
            return out_dir
        metrics, y_true, probs = _evaluate_best(run, progress)
        test_rows = run.prepared.split("test")
        write_predictions_csv(test_rows, y_true, probs, run.prepared.classes, out_dir / "predictions.csv")
        summary = {
            "test": metrics,
            "classes": run.prepared.classes,
            "split_counts": run.prepared.counts(),
            "best_epoch": run.result.best_epoch,
            "best_val_loss": run.result.best_val_loss,
            "epochs_run": len(run.result.history),
            "stopped_early": run.result.stopped_early,
            "feature_cache": run.feature_cache,
            "tta": cfg.eval.tta,
            "device": describe(run.device, run.precision),
            "precision": run.precision,
            "parameters": run.info["parameters"],
            "phases": run.info["phases"],
            "processes": dist_ctx.world_size if dist_ctx is not None else 1,
            "train_seconds": run.seconds,
            "wall_seconds": time.perf_counter() - started,
            "checkpoint": "checkpoints/best.pt",
            "split_report": run.prepared.split_report,
            "cxr_version": __version__,
        }
        write_result_figures(read_history_csv(out_dir / "history.csv"), metrics, y_true, probs,
                             run.prepared.classes, out_dir / "figures", cfg.eval.ece_bins)
        summary["wall_seconds"] = time.perf_counter() - started
        _write_json(out_dir / "metrics.json", summary)
        from cxr.report.document import write_report

        md, html = write_report(out_dir)
        log.info(
            "test: accuracy %.4f, macro-F1 %.4f, loss %.4f (n=%d); wall time %.1f s",
            metrics["accuracy"], metrics["macro_f1"], metrics["loss"], metrics["n"], summary["wall_seconds"],
            extra=RESULT,  # the command prints these two itself
        )
        log.info("report: %s", html, extra=RESULT)
    return out_dir


def _evaluate_best(run: TrainingRun, progress: bool) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Classification metrics of best.pt on the test split (features when cached, images with TTA)."""
    from cxr.evaluate import classification_metrics

    cfg = run.cfg
    if not run.prepared.split("test"):
        raise CxrError(f"the test split is empty; change data.ratios (now {list(cfg.data.ratios)})")
    best = load_checkpoint(run.result.best_path, map_location=run.device)
    run.model.load_state_dict(best["model"])
    if run.feature_cache and not cfg.eval.tta:
        module, loader = run.module, run.loaders["test"]
    else:
        module = run.model
        loader = image_loaders(run.prepared, run.model.preprocessing, cfg, ("test",))["test"]
    module.to(run.device)
    loss, y_true, probs = evaluate_epoch(module, loader, nn.CrossEntropyLoss(), device=run.device,
                                         precision=run.precision, channels_last=cfg.train.channels_last,
                                         tta=cfg.eval.tta, progress=progress, desc="test")
    metrics = classification_metrics(y_true, probs, run.prepared.classes, loss=loss, n_boot=cfg.eval.bootstrap,
                                     ece_bins=cfg.eval.ece_bins, seed=cfg.train.seed)
    return metrics, y_true, probs


def evaluate_checkpoint(
    ckpt: str | Path,
    data: str | Path,
    split: str = "test",
    *,
    out_dir: str | Path | None = None,
    tta: bool = False,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int | None = None,
    split_csv: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Classification metrics of a checkpoint on a data folder; optionally writes them to `out_dir`.

    Rows: `split_csv` when given; else the run's split.csv beside the checkpoint when it was trained
    on this same data, folder or CSV manifest (rows of `split`); else, for `split='test'`, every image
    of the data, with a warning (train/val of data the run never saw are a CxrError). `split='all'`
    always takes every image.
    The checkpoint's classes must equal the data's classes.
    """
    from cxr.data.dataset import SplitDataset, make_loader
    from cxr.evaluate import classification_metrics

    allowed = (*SPLITS, "all")
    if split not in allowed:
        raise CxrError(f"unknown split {split!r}; allowed: {', '.join(allowed)}")
    ckpt_path = Path(ckpt)
    state = load_checkpoint(ckpt_path)
    cfg = config_of(state)
    classes = list(state["classes"])
    if not Path(data).exists():
        raise CxrError(f"data not found: {data}")
    found = discover(data)
    if list(found.classes) != classes:
        raise CxrError(
            f"class mismatch: checkpoint {ckpt_path} was trained on classes {classes}, "
            f"but the data at {data} has classes {list(found.classes)}"
        )
    rows = _evaluation_rows(ckpt_path, cfg, Path(data), found, split, split_csv)
    if not rows:
        raise CxrError(f"no images to evaluate in split {split!r} of {data}")
    set_threads()
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    model = model_from_checkpoint(state).to(dev)
    dataset = SplitDataset(found.root, rows, classes, model.preprocessing, None, seed=cfg.train.seed)
    loader = make_loader(dataset, batch_size=batch_size or cfg.train.batch_size, shuffle=False,
                         num_workers=cfg.data.num_workers, seed=cfg.train.seed)
    loss, y_true, probs = evaluate_epoch(model, loader, nn.CrossEntropyLoss(), device=dev, precision=prec,
                                         channels_last=cfg.train.channels_last, tta=tta, progress=progress,
                                         desc=f"evaluate {split}")
    metrics = classification_metrics(y_true, probs, classes, loss=loss, n_boot=cfg.eval.bootstrap,
                                     ece_bins=cfg.eval.ece_bins, seed=cfg.train.seed)
    log.info("%s on %s (%s, %d images%s): accuracy %.4f, macro-F1 %.4f, loss %.4f", ckpt_path, data, split,
             len(rows), ", TTA" if tta else "", metrics["accuracy"], metrics["macro_f1"], metrics["loss"], extra=RESULT)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / "metrics.json", {
            split if split != "all" else "test": metrics, "classes": classes, "checkpoint": str(ckpt_path),
            "data": str(Path(data).resolve()), "split": split, "tta": tta, "device": describe(dev, prec),
        })
        write_predictions_csv(rows, y_true, probs, classes, out / "predictions.csv")
        write_result_figures(None, metrics, y_true, probs, classes, out / "figures", cfg.eval.ece_bins)
    return metrics


def _evaluation_rows(
    ckpt_path: Path, cfg: RunConfig, data: Path, found: Discovery, split: str, split_csv: str | Path | None
) -> list[SplitRow]:
    if split_csv is not None:
        return [r for r in read_split_csv(split_csv) if split == "all" or r.split == split]
    if split == "all":
        return _all_rows(found)
    run_split = ckpt_path.resolve().parent.parent / "split.csv"
    # the run recorded the path it was given: a folder, or a CSV manifest (whose rows live under found.root)
    trained_on = Path(cfg.data.root).resolve() if cfg.data.root is not None else None
    same_data = trained_on is not None and trained_on in (data.resolve(), Path(found.root).resolve())
    if run_split.is_file() and same_data:
        log.info("evaluating the %s rows of %s", split, run_split)
        return [r for r in read_split_csv(run_split) if r.split == split]
    if split != "test":
        why = "no split.csv beside it" if not run_split.is_file() else f"it was trained on {cfg.data.root}"
        raise CxrError(
            f"cannot select the {split!r} rows: {ckpt_path} is not from a run on {data} ({why}); "
            "use --split test or all (every image), or --split-csv FILE"
        )
    log.warning("%s was not trained on %s (no split.csv of a run on it): evaluating all %d images",
                ckpt_path, data, len(found.samples))
    return _all_rows(found)


def _all_rows(found: Discovery) -> list[SplitRow]:
    return [SplitRow(s.path, s.label, "test", s.group or s.path) for s in found.samples]


# --------------------------------------------------------------------------------------------------
# outputs


def write_predictions_csv(
    rows: Sequence[SplitRow], y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str], path: Path
) -> Path:
    """path,label,pred,prob_<class>... one line per evaluated image, in evaluation order."""
    if len(rows) != len(y_true):
        raise RuntimeError(f"{len(rows)} rows but {len(y_true)} predictions")  # a bug, not user input
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["path", "label", "pred", *(f"prob_{c}" for c in classes)])
        for row, p in zip(rows, probs, strict=True):
            writer.writerow([row.path, row.label, classes[int(np.argmax(p))], *(f"{float(v):.6f}" for v in p)])
    return path


def write_result_figures(
    history: list[dict[str, Any]] | None,
    metrics: dict[str, Any],
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    fig_dir: Path,
    ece_bins: int,
) -> None:
    """Training curves (when a history is given), confusion matrix, ROC, reliability, classification report."""
    from cxr.report import result_figures as rf

    fig_dir.mkdir(parents=True, exist_ok=True)
    if history:
        rf.training_curves(history, fig_dir)
    rf.confusion_matrix_figure(metrics["confusion"], classes, fig_dir / "confusion_matrix.png", normalize="pred")
    rf.roc_curves(y_true, probs, classes, fig_dir / "roc.png")
    rf.reliability_diagram(y_true, probs, fig_dir / "reliability.png", bins=ece_bins)
    rf.classification_report_figure(metrics["classification_report"], fig_dir / "classification_report.png")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# --------------------------------------------------------------------------------------------------
# demo


def run_demo(
    out_dir: str | Path,
    *,
    n_per_class: int = DEMO_IMAGES_PER_CLASS,
    cfg: RunConfig | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    force: bool = False,
) -> Path:
    """Generate the synthetic dataset into out_dir/data (once) and run the demo study in out_dir.
    `force` replaces a previous demo run there (its outputs are deleted, out_dir/data is kept)."""
    from cxr.data.synthetic import CLASSES, generate_dataset

    out = Path(out_dir)
    if not force and (out / "checkpoints" / "last.pt").is_file():
        raise CxrError(f"{out} already holds a demo run; use --force to replace it (its data/ is kept) "
                       "or choose another --out")
    data = out / "data"
    expected = len(CLASSES) * n_per_class
    existing = sum(1 for _ in data.glob("*/*.png")) if data.is_dir() else 0
    if existing != expected:
        log.info("generating %d synthetic images (%d per class) in %s", expected, n_per_class, data)
        generate_dataset(data, n_per_class=n_per_class, size=DEMO_IMAGE_SIZE, seed=DEMO_DATA_SEED)
    else:
        log.info("reusing the %d synthetic images in %s", existing, data)
    return run_study(cfg or demo_config(), data, out, cache_dir=cache_dir, progress=progress, force=force)
