"""``track.backend: mlflow``: one MLflow run per study (extra cxr[mlflow]).

Default store: a SQLite tracking database beside the run folders, ``<folder of the run folder>/
mlflow.db`` (``runs/mlflow.db`` for ``runs/NAME``), artefacts in ``mlartifacts/`` next to it; view with
``mlflow ui --backend-store-uri sqlite:///runs/mlflow.db``. ``track.uri`` (``--track-uri``) names any
other store or server. The run's id is kept in the run folder's tracking.json, so ``--resume``
continues the same MLflow run. Params are the resolved config (dotted keys), metrics the history rows
per epoch and the test metrics, artefacts the figures, reports, metrics.json and best.pt.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cxr import __version__
from cxr.errors import CxrError
from cxr.tracking.base import epoch_scalars, scalars

log = logging.getLogger(__name__)

PARAMS_PER_BATCH = 100  # MLflow's limit of params in one log_batch call
PARAM_VALUE_LIMIT = 6000  # MLflow's longest param value
_BAD_KEY_CHARACTERS = re.compile(r"[^\w\-. /]")  # what MLflow refuses in metric and param names


def default_uri(run_root: Path) -> str:
    """``sqlite:///<folder of the run folder>/mlflow.db``."""
    return f"sqlite:///{run_root.resolve().parent / 'mlflow.db'}"


def _key(name: str) -> str:
    return _BAD_KEY_CHARACTERS.sub("_", name)


class MlflowTracker:
    """Logs a study to one MLflow run through `MlflowClient` (no global MLflow state is touched)."""

    def __init__(self, run_root: Path, *, uri: str, experiment: str, run_name: str, run_id: str | None = None) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise CxrError("--track mlflow needs the package mlflow: pip install 'cxr[mlflow]'") from None
        self.uri = uri or default_uri(run_root)
        self.client = MlflowClient(tracking_uri=self.uri)
        if run_id is not None:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
            self.logged = dict(self.client.get_run(run_id).data.params)
            log.info("mlflow: continuing run %s in %s", run_id, self.uri)
            return
        found = self.client.get_experiment_by_name(experiment)
        if found is not None:
            experiment_id = found.experiment_id
        else:
            artifacts = (run_root.resolve().parent / "mlartifacts").as_uri() if not uri else None
            experiment_id = self.client.create_experiment(experiment, artifact_location=artifacts)
        tags = {"cxr.run_dir": str(run_root.resolve()), "cxr.version": __version__}
        self.run_id = self.client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
        self.logged: dict[str, str] = {}
        log.info("mlflow: run %s (experiment %r) in %s", self.run_id, experiment, self.uri)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        fresh = []
        for key, value in params.items():
            text = str(value)[:PARAM_VALUE_LIMIT]
            if _key(key) in self.logged:  # a resumed run: params are immutable in MLflow
                continue
            fresh.append(Param(_key(key), text))
        for start in range(0, len(fresh), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=fresh[start : start + PARAMS_PER_BATCH])

    def _log_metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(_key(k), v, now, step) for k, v in values.items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def log_epoch(self, row: dict[str, float]) -> None:
        step, values = epoch_scalars(row)
        self._log_metrics(values, step)

    def log_test(self, metrics: dict[str, Any], step: int) -> None:
        self._log_metrics(scalars(metrics, "test/"), step)

    def log_artifacts(self, paths: Sequence[Path]) -> None:
        for path in paths:
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path=path.name)
            elif path.is_file():
                self.client.log_artifact(self.run_id, str(path), artifact_path=path.parent.name
                                         if path.parent.name == "checkpoints" else None)

    def close(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)
