"""Scoring any checkpoint on a data folder (`cxr evaluate`, `cxr.evaluate`): with the temperature and
the multi-label thresholds it stores, on the engine asked for, skipping unreadable images."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxr.checkpoint import config_of, load_checkpoint, model_from_checkpoint
from cxr.config import RunConfig
from cxr.data.dataset import SplitDataset, is_skipped, make_loader
from cxr.data.discover import Discovery, discover
from cxr.data.masks import region_options, with_regions
from cxr.engine.module import evaluation_module
from cxr.engine.parity import PARITY_IMAGES
from cxr.errors import ClassMismatch, CxrError
from cxr.logs import RESULT
from cxr.malloc import tune_malloc
from cxr.metrics import classification_metrics
from cxr.ood.share import flag_share
from cxr.rundir import RunDir, SplitRow, read_split_csv, write_json
from cxr.runtime import Compute, describe, set_threads
from cxr.study.auto_lungs import crop_rows
from cxr.study.calibrate import Scored, calibration_entry, score
from cxr.study.conformal import sets_entry
from cxr.study.evaluation import EVALUATION_SPLITS, scored_rows
from cxr.study.multilabel import absent_findings, score_multilabel
from cxr.study.scoring import require_regions, rows_with_regions
from cxr.study.summary import write_predictions_csv, write_result_figures
from cxr.temperature import temperature_of
from cxr.training.epoch import evaluate_epoch
from cxr.training.losses import EvalLoss

log = logging.getLogger(__name__)


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
    engine: str | None = None,
    threads: int = 0,
    lungs: str | None = None,
) -> dict[str, Any]:
    """Classification metrics of a checkpoint on a data folder; optionally writes them to `out_dir`.

    `engine` runs the model (`cxr.engine`; default: the checkpoint's `eval.engine`); `threads` is
    the intra-op thread count (0: $OMP_NUM_THREADS, else one per free core); `lungs` replaces the
    checkpoint's `data.lungs` (a lung-crop model's regions: auto | masks).

    Rows: `split_csv` when given; else the run's split.csv beside the checkpoint when it was trained
    on this same data, folder or CSV manifest (rows of `split`); else, for `split='test'`, every image
    of the data, with a warning (train/val of data the run never saw are a CxrError). `split='all'`
    always takes every image. The checkpoint's classes must equal the data's classes.
    """
    tune_malloc()
    ckpt_path = Path(ckpt)
    state, cfg, found, rows = _evaluation_inputs(ckpt_path, Path(data), split, split_csv, lungs)
    classes = list(state["classes"])
    set_threads(threads)
    compute = Compute.resolve(device, precision, scoring=True, channels_last=cfg.train.channels_last,
                              progress=progress)
    model = model_from_checkpoint(state).to(compute.device)
    multilabel = found.task == "multilabel"
    dataset = SplitDataset(found.root, rows, classes, model.preprocessing, None, seed=cfg.train.seed,
                           multilabel=multilabel, regions=region_options(cfg))
    batch = batch_size or cfg.train.batch_size
    loader = make_loader(dataset, batch_size=batch, shuffle=False, num_workers=cfg.data.num_workers,
                         seed=cfg.train.seed)
    engine = engine or cfg.eval.engine
    module, compute, ran_on = evaluation_module(
        model, engine, compute, batch_size=batch, images=len(rows),
        sample=_sample(dataset) if engine != "torch" else None, checkpoint=ckpt_path, data_root=cfg.data.root,
        classes=classes, requested_precision=precision)
    scored, metrics = _score(module, loader, compute, state, ckpt_path, cfg, classes, tta=tta, split=split,
                             multilabel=multilabel)
    skipped = [{"path": row.path, "reason": reason} for row, reason in dataset.unreadable()]
    rows = scored_rows(loader, rows)
    metrics["ood"] = flag_share(model, found.root, rows, classes, cfg, compute, state.get("extra"), desc=split)
    if not rows:
        raise CxrError(f"none of the {len(skipped)} images of split {split!r} of {data} could be read")
    log.info("%s on %s (%s, %d images%s): accuracy %.4f, macro-F1 %.4f, loss %.4f", ckpt_path, data, split,
             len(rows), ", TTA" if tta else "", metrics["accuracy"], metrics["macro_f1"], metrics["loss"],
             extra=RESULT)  # the command prints its own summary
    if out_dir is not None:
        summary = {split if split != "all" else "test": metrics, "classes": classes, "checkpoint": str(ckpt_path),
                   "data": str(Path(data).resolve()), "split": split, "tta": tta,
                   "device": describe(compute.device, compute.precision), "engine": ran_on, "skipped": skipped}
        _write_evaluation(RunDir(out_dir), summary, rows, scored, cfg)
    return metrics


def _score(module: Any, loader: Any, compute: Compute, state: dict[str, Any], ckpt_path: Path, cfg: RunConfig,
           classes: list[str], *, tta: bool, split: str, multilabel: bool) -> tuple[Scored, dict[str, Any]]:
    """The scores and metrics of one pass: calibrated with the stored temperature (single-label, with
    the ECE before and after), or per finding at the stored thresholds (multi-label)."""
    if multilabel:
        loss, y, probs = evaluate_epoch(module, loader, EvalLoss(), compute, tta=tta, desc=f"evaluate {split}")
        metrics = score_multilabel(y, probs, classes, cfg, loss=loss,
                                   thresholds=(state.get("extra") or {}).get("thresholds"))
        probs = probs.astype(np.float64)
        return Scored(y, probs, probs, loss, loss), metrics
    temperature = temperature_of(state, ckpt_path)
    scored = score(module, loader, compute, temperature, tta=tta, desc=f"evaluate {split}")
    metrics = classification_metrics(scored.y, scored.calibrated, classes, loss=scored.loss,
                                     n_boot=cfg.eval.bootstrap, ece_bins=cfg.eval.ece_bins, seed=cfg.train.seed)
    metrics["temperature"] = temperature
    metrics["calibration"] = calibration_entry(scored, (state.get("extra") or {}).get("calibration"),
                                               bins=cfg.eval.ece_bins, n_boot=cfg.eval.bootstrap, seed=cfg.train.seed)
    metrics["conformal"] = sets_entry(state, scored.y, scored.calibrated, name=split)  # None: no calibration stored
    return scored, metrics


def _evaluation_inputs(
    ckpt_path: Path, data: Path, split: str, split_csv: str | Path | None, lungs: str | None = None
) -> tuple[dict[str, Any], RunConfig, Discovery, list[SplitRow]]:
    """The checkpoint, its config, the data's discovery and the rows to score (see `evaluate_checkpoint`)."""
    if split not in EVALUATION_SPLITS:
        raise CxrError(f"unknown split {split!r}; allowed: {', '.join(EVALUATION_SPLITS)}")
    state = load_checkpoint(ckpt_path)
    cfg = config_of(state)
    cfg.data.lungs = lungs or cfg.data.lungs
    classes = list(state["classes"])
    if not data.exists():
        raise CxrError(f"data not found: {data}")
    found = with_regions(discover(data, task=cfg.data.task, uncertain=cfg.data.uncertain), cfg.data.masks,
                         cfg.data.boxes, missing_ok=True)
    absent = absent_findings(list(found.classes), classes, found.task)
    if absent:
        log.warning("the data at %s have no case of %s: n/a (null in metrics.json); the other findings are "
                    "scored as usual", data, ", ".join(absent))
    if list(found.classes) != classes and absent is None:
        raise ClassMismatch(
            f"class mismatch: checkpoint {ckpt_path} was trained on classes {classes}, "
            f"but the data at {data} has classes {list(found.classes)}; a set holding some of the classes "
            f"(or other names for them) is scored with --external NAME={data} [--label-map FILE]",
            multilabel=cfg.data.task == "multilabel")
    rows = rows_with_regions(evaluation_rows(ckpt_path, cfg, data, found, split, split_csv), found)
    if not rows:
        raise CxrError(f"no images to evaluate in split {split!r} of {data}")
    rows = crop_rows(rows, found.root, cfg, f"evaluate {split}")  # a lung-crop model: automatic lungs
    if cfg.data.lung_crop:
        require_regions(rows, f"{ckpt_path} (trained on lung crops)")
    return state, cfg, found, rows


