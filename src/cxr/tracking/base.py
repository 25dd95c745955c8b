"""The tracker interface the study calls, a tracker that does nothing, and flattening for trackers.

A tracker mirrors what the run folder already holds (config.yaml, history.csv, metrics.json, figures,
checkpoints); it never holds anything the folder lacks. A backend that fails while the run goes on
(a tracking server gone away) is switched off with one warning by `Guarded`: the run completes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

INTERVAL_SUFFIXES = ("low", "high")  # a [low, high] pair (confidence interval) becomes two scalars


class Tracker(Protocol):
    """What the study tells an experiment tracker."""

    def log_params(self, params: dict[str, Any]) -> None:
        """The resolved config, flattened to dotted keys (once per run)."""

    def log_epoch(self, row: dict[str, float]) -> None:
        """One history.csv row (its `epoch` is the step)."""

    def log_test(self, metrics: dict[str, Any], step: int) -> None:
        """The test metrics of metrics.json["test"] (nested; scalars are taken), at step `step`."""

    def log_artifacts(self, paths: Sequence[Path]) -> None:
        """Files or folders of the run folder (figures, metrics.json, best.pt, ...); absent ones are skipped."""

    def close(self, status: str = "FINISHED") -> None:
        """End the tracked run: FINISHED, FAILED or KILLED."""


class NullTracker:
    """No tracking (``track.backend: none``, and every process but the main one under torchrun)."""

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_epoch(self, row: dict[str, float]) -> None:
        pass

    def log_test(self, metrics: dict[str, Any], step: int) -> None:
        pass

    def log_artifacts(self, paths: Sequence[Path]) -> None:
        pass

    def close(self, status: str = "FINISHED") -> None:
        pass


class Guarded:
    """A tracker whose failures after opening are one warning, then silence (the run goes on)."""

    def __init__(self, tracker: Tracker, name: str) -> None:
        self.tracker: Tracker | None = tracker
        self.name = name

    def _call(self, method: str, *args: Any) -> None:
        if self.tracker is None:
            return
        try:
            getattr(self.tracker, method)(*args)
        except Exception as exc:  # noqa: BLE001 - tracking must never fail the run it mirrors
            log.warning("%s tracking stopped (%s: %s); the run folder has everything", self.name,
                        type(exc).__name__, exc)
            self.tracker = None

    def log_params(self, params: dict[str, Any]) -> None:
        self._call("log_params", params)

    def log_epoch(self, row: dict[str, float]) -> None:
        self._call("log_epoch", row)

    def log_test(self, metrics: dict[str, Any], step: int) -> None:
        self._call("log_test", metrics, step)

    def log_artifacts(self, paths: Sequence[Path]) -> None:
        self._call("log_artifacts", paths)

    def close(self, status: str = "FINISHED") -> None:
        self._call("close", status)


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 1e-4}} -> {'train.lr': 1e-4}; lists and tuples become their string."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif isinstance(value, list | tuple):
            out[name] = str(list(value))
        else:
            out[name] = value
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def scalars(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a nested metrics dict under '/'-joined keys; [low, high] pairs become
    KEY/low and KEY/high; other lists, strings and non-finite values are left out."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(scalars(value, name + "/"))
        elif isinstance(value, list | tuple) and len(value) == len(INTERVAL_SUFFIXES):
            for suffix, item in zip(INTERVAL_SUFFIXES, value, strict=True):
                number = _number(item)
                if number is not None:
                    out[f"{name}/{suffix}"] = number
        else:
            number = _number(value)
            if number is not None:
                out[name] = number
    return out


def epoch_scalars(row: dict[str, float]) -> tuple[int, dict[str, float]]:
    """(step, {'train/loss': ..., 'val/accuracy': ..., 'lr': ...}) of a history row."""
    values: dict[str, float] = {}
    for key, value in row.items():
        number = _number(value)
        if key == "epoch" or number is None:
            continue
        head, sep, rest = key.partition("_")
        values[f"{head}/{rest}" if sep and head in ("train", "val") else key] = number
    return int(row["epoch"]), values
