"""Claiming a run folder: one writer at a time, no run overwritten by accident, a resume that fits.

Before anything is written, `claim` takes the folder's lock (`cxr.rundir.RunLock`), refuses a folder
that already holds a run (unless `resume` continues it or `force` replaces it), and for a resume checks
that the data and the settings are those of the run. A run that fails before its first checkpoint in
a folder it created leaves no folder behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

from cxr.config import RunConfig, load_config, to_dict, validate_config
from cxr.data.discover import discover
from cxr.errors import CxrError
from cxr.models.weights import ensure_weights
from cxr.rank import is_main_process
from cxr.rundir import RunDir, RunLock, read_split_csv
from cxr.study.multilabel_recipe import with_task_defaults
from cxr.training.distributed import run_on_main

log = logging.getLogger(__name__)

# Settings a resumed run may change: how long it trains, where it computes, what it evaluates.
RESUMABLE = ("name", "data.root", "data.num_workers", "data.task", "train.epochs", "train.finetune_epochs",
             "train.device", "train.compile", "train.early_stopping", "eval.", "track.", "model.cam_layer")
_LISTED = 5


def untrained_backbone(cfg: RunConfig) -> bool:
    """Whether the run trains only a head on a frozen, randomly initialised backbone."""
    return cfg.model.weights == "random" and cfg.model.freeze == "base" and cfg.train.finetune_epochs == 0


def warn_untrained_backbone(cfg: RunConfig) -> None:
    """A WARNING for random weights with a frozen base: allowed when asked for, but no transfer learning."""
    if untrained_backbone(cfg):
        log.warning("model.weights is random and the base is frozen: the head learns on the features of an "
                    "untrained backbone (not transfer learning); the report says so on its first screen")


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
        removed = run.clear()
        log.warning("--force: replaced the run in %s (deleted %s)", run.root, ", ".join(p.name for p in removed))


def _flat(mapping: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_resume(cfg: RunConfig, data: Path, run: RunDir) -> None:
    """A resume must continue the same run: its data (path, files, labels) and its settings."""
    if not run.config.is_file():
        raise CxrError(f"cannot resume: {run.config} is missing, so the run's settings are unknown")
    saved = load_config(run.config)
    if saved.data.root is not None and Path(saved.data.root).resolve() != data.resolve():
        raise CxrError(f"cannot resume: the run in {run.root} was trained on {saved.data.root}, not on {data}; "
                       f"give --data {saved.data.root}")
    before, now = _flat(to_dict(saved)), _flat(to_dict(with_task_defaults(cfg, saved.data.task)))
    changed = sorted(k for k in before.keys() | now.keys()
                     if before.get(k) != now.get(k) and not k.startswith(RESUMABLE))
    if changed:
        listed = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:_LISTED])
        raise CxrError(f"cannot resume with other settings ({listed}); resume with the run's own config "
                       "(leave out --config/--set), or start a new run")
    if run.split.is_file():
        found = {s.path: s.label for s in discover(data).samples}
        gone = [r for r in read_split_csv(run.split) if found.get(r.path) != r.label]
        if gone:
            listed = ", ".join(r.path for r in gone[:_LISTED])
            raise CxrError(f"cannot resume: {len(gone)} image(s) of the run's split are missing from {data} or "
                           f"have another class there (first: {listed})")


@contextlib.contextmanager
def claim(cfg: RunConfig, data: Path, run: RunDir, *, resume: bool, force: bool) -> Iterator[RunConfig]:
    """Hold the run folder for the block; yields cfg with data.root set (see the module docstring).

    Under torchrun rank 0 claims, and its refusal (a CxrError) stops every rank.
    """
    validate_config(cfg)  # a config built in code is checked like a loaded one, before any file is written
    if not data.exists():
        raise CxrError(f"data not found: {data}")
    # the weights are needed first: fetched (or refused) before the folder, the audit or the split
    run_on_main(lambda: ensure_weights(cfg.model.weights, cfg.model.backbone))
    warn_untrained_backbone(cfg)
    created = not run.root.exists()
    try:
        run.root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CxrError(f"cannot create the run folder {run.root}: {exc.strerror or exc}") from None
    lock = RunLock(run)

    def take() -> None:
        try:
            lock.acquire()  # refused: another process owns the folder, which stays as it is
        except PermissionError as exc:
            raise CxrError(f"cannot write in {run.root}: {exc.strerror}") from None
        try:
            check_folder(run, resume=resume, force=force)
            if resume:
                check_resume(cfg, data, run)
        except BaseException:
            if created:  # ours (we hold its lock) and still empty: a refused run leaves no folder
                shutil.rmtree(run.root, ignore_errors=True)
            lock.release()
            raise

    run_on_main(take)
    try:
        yield dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(data.resolve())))
    except BaseException:
        if created and is_main_process() and not run.last.exists():
            shutil.rmtree(run.root, ignore_errors=True)
        raise
    finally:
        lock.release()