def _write_evaluation(out: RunDir, summary: dict[str, Any], rows: list[SplitRow], scored: Scored,
                      cfg: RunConfig) -> None:
    """metrics.json, predictions.csv and the result figures of `cxr evaluate --out`."""
    metrics = next(v for k, v in summary.items() if k in EVALUATION_SPLITS)
    write_json(out.metrics, summary)
    write_predictions_csv(rows, scored.y, scored.calibrated, summary["classes"], out.predictions,
                          thresholds=metrics.get("thresholds"))
    write_result_figures(None, metrics, scored, summary["classes"], out.figures, cfg.eval.ece_bins)


def _sample(dataset: SplitDataset, n: int = PARITY_IMAGES) -> torch.Tensor | None:
    """The first readable images of `dataset`, to check an engine against PyTorch on."""
    readable = [item[0] for item in (dataset[i] for i in range(min(n, len(dataset)))) if not is_skipped(item[1])]
    return torch.stack(readable) if readable else None


def evaluation_rows(
    ckpt_path: Path, cfg: RunConfig, data: Path, found: Discovery, split: str, split_csv: str | Path | None
) -> list[SplitRow]:
    """The rows `evaluate_checkpoint` scores (see there)."""
    if split_csv is not None:
        return [r for r in read_split_csv(split_csv) if split == "all" or r.split == split]
    if split == "all":
        return all_rows(found)
    run_split = RunDir.of_checkpoint(ckpt_path).split
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
    return all_rows(found)


def all_rows(found: Discovery) -> list[SplitRow]:
    """Every discovered image as a 'test' row."""
    return [SplitRow(s.path, s.label, "test", s.group or s.path, s.mask) for s in found.samples]
