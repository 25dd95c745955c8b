"""Opening the configured tracker for a study, and closing it with the run's outcome."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from cxr.config import RunConfig, to_dict
from cxr.rank import is_main_process
from cxr.rundir import RunDir, read_json, write_json
from cxr.tracking.base import Guarded, NullTracker, Tracker, flatten

log = logging.getLogger(__name__)


def open_tracker(cfg: RunConfig, run: RunDir, *, resume: bool) -> Tracker:
    """The tracker of ``cfg.track`` for `run` (NullTracker when off or not the main process)."""
    backend = cfg.track.backend
    if backend == "none" or not is_main_process():
        return NullTracker()
    if backend == "tensorboard":
        from cxr.tracking.tensorboard_tracker import TensorBoardTracker

        tracker: Tracker = TensorBoardTracker(run.tensorboard)
        write_json(run.tracking, {"backend": backend, "folder": str(run.tensorboard.name)})
        return tracker
    from cxr.tracking.mlflow_tracker import MlflowTracker

    previous = read_json(run.tracking) if resume and run.tracking.is_file() else {}
    continuing = previous.get("backend") == backend and cfg.track.uri in ("", previous.get("uri"))
    mlflow = MlflowTracker(run.root, uri=cfg.track.uri or (previous.get("uri", "") if continuing else ""),
                           experiment=cfg.track.experiment, run_name=cfg.name,
                           run_id=previous.get("run_id") if continuing else None)
    write_json(run.tracking, {"backend": backend, "uri": mlflow.uri, "run_id": mlflow.run_id})
    return mlflow


@contextlib.contextmanager
def tracking(cfg: RunConfig, run: RunDir, *, resume: bool = False) -> Iterator[Tracker]:
    """The study's tracker for the block, its params logged; closed FINISHED, FAILED or KILLED.

    Opening errors (a missing package, a bad URI) are the user's to fix, so they stop the run before
    training; later tracker failures only switch tracking off (`Guarded`).
    """
    tracker = open_tracker(cfg, run, resume=resume)
    if isinstance(tracker, NullTracker):
        yield tracker
        return
    guarded = Guarded(tracker, cfg.track.backend)
    guarded.log_params(flatten(to_dict(cfg)))
    status = "FAILED"
    try:
        yield guarded
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        guarded.close(status)
