"""The entry points of a study: `train` (split and train) and `run_study` (everything, then the report).

Everything a study produces lands in one run folder (`cxr.rundir.RunDir`). Under torchrun
(WORLD_SIZE > 1) training runs DistributedDataParallel: rank 0 audits and splits the data and builds
the feature cache, every rank trains its share of each global batch, and only rank 0 writes files,
evaluates the test split and writes the report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxr import __version__
from cxr.config import RunConfig, save_config
from cxr.errors import CxrError
from cxr.malloc import tune_malloc
from cxr.models.build import count_parameters
from cxr.rank import is_main_process
from cxr.report.document import write_report
from cxr.rundir import RunDir, read_history_csv, read_json, write_json
from cxr.runtime import Compute, describe, seed_everything, set_threads
from cxr.study.data import prepare_data, write_augmented_samples, write_dataset_figures
from cxr.study.evaluation import evaluate_best
from cxr.study.inputs import build_classifier
from cxr.study.logfile import run_log
from cxr.study.phases import TrainingRun, train_phases
from cxr.study.presets import default_cache_dir
from cxr.study.summary import run_summary, write_predictions_csv, write_result_figures
from cxr.training.distributed import DistributedContext, distributed_session, run_on_main

log = logging.getLogger(__name__)

# What --force removes from a folder that holds a run (never anything else, e.g. the demo's data/).
RUN_FOLDERS = ("checkpoints", "figures", "aug_images")


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


def clear_run(run: RunDir) -> None:
    """Remove a run's own files and folders (for --force); other files in the folder stay."""
    for path in run.artefacts() + [run.log]:
        if path.is_file():
            path.unlink()
    for name in RUN_FOLDERS:
        shutil.rmtree(run.root / name, ignore_errors=True)


def check_folder(run: RunDir, *, resume: bool, force: bool) -> None:
    """Refuse a folder that holds a run (unless resuming it, or replacing it with `force`)."""
    if resume and force:
        raise CxrError("--resume continues the run in the folder and --force replaces it: give one of them")
    if resume and not run.last.is_file():
        raise CxrError(f"cannot resume: {run.last} does not exist (run without --resume to start)")
    existing = run.artefacts()
    if not resume and existing:
        if not force:
            raise CxrError(
                f"{run.root} already holds a run ({', '.join(p.name for p in existing[:3])}); use --resume to "
                "continue it, --force to replace it, or choose another --out"
            )
        log.warning("--force: replacing the run in %s", run.root)
        clear_run(run)


def start(cfg: RunConfig, data: Path, run: RunDir, *, resume: bool, force: bool) -> RunConfig:
    """Check the inputs and the folder before anything is written; returns cfg with data.root set."""
    if not data.exists():
        raise CxrError(f"data not found: {data}")
    check_folder(run, resume=resume, force=force)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(data.resolve())))


@contextlib.contextmanager
def new_folder(run: RunDir) -> Iterator[None]:
    """Create the run folder; if this call made it and fails before a checkpoint exists, remove it again."""
    created = not run.root.exists()
    run.root.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        if created and is_main_process() and not run.last.exists():
            shutil.rmtree(run.root, ignore_errors=True)
        raise


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
    dist_ctx: DistributedContext | None = None,
) -> TrainingRun:
    """Split the data (rank 0), draw the data figures, build the model and run the training phases."""
    started = time.perf_counter()
    set_threads()
    seed_everything(cfg.train.seed)
    device = str(dist_ctx.device) if dist_ctx is not None else cfg.train.device  # torchrun: this rank's
    compute = Compute.resolve(device, cfg.train.precision, channels_last=cfg.train.channels_last, progress=progress)
    ranks = f", {dist_ctx.world_size} processes ({dist_ctx.backend})" if dist_ctx is not None else ""
    log.info("cxr %s: run %s in %s on %s%s", __version__, cfg.name, run.root,
             describe(compute.device, compute.precision), ranks)
    if is_main_process():
        save_config(cfg, run.config)
    # under torchrun rank 0 audits and splits, and every rank gets its result (or its CxrError)
    prepared = run_on_main(lambda: prepare_data(cfg, data, run, resume=resume, split_csv=split_csv,
                                                progress=progress))
    counts = prepared.counts()
    log.info("classes %s; %s", prepared.classes, ", ".join(f"{s} {sum(c.values())}" for s, c in counts.items()))
    if figures and is_main_process():
        write_dataset_figures(prepared, cfg, run)
        write_augmented_samples(prepared, cfg, run)
    model = build_classifier(cfg, len(prepared.classes))
    params = count_parameters(model)
    log.info("model %s (%s weights, freeze %s): %s parameters, %s trainable", cfg.model.backbone,
             cfg.model.weights, cfg.model.freeze, f"{params['total']:,}", f"{params['trainable']:,}")
    module, loaders, cached, result, phases = train_phases(
        model, prepared, cfg, run, compute=compute, cache_dir=cache_dir or default_cache_dir(), resume=resume,
        dist_ctx=dist_ctx)
    return TrainingRun(cfg=cfg, prepared=prepared, model=model, module=module, loaders=loaders,
                       feature_cache=cached, compute=compute, result=result,
                       seconds=time.perf_counter() - started, info={"parameters": params, "phases": phases})


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
    with distributed_session(cfg.train.device) as dist_ctx:  # no-op unless launched by torchrun
        cfg = start(cfg, Path(data), run, resume=resume, force=force)
        with new_folder(run), run_log(run, append=resume):
            trained = train_run(cfg, Path(data), run, resume=resume, split_csv=Path(split_csv) if split_csv else None,
                                cache_dir=Path(cache_dir) if cache_dir else None, progress=progress, figures=False,
                                dist_ctx=dist_ctx)
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
    with distributed_session(cfg.train.device) as dist_ctx:  # no-op unless launched by torchrun
        started = time.perf_counter()
        cfg = start(cfg, Path(data), run, resume=resume, force=force)
        with new_folder(run), run_log(run, append=resume):
            trained = train_run(cfg, Path(data), run, resume=resume, split_csv=None,
                                cache_dir=Path(cache_dir) if cache_dir else None, progress=progress, figures=True,
                                dist_ctx=dist_ctx)
            if not is_main_process():
                return StudyResult(run.root, {}, trained.result.history)
            finish_study(trained, run, started, processes=dist_ctx.world_size if dist_ctx else 1)
    return StudyResult.read(run.root)


def finish_study(trained: TrainingRun, run: RunDir, started: float, *, processes: int) -> dict[str, Any]:
    """Evaluate best.pt on the test split, write predictions, figures, metrics.json and the report."""
    metrics, y_true, probs = evaluate_best(trained)
    classes = trained.prepared.classes
    write_predictions_csv(trained.prepared.split("test"), y_true, probs, classes, run.predictions)
    write_result_figures(read_history_csv(run.history), metrics, y_true, probs, classes, run.figures,
                         trained.cfg.eval.ece_bins)
    summary = run_summary(trained, metrics, processes=processes, wall_seconds=time.perf_counter() - started)
    write_json(run.metrics, summary)
    write_report(run.root)
    log.info("test: accuracy %.4f, macro-F1 %.4f, loss %.4f (n=%d); wall time %.1f s", metrics["accuracy"],
             metrics["macro_f1"], metrics["loss"], metrics["n"], summary["wall_seconds"])
    log.info("report: %s", run.report_html)
    return summary
