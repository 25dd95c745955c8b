"""The tolerant reader of a run folder: everything the report shows, and why anything is missing.

Paths and formats come from the run-folder contract (`cxr.rundir`). A missing or unreadable file
never raises: it is left as None and its reason recorded in `RunFiles.problems`, so a report can be
written for an interrupted or partial run.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cxr.errors import CxrError
from cxr.rundir import (
    SPLITS,
    RunDir,
    SplitCounts,
    parse_history_rows,
    read_json,
    read_split_csv,
    split_counts,
)

log = logging.getLogger(__name__)

METRICS_SPLIT_COUNTS = "split_counts"  # metrics.json key: split -> class -> images
AUG_LABEL_KEY = "cxr:label"  # the PNG text chunk of an augmented sample naming its class (cxr.data.samples)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHUNK_HEADER = 8  # 4-byte length, 4-byte type
_CHUNK_CRC = 4


@dataclass
class RunFiles:
    """Everything read from a run folder; None where a file is missing or unreadable."""

    run: RunDir
    config: dict[str, Any] | None = None
    history: list[dict[str, float]] | None = None  # history.csv rows as numbers
    history_columns: list[str] = field(default_factory=list)  # history.csv header, in file order
    metrics: dict[str, Any] | None = None
    provenance: dict[str, Any] | None = None  # provenance.json (metrics.json["provenance"] when it is gone)
    split_counts: SplitCounts | None = None  # split -> class -> images
    split_counts_source: str | None = None  # the file the counts came from
    figures: dict[str, Path] = field(default_factory=dict)  # stem -> file
    aug_images: list[Path] = field(default_factory=list)
    aug_labels: dict[str, str] = field(default_factory=dict)  # aug image name -> class (its PNG text chunk)
    problems: dict[str, str] = field(default_factory=dict)  # file name (or metrics key) -> why unused

    @property
    def run_dir(self) -> Path:
        """The run folder itself."""
        return self.run.root

    def reason(self, path: Path, default: str) -> str:
        """Why `path` is not used, or `default` when it was read but lacks what a section needs."""
        return self.problems.get(path.name, default)

    def rel(self, path: Path) -> str:
        """`path` relative to the run folder, in posix form, for links in report.md."""
        return path.relative_to(self.run.root).as_posix()


def png_text(path: Path) -> dict[str, str]:
    """The tEXt chunks of a PNG file (those before the image data), {} for anything unreadable."""
    try:
        data = path.read_bytes()
    except OSError:
        return {}
    if not data.startswith(_PNG_SIGNATURE):
        return {}
    out, at = {}, len(_PNG_SIGNATURE)
    while at + _CHUNK_HEADER <= len(data):
        length, kind = int.from_bytes(data[at : at + 4], "big"), data[at + 4 : at + 8]
        if kind in (b"IDAT", b"IEND"):
            break
        if kind == b"tEXt":
            key, _, value = data[at + _CHUNK_HEADER : at + _CHUNK_HEADER + length].partition(b"\0")
            out[key.decode("latin-1")] = value.decode("latin-1")
        at += _CHUNK_HEADER + length + _CHUNK_CRC
    return out


def _broken(files: RunFiles, name: str, why: str) -> None:
    """Record a file that is there but cannot be used (a warning: a missing file is just a note)."""
    files.problems[name] = why
    log.warning("report: %s", why)


def _present(files: RunFiles, path: Path) -> bool:
    if path.is_file():
        return True
    files.problems[path.name] = f"{path.name} is missing from the run directory"
    return False


def _read_text(files: RunFiles, path: Path) -> str | None:
    if not _present(files, path):
        return None
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        _broken(files, path.name, f"{path.name} could not be read: {exc}")
        return None


def _mapping(files: RunFiles, path: Path, data: Any) -> dict[str, Any] | None:
    if not isinstance(data, dict):
        _broken(files, path.name, f"{path.name} does not hold a mapping")
        return None
    return data


def _read_config(files: RunFiles) -> dict[str, Any] | None:
    path = files.run.config
    text = _read_text(files, path)
    if text is None:
        return None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        _broken(files, path.name, f"{path.name} is not valid: {str(exc).splitlines()[0]}")
        return None
    return _mapping(files, path, data)


def _read_metrics(files: RunFiles) -> dict[str, Any] | None:
    path = files.run.metrics
    if not _present(files, path):
        return None
    try:
        data = read_json(path)
    except CxrError as exc:
        _broken(files, path.name, f"{path.name} is not valid: {exc}")
        return None
    return _mapping(files, path, data)


def _read_provenance(files: RunFiles) -> dict[str, Any] | None:
    """provenance.json (kept up to date across attempts), else the copy in metrics.json."""
    path = files.run.provenance
    if path.is_file():
        try:
            return _mapping(files, path, read_json(path))
        except CxrError as exc:
            _broken(files, path.name, f"{path.name} is not valid: {exc}")
    copy = (files.metrics or {}).get("provenance")
    if isinstance(copy, dict):
        return copy
    files.problems.setdefault(path.name, f"{path.name} is missing from the run directory")
    return None


def _read_history(files: RunFiles) -> None:
    path = files.run.history
    text = _read_text(files, path)
    if text is None:
        return
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows = list(reader)
        files.history = parse_history_rows(rows)
    except csv.Error as exc:
        _broken(files, path.name, f"{path.name} is not valid CSV: {exc}")
        return
    except ValueError as exc:
        _broken(files, path.name, f"{path.name} holds a cell that is not a number ({exc})")
        return
    files.history_columns = list(reader.fieldnames or [])


def _counts_from_split_csv(files: RunFiles) -> SplitCounts | None:
    path = files.run.split
    if not _present(files, path):
        return None
    try:
        return split_counts(read_split_csv(path))
    except CxrError as exc:
        why = f"{path.name} is not usable, the report expected label and split for every image: {exc}"
        _broken(files, path.name, why)
        return None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        _broken(files, path.name, f"{path.name} could not be read: {exc}")
        return None


def _is_split_counts(raw: Any) -> bool:
    """Whether `raw` is split -> class -> images (splits from SPLITS, counts non-negative ints)."""
    if not isinstance(raw, dict) or not raw or not set(raw) <= set(SPLITS):
        return False
    return all(
        isinstance(per_class, dict)
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in per_class.values())
        for per_class in raw.values()
    )


def _counts_from_metrics(files: RunFiles) -> SplitCounts | None:
    if files.metrics is None or METRICS_SPLIT_COUNTS not in files.metrics:
        return None
    raw = files.metrics[METRICS_SPLIT_COUNTS]
    if not _is_split_counts(raw):
        why = f"{files.run.metrics.name} {METRICS_SPLIT_COUNTS} is not split -> class -> images ({', '.join(SPLITS)})"
        _broken(files, METRICS_SPLIT_COUNTS, why)
        return None
    return {split: {str(label): n for label, n in raw.get(split, {}).items()} for split in SPLITS}


def _read_split_counts(files: RunFiles) -> None:
    """Counts from split.csv, else from metrics.json (written by the study from the same split)."""
    for path, read in ((files.run.split, _counts_from_split_csv), (files.run.metrics, _counts_from_metrics)):
        counts = read(files)
        if counts and any(counts.values()):
            files.split_counts, files.split_counts_source = counts, path.name
            return


def read_run(run_dir: str | Path | RunDir) -> RunFiles:
    """Read every report input of `run_dir`, recording what is missing instead of failing."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    files = RunFiles(run=run)
    files.config = _read_config(files)
    files.metrics = _read_metrics(files)
    files.provenance = _read_provenance(files)
    _read_history(files)
    _read_split_counts(files)
    files.figures = {p.stem: p for p in sorted(run.figures.glob("*.png"))}
    files.aug_images = sorted(run.aug_images.glob("*.png"))
    files.aug_labels = {p.name: label for p in files.aug_images if (label := png_text(p).get(AUG_LABEL_KEY))}
    return files
