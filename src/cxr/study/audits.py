"""The evaluations after the internal test: the shortcut audit of the test split and the external
sets, in a study (`study_extras`) or added to a finished run folder (`add_evaluations`).

`add_evaluations` is `cxr evaluate RUN_DIR --external ... --shortcut --occlude ...`: it adds (or
replaces) only the "shortcut" and "external" keys of metrics.json, writes new gallery figures and
the report, and leaves every other file of the run as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxr.checkpoint import config_of, load_checkpoint, model_from_checkpoint
from cxr.config import OCCLUDE_CHOICES, RunConfig, validate_config
from cxr.data.discover import discover
from cxr.data.masks import with_regions
from cxr.errors import CxrError
from cxr.malloc import tune_malloc
from cxr.metrics.predictions import read_predictions_csv
from cxr.report.document import write_report
from cxr.report.sections.evaluation import SYNTHETIC_MODEL_KEY
from cxr.rundir import RunDir, SplitRow, read_json, write_json
from cxr.runtime import Compute, set_threads
from cxr.study.auto_lungs import write_lungs_report
from cxr.study.checkpoint_eval import evaluation_rows
from cxr.study.external import external_section, external_sets
from cxr.study.phases import TrainingRun
from cxr.study.scoring import rows_with_regions
from cxr.study.shortcut import AuditSettings, internal_control, shortcut_audit
from cxr.temperature import synthetic_of

log = logging.getLogger(__name__)


def study_extras(
    trained: TrainingRun, run: RunDir, rows: Sequence[SplitRow], y_true: np.ndarray, probs: np.ndarray
) -> dict[str, Any]:
    """metrics.json's "shortcut" (test rows with lung regions) and "external" (eval.external) entries
    for a study whose best.pt is loaded in `trained.model`; {} when neither applies."""
    cfg, classes = trained.cfg, trained.prepared.classes
    out: dict[str, Any] = {}
    if trained.prepared.multilabel:  # both compare single-label predictions with classes
        if cfg.eval.external or any(getattr(r, "mask", None) for r in rows):
            log.info("shortcut audit and external sets are single-label evaluations: skipped for a multi-label run")
        return out
    if cfg.eval.shortcut_audit:
        audit = shortcut_audit(trained.model, trained.prepared.root, rows, classes, trained.compute,
                               AuditSettings.of(cfg), name="test", fig_dir=run.figures)
        if audit is not None:
            out["shortcut"] = audit
    sets = external_sets(cfg.eval.external, cfg.eval.label_map)
    if sets:
        out["external"] = external_section(trained.model, classes, cfg, sets, trained.compute,
                                           internal=(y_true, probs), fig_dir=run.figures, tolerant=True,
                                           best=load_checkpoint(trained.result.best_path),
                                           control=internal_control(out.get("shortcut")))
    write_lungs_report(run, out)  # lungs.json: the automatic masks the audits used
    return out


def _internal_predictions(run: RunDir, classes: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """The internal test's labels and probabilities from the run's predictions.csv, when it fits."""
    if not run.predictions.is_file():
        return None
    found = read_predictions_csv(run.predictions)
    if found.classes != classes:
        log.warning("%s holds classes %s, the checkpoint %s: no internal comparison", run.predictions,
                    found.classes, classes)
        return None
    return found.labels, found.probs


def _test_rows(ckpt: Path, cfg: RunConfig, data: str | Path | None) -> tuple[Path, list[SplitRow]]:
    """The data root and the test rows the run scored (split.csv), with lung regions from discovery."""
    source = data or cfg.data.root
    if source is None:
        raise CxrError(f"{ckpt}: its config names no data folder; give --data PATH")
    found = with_regions(discover(source), cfg.data.masks, cfg.data.boxes, missing_ok=True)
    rows = evaluation_rows(ckpt, cfg, Path(source), found, "test", None)
    return Path(found.root), rows_with_regions(rows, found)


def add_evaluations(
    run_dir: str | Path | None,
    *,
    checkpoint: str | Path | None = None,
    data: str | Path | None = None,
    external: dict[str, Any] | None = None,
    label_map: str | None = None,
    occlude: Sequence[str] | None = None,
    device: str = "auto",
    precision: str = "auto",
    progress: bool = True,
    create: bool = False,
    lungs: str | None = None,
) -> dict[str, Any]:
    """Add the shortcut audit (when `occlude` is given: the modes of the masked-region test) and the
    external sets to the metrics.json of `run_dir` and rewrite its report; returns what was added.

    The checkpoint defaults to the run's best.pt, the data to the one it was trained on. With
    `run_dir` None nothing is written (figures neither) and `checkpoint` is needed; `create` makes a
    missing `run_dir` (an --out folder) instead of refusing it. `lungs` replaces the checkpoint's
    `data.lungs` (auto: automatic masks where none are given).
    """
    tune_malloc()
    if run_dir is None and checkpoint is None:
        raise CxrError("give a run folder or a checkpoint to evaluate")
    run = RunDir(run_dir) if run_dir is not None else None
    ckpt = Path(checkpoint) if checkpoint is not None else run.best
    if run is not None and create:
        run.root.mkdir(parents=True, exist_ok=True)
    elif run is not None and not run.root.is_dir():
        raise CxrError(f"run folder not found: {run.root}")
    state = load_checkpoint(ckpt)
    cfg = config_of(state)
    cfg.eval.label_map = label_map or cfg.eval.label_map
    cfg.data.lungs = lungs or cfg.data.lungs
    classes = list(state["classes"])
    unknown = sorted(set(occlude or ()) - set(OCCLUDE_CHOICES))
    if unknown:
        raise CxrError(f"unknown occlusion {unknown[0]!r}; allowed: {', '.join(OCCLUDE_CHOICES)}")
    if occlude is None and not external:
        raise CxrError("nothing to add: give --external NAME=PATH, --shortcut or --occlude lungs|outside|both")
    set_threads()
    compute = Compute.resolve(device, precision, channels_last=cfg.train.channels_last, progress=progress)
    model = model_from_checkpoint(state, source=ckpt).to(compute.device)
    added: dict[str, Any] = {}
    if occlude is not None:
        root, rows = _test_rows(ckpt, cfg, data)
        settings = AuditSettings.of(cfg, occlude=tuple(occlude), progress=progress)
        audit = shortcut_audit(model, root, rows, classes, compute, settings, name="test",
                               fig_dir=run.figures if run is not None else None)
        if audit is None:
            raise CxrError(f"no test image of {root} has a usable lung mask or box (data.lungs: {cfg.data.lungs}); "
                           "give --masks DIR or --boxes FILE, or --lungs auto")
        added["shortcut"] = audit
    existing = read_json(run.metrics) if run is not None and run.metrics.is_file() else {}
    if external:
        sets = external_sets(external, cfg.eval.label_map)
        source = run if run is not None and run.predictions.is_file() else RunDir.of_checkpoint(ckpt)
        internal = _internal_predictions(source, classes)  # the internal test this checkpoint was scored on
        control = internal_control(added.get("shortcut") or existing.get("shortcut"))
        section = external_section(model, classes, cfg, sets, compute, internal=internal,
                                   fig_dir=run.figures if run is not None else None, best=state,
                                   control=control)
        if internal is not None and source != run:  # read from the checkpoint's own run: say so in the report
            section["internal_from"] = str(source.predictions)
        previous = (existing.get("external") or {}).get("sets") or {}
        section["sets"] = {**{k: v for k, v in previous.items() if k not in section["sets"]}, **section["sets"]}
        added["external"] = section
    if run is not None:
        write_lungs_report(run, added)
        if create and not run.config.is_file():  # an --out folder: what was evaluated (cxr.report.sections.evaluation)
            existing = {"checkpoint": str(ckpt), "classes": classes, **existing, SYNTHETIC_MODEL_KEY: synthetic_of(state)}
        write_json(run.metrics, {**existing, **added})
        write_report(run.root)
    return added


def external_from_flags(pairs: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """The `eval.external` mapping of repeated --external NAME=PATH[,key=value] flags (checked like the config)."""
    cfg = RunConfig()
    cfg.eval.external = dict(pairs)
    return validate_config(cfg).eval.external
