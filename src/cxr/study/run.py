"""The entry points of a study: `train` (split and train) and `run_study` (everything, then the report).

Everything a study produces lands in one run folder (`cxr.rundir.RunDir`). Under torchrun
(WORLD_SIZE > 1) training runs DistributedDataParallel: rank 0 audits and splits the data and builds
the feature cache, every rank trains its share of each global batch, and only rank 0 writes files,
evaluates the test split and writes the report.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxr import __version__
from cxr.config import RunConfig, save_config
from cxr.data.synthetic import is_synthetic
from cxr.errors import CxrError
from cxr.logs import RESULT
from cxr.malloc import tune_malloc
from cxr.models.build import count_parameters
from cxr.provenance import Provenance
from cxr.rank import is_main_process
from cxr.report.document import write_report
from cxr.report.format import fmt
from cxr.rundir import RunDir, read_history_csv, read_json, write_json
from cxr.runtime import Compute, describe, seed_everything, set_threads
from cxr.study.audits import study_extras
from cxr.study.data import prepare_data, write_augmented_samples, write_dataset_figures
from cxr.study.errors import write_error_gallery
from cxr.study.evaluation import calibrate_best, evaluate_best
from cxr.study.external import check_external_sets, external_sets
from cxr.study.folder import claim
from cxr.study.inputs import build_classifier, with_device_augment
from cxr.study.logfile import run_log
from cxr.study.multilabel_recipe import with_task_defaults
from cxr.study.phases import TrainingRun, train_phases
from cxr.study.presets import default_cache_dir
from cxr.study.summary import run_summary, write_predictions_csv, write_result_figures
from cxr.temperature import SYNTHETIC_KEY
from cxr.tracking.base import NullTracker, Tracker
from cxr.tracking.session import tracking
from cxr.training.distributed import DistributedContext, distributed_session, run_on_main

log = logging.getLogger(__name__)

@dataclass
class StudyResult:
    """What `run_study` and `train` return: the run folder, its metrics and history as plain data.

    Path-like (`result / "metrics.json"`, `Path(result)`), so it can stand where the run folder did.
    """

    run_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)  # metrics.json (empty after `train`)
    history: list[dict[str, float]] = field(default_factory=list)  # history.csv rows

    @property
    def test(self) -> dict[str, Any] | None:
        """The test metrics (accuracy, macro_f1, per_class, ci, ...), None after `train`."""
        return self.metrics.get("test")

    @property
    def checkpoint(self) -> Path:
        return RunDir(self.run_dir).best

    @property
    def report(self) -> Path | None:
        path = RunDir(self.run_dir).report_html
        return path if path.is_file() else None

    def __fspath__(self) -> str:
        return str(self.run_dir)

    def __truediv__(self, other: str | Path) -> Path:
        return self.run_dir / other

    def __repr__(self) -> str:
        parts = [f"run_dir={str(self.run_dir)!r}", f"epochs={len(self.history)}"]
        test = self.test
        if test:
            ci = (test.get("ci") or {}).get("accuracy")
            interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
            parts.append(f"test accuracy={test['accuracy']:.3f}{interval} macro_f1={test['macro_f1']:.3f} "
                         f"n={test['n']}")
        return f"StudyResult({', '.join(parts)})"

    @classmethod
    def read(cls, run_dir: str | Path) -> StudyResult:
        """The result of a finished (or trained) run folder."""
        run = RunDir(run_dir)
        metrics = read_json(run.metrics) if run.metrics.is_file() else {}
        history = read_history_csv(run.history) if run.history.is_file() else []
        return cls(run.root, metrics, history)


def train_run(
    cfg: RunConfig,
    data: Path,
    run: RunDir,
    *,
    resume: bool,
    split_csv: Path | None,
    cache_dir: Path | None,
    progress: bool,
    figures: bool,
    provenance: Provenance,
    dist_ctx: DistributedContext | None = None,
    tracker: Tracker | None = None,
) -> TrainingRun:
    """Split the data (rank 0), draw the data figures, build the model and run the training phases
    (each history row also goes to `tracker`)."""
    started = time.perf_counter()
    set_threads(cfg.train.threads)
    seed_everything(cfg.train.seed)
    device = str(dist_ctx.device) if dist_ctx is not None else cfg.train.device  # torchrun: this rank's
    compute = Compute.resolve(device, cfg.train.precision, channels_last=cfg.train.channels_last, progress=progress)
    ranks = f", {dist_ctx.world_size} processes ({dist_ctx.backend})" if dist_ctx is not None else ""
    log.info("cxr %s: run %s in %s on %s%s", __version__, cfg.name, run.root,
             describe(compute.device, compute.precision), ranks)
    main = is_main_process()
    provenance.set_device(describe(compute.device, compute.precision))
    if main:
        save_config(cfg, run.config)
    # under torchrun rank 0 audits and splits, and every rank gets its result (or its CxrError)
    prepared = run_on_main(lambda: prepare_data(cfg, data, run, resume=resume, split_csv=split_csv,
                                                progress=progress))
    resolved = with_task_defaults(cfg, prepared.task)  # a multi-label study: its recipe (cxr.study.multilabel_recipe)
    if prepared.task != resolved.data.task:  # 'auto' resolved by discovery: the run (and its checkpoints) record it
        resolved = dataclasses.replace(resolved, data=dataclasses.replace(resolved.data, task=prepared.task))
    if resolved != cfg:
        cfg = resolved
        if main:
            save_config(cfg, run.config)
    counts = prepared.counts()
    log.info("classes %s; %s", prepared.classes, ", ".join(f"{s} {sum(c.values())}" for s, c in counts.items()))
    synthetic = is_synthetic(data) or is_synthetic(prepared.root)
    if synthetic:
        log.warning("data: %s holds synthetic images (cxr.data.synthetic): results have no medical meaning", data)
    if main:
        provenance.record_data(data.resolve(), len(prepared.rows), synthetic=synthetic)
        provenance.save()
    if figures and main:
        write_dataset_figures(prepared, cfg, run)
        write_augmented_samples(prepared, cfg, run)
    model = build_classifier(cfg, len(prepared.classes))
    compute = with_device_augment(cfg, model.preprocessing, compute)
    params = count_parameters(model)
    log.info("model %s (%s weights, freeze %s): %s parameters, %s trainable", cfg.model.backbone,
             cfg.model.weights, cfg.model.freeze, f"{params['total']:,}", f"{params['trainable']:,}")
    cache_dir = cache_dir or default_cache_dir()
    module, loaders, cached, result, phases = train_phases(
        model, prepared, cfg, run, compute=compute, cache_dir=cache_dir, resume=resume,
        dist_ctx=dist_ctx, on_save=provenance.save if main else None, tags={SYNTHETIC_KEY: synthetic},
        on_epoch_end=None if tracker is None or isinstance(tracker, NullTracker) else tracker.log_epoch)
    info = {"parameters": params, "phases": phases,
            "data": {"root": str(data.resolve()), "images": len(prepared.rows), "synthetic": synthetic}}
    trained = TrainingRun(cfg=cfg, prepared=prepared, model=model, module=module, loaders=loaders,
                          feature_cache=cached, compute=compute, result=result, cache_dir=cache_dir,
                          seconds=time.perf_counter() - started, info=info)
    if main:  # the temperature of best.pt, fitted on the validation split, stored in it
        trained.info["calibration"] = calibrate_best(trained)
    return trained


def train(
    cfg: RunConfig,
    data: str | Path,
    out_dir: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    split_csv: str | Path | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> StudyResult:
    """Train only: config.yaml, split.csv, history.csv, checkpoints/ and log.txt in `out_dir`."""
    tune_malloc()
    run = RunDir(out_dir)
    if force and split_csv is not None and Path(split_csv).resolve() == run.split.resolve():
        raise CxrError(f"--force would delete {split_csv}, the --split-csv to train on: copy it out of {out_dir} first")
    with distributed_session(cfg.train.device) as dist_ctx:  # no-op unless launched by torchrun
        with (claim(cfg, Path(data), run, resume=resume, force=force) as cfg, run_log(run, append=resume),
              tracking(cfg, run, resume=resume) as tracker):
            provenance = Provenance(run, resume=resume)
            trained = train_run(cfg, Path(data), run, resume=resume, split_csv=Path(split_csv) if split_csv else None,
                                cache_dir=Path(cache_dir) if cache_dir else None, progress=progress, figures=False,
                                provenance=provenance, dist_ctx=dist_ctx, tracker=tracker)
            tracker.log_artifacts([run.config, run.history, run.best])
            log.info("training done in %.1f s: best epoch %d (val loss %.4f), checkpoints in %s", trained.seconds,
                     trained.result.best_epoch, trained.result.best_val_loss, trained.result.checkpoint_dir)
    return StudyResult(run.root, {}, trained.result.history)


def run_study(
    cfg: RunConfig,
    data: str | Path,
    out_dir: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> StudyResult:
    """The whole study: split, figures, training, test evaluation of best.pt, result figures and report.

    Returns the run folder's `StudyResult` (metrics.json and history). Under torchrun every rank
    trains; rank 0 alone evaluates and writes the report.
    """
    tune_malloc()
    run = RunDir(out_dir)
    check_external_sets(external_sets(cfg.eval.external, cfg.eval.label_map))  # before training, not after
    with distributed_session(cfg.train.device) as dist_ctx:  # no-op unless launched by torchrun
        with (claim(cfg, Path(data), run, resume=resume, force=force) as cfg, run_log(run, append=resume),
              tracking(cfg, run, resume=resume) as tracker):
            provenance = Provenance(run, resume=resume)
            trained = train_run(cfg, Path(data), run, resume=resume, split_csv=None,
                                cache_dir=Path(cache_dir) if cache_dir else None, progress=progress, figures=True,
                                provenance=provenance, dist_ctx=dist_ctx, tracker=tracker)
            if not is_main_process():
                return StudyResult(run.root, {}, trained.result.history)
            finish_study(trained, run, provenance, processes=dist_ctx.world_size if dist_ctx else 1, tracker=tracker)
    return StudyResult.read(run.root)


def finish_study(trained: TrainingRun, run: RunDir, provenance: Provenance, *, processes: int,
                 tracker: Tracker | None = None) -> dict[str, Any]:
    """Evaluate best.pt (calibrated) on the test split; write predictions, figures, the error gallery,
    the shortcut audit and external sets, metrics.json and the report; the test metrics and those
    files also go to `tracker`."""
    metrics, rows, test = evaluate_best(trained, trained.info["calibration"])
    classes = trained.prepared.classes
    write_predictions_csv(rows, test.y, test.calibrated, classes, run.predictions,
                          thresholds=metrics.get("thresholds"))
    write_result_figures(read_history_csv(run.history), metrics, test, classes, run.figures,
                         trained.cfg.eval.ece_bins, best_epoch=trained.result.best_epoch)
    extras = study_extras(trained, run, rows, test.y, test.calibrated)  # shortcut audit, external sets
    if not trained.prepared.multilabel:
        extras["errors"] = write_error_gallery(trained, rows, test, run)
    summary = run_summary(trained, metrics, processes=processes, wall_seconds=provenance.wall_seconds())
    summary.update(extras)
    summary["provenance"] = provenance.to_json()  # the same wall time: nothing ran since
    provenance.save()
    write_json(run.metrics, summary)
    write_report(run.root)
    tracker = tracker or NullTracker()
    tracker.log_test(metrics, step=len(trained.result.history))
    tracker.log_artifacts([run.config, run.history, run.metrics, run.predictions, run.figures, run.report_md,
                           run.report_html, run.best])
    if trained.prepared.multilabel:
        log.info("test: mean AUROC %s, mean AP %s over %d findings (n=%d); wall time %.1f s",
                 fmt(metrics["mean_auroc"], 4), fmt(metrics["mean_ap"], 4), len(classes), metrics["n"],
                 summary["wall_seconds"], extra=RESULT)
    else:
        log.info("test: accuracy %.4f, macro-F1 %.4f, loss %.4f (n=%d); wall time %.1f s", metrics["accuracy"],
                 metrics["macro_f1"], metrics["loss"], metrics["n"], summary["wall_seconds"],
                 extra=RESULT)  # the command prints these two itself
    log.info("report: %s", run.report_html, extra=RESULT)
    return summary
