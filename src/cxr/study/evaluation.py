"""Scoring a trained model: best.pt of a study (its temperature fitted on the validation split, then
the test split), or any checkpoint on a data folder (with the temperature it stores)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from cxr.checkpoint import config_of, load_checkpoint, model_from_checkpoint
from cxr.config import RunConfig
from cxr.data.dataset import SplitDataset, make_loader
from cxr.data.discover import Discovery, discover
from cxr.errors import CxrError
from cxr.logs import RESULT
from cxr.malloc import tune_malloc
from cxr.metrics import classification_metrics
from cxr.rundir import SPLITS, RunDir, SplitRow, read_split_csv, write_json
from cxr.runtime import Compute, describe, set_threads
from cxr.study.calibrate import Scored, calibrate, calibration_entry, score
from cxr.study.inputs import image_loaders
from cxr.study.operating import operating_entry
from cxr.study.phases import TrainingRun
from cxr.study.summary import write_predictions_csv, write_result_figures
from cxr.temperature import temperature_of

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
    val: Scored
    record: dict[str, Any]


def split_inputs(run: TrainingRun, split: str, *, tta: bool = False) -> tuple[nn.Module, Any]:
    """best.pt's weights into run.model; the module and loader that score `split` (cached features
    when the run used them, images otherwise and with TTA)."""
    best = load_checkpoint(run.result.best_path, map_location=run.compute.device)
    run.model.load_state_dict(best["model"])
    if run.feature_cache and not tta:
        module, loader = run.module, run.loaders[split]
    else:
        module = run.model
        loader = image_loaders(run.prepared, run.model.preprocessing, run.cfg, (split,))[split]
    module.to(run.compute.device)
    return module, loader


def calibrate_best(run: TrainingRun) -> Calibration:
    """Fit the temperature of best.pt on the validation split and store it in best.pt."""
    module, loader = split_inputs(run, "val")
    val, record = calibrate(score(module, loader, run.compute, desc="validation"), run.result.best_path,
                            seed=run.cfg.train.seed)
    return Calibration(record["temperature"], val, record)


def evaluate_best(run: TrainingRun, calibration: Calibration) -> tuple[dict[str, Any], list[SplitRow], Scored]:
    """Metrics of best.pt (with its temperature) on the test split, the rows scored and their scores.

    The metrics are those of the calibrated probabilities (what predict and serve give); `calibration`
    adds the ECE before and after, `operating_points` the validation-chosen thresholds on the test split."""
    cfg = run.cfg
    if not run.prepared.split("test"):
        raise CxrError(f"the test split is empty; change data.ratios (now {list(cfg.data.ratios)})")
    module, loader = split_inputs(run, "test", tta=cfg.eval.tta)
    test = score(module, loader, run.compute, calibration.temperature, tta=cfg.eval.tta, desc="test")
    classes = run.prepared.classes
    metrics = classification_metrics(test.y, test.calibrated, classes, loss=test.loss, n_boot=cfg.eval.bootstrap,
                                     ece_bins=cfg.eval.ece_bins, seed=cfg.train.seed)
    metrics["temperature"] = calibration.temperature
    metrics["calibration"] = calibration_entry(test, calibration.record, bins=cfg.eval.ece_bins,
                                               n_boot=cfg.eval.bootstrap, seed=cfg.train.seed)
    metrics["operating_points"] = operating_entry(calibration.val, test, classes)
    return metrics, scored_rows(loader, run.prepared.split("test")), test


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
    always takes every image. The checkpoint's classes must equal the data's classes.
    """
    tune_malloc()
    if split not in EVALUATION_SPLITS:
        raise CxrError(f"unknown split {split!r}; allowed: {', '.join(EVALUATION_SPLITS)}")
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
    rows = evaluation_rows(ckpt_path, cfg, Path(data), found, split, split_csv)
    if not rows:
        raise CxrError(f"no images to evaluate in split {split!r} of {data}")
    set_threads()
    compute = Compute.resolve(device, precision, channels_last=cfg.train.channels_last, progress=progress)
    model = model_from_checkpoint(state).to(compute.device)
    dataset = SplitDataset(found.root, rows, classes, model.preprocessing, None, seed=cfg.train.seed)
    loader = make_loader(dataset, batch_size=batch_size or cfg.train.batch_size, shuffle=False,
                         num_workers=cfg.data.num_workers, seed=cfg.train.seed)
    temperature = temperature_of(state, ckpt_path)
    scored = score(model, loader, compute, temperature, tta=tta, desc=f"evaluate {split}")
    skipped = [{"path": row.path, "reason": reason} for row, reason in dataset.unreadable()]
    rows = scored_rows(loader, rows)
    if not rows:
        raise CxrError(f"none of the {len(skipped)} images of split {split!r} of {data} could be read")
    metrics = classification_metrics(scored.y, scored.calibrated, classes, loss=scored.loss,
                                     n_boot=cfg.eval.bootstrap, ece_bins=cfg.eval.ece_bins, seed=cfg.train.seed)
    metrics["temperature"] = temperature
    metrics["calibration"] = calibration_entry(scored, (state.get("extra") or {}).get("calibration"),
                                               bins=cfg.eval.ece_bins, n_boot=cfg.eval.bootstrap, seed=cfg.train.seed)
    log.info("%s on %s (%s, %d images%s): accuracy %.4f, macro-F1 %.4f, loss %.4f", ckpt_path, data, split,
             len(rows), ", TTA" if tta else "", metrics["accuracy"], metrics["macro_f1"], metrics["loss"],
             extra=RESULT)  # the command prints its own summary
    if out_dir is not None:
        out = RunDir(out_dir)
        write_json(out.metrics, {
            split if split != "all" else "test": metrics, "classes": classes, "checkpoint": str(ckpt_path),
            "data": str(Path(data).resolve()), "split": split, "tta": tta,
            "device": describe(compute.device, compute.precision), "skipped": skipped,
        })
        write_predictions_csv(rows, scored.y, scored.calibrated, classes, out.predictions)
        write_result_figures(None, metrics, scored, classes, out.figures, cfg.eval.ece_bins)
    return metrics


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
    return [SplitRow(s.path, s.label, "test", s.group or s.path) for s in found.samples]
