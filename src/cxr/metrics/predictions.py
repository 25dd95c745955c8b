"""predictions.csv (written by the study: path,true_label,predicted_label,prob_<class>...) read back and paired.

Run folders written before the columns were named so (path,label,pred,...) are read alike (LEGACY_COLUMNS).

Two runs can only be compared row by row when they scored the same images with the same labels;
`load_paired_predictions` aligns the second file to the first by `path` and refuses, naming both
files, when the classes, the set of paths or any label differ.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr.errors import CxrError
from cxr.rundir import RunDir

PROB_PREFIX = "prob_"
TRUE_COLUMN = "true_label"  # the image's class (the data's label)
PREDICTED_COLUMN = "predicted_label"  # the model's answer (`cxr predict`'s CSV has this column too, and no true one)
COLUMNS = ("path", TRUE_COLUMN, PREDICTED_COLUMN)  # then prob_<class> per class
LEGACY_COLUMNS = {"label": TRUE_COLUMN, "pred": PREDICTED_COLUMN}  # older run folders' names
REQUIRED_COLUMNS = COLUMNS
SHOWN = 3  # example paths named in an error message


@dataclass(frozen=True)
class Predictions:
    """One predictions.csv: rows in file order, labels and predictions as class indices."""

    source: Path  # the file read
    classes: list[str]  # from the prob_<class> columns, in column order
    paths: list[str]  # image path per row, as written
    labels: np.ndarray  # (N,) int64 true class index
    preds: np.ndarray  # (N,) int64 predicted class index (the `predicted_label` column)
    probs: np.ndarray  # (N, C) float64 class probabilities

    def reordered(self, order: np.ndarray) -> Predictions:
        """The same predictions with rows taken in `order`."""
        return Predictions(self.source, self.classes, [self.paths[i] for i in order], self.labels[order],
                           self.preds[order], self.probs[order])


def predictions_file(path: str | Path) -> Path:
    """A predictions.csv itself, or the predictions.csv of a run folder."""
    path = Path(path)
    file = RunDir(path).predictions if path.is_dir() else path
    if not file.is_file():
        raise CxrError(f"predictions file not found: {file} (give a predictions.csv or a run folder holding one)")
    return file


def _index(value: str, classes: list[str], file: Path, line: int, column: str) -> int:
    try:
        return classes.index(value)
    except ValueError:
        raise CxrError(f"{file} line {line}: {column} {value!r} is not a class; allowed: {', '.join(classes)}") from None


def read_predictions_csv(path: str | Path) -> Predictions:
    """Read a predictions.csv (or a run folder's); CxrError names the file and line of any bad value."""
    file = predictions_file(path)
    with file.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = list(reader.fieldnames or [])
        if TRUE_COLUMN not in header and PREDICTED_COLUMN not in header:  # an older run folder
            reader.fieldnames = header = [LEGACY_COLUMNS.get(c, c) for c in header]
        prob_columns = [c for c in header if c.startswith(PROB_PREFIX)]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing or not prob_columns:
            raise CxrError(f"{file}: expected columns {','.join(COLUMNS)},prob_<class>..., got "
                           f"{','.join(header) or '(none)'}")
        classes = [c[len(PROB_PREFIX):] for c in prob_columns]
        paths, labels, preds, probs = [], [], [], []
        for line, row in enumerate(reader, start=2):
            paths.append(row["path"])
            labels.append(_index(row[TRUE_COLUMN], classes, file, line, TRUE_COLUMN))
            preds.append(_index(row[PREDICTED_COLUMN], classes, file, line, PREDICTED_COLUMN))
            try:
                probs.append([float(row[c]) for c in prob_columns])
            except (TypeError, ValueError):
                raise CxrError(f"{file} line {line}: probabilities must be numbers, got "
                               f"{[row[c] for c in prob_columns]}") from None
    if not paths:
        raise CxrError(f"{file} has no prediction rows")
    repeated = sorted(p for p, count in Counter(paths).items() if count > 1)
    if repeated:
        raise CxrError(f"{file}: {len(repeated)} paths occur more than once, e.g. {repeated[:SHOWN]}")
    p = np.asarray(probs, dtype=np.float64)
    if not np.all(np.isfinite(p)):
        raise CxrError(f"{file}: probabilities contain NaN or infinite values")
    return Predictions(file, classes, paths, np.asarray(labels, np.int64), np.asarray(preds, np.int64), p)


def load_paired_predictions(path_a: str | Path, path_b: str | Path) -> tuple[Predictions, Predictions]:
    """Both files with B's rows aligned to A's order by path. CxrError (naming both files) when the
    classes differ, the path sets differ, or an image has different labels in the two files."""
    a, b = read_predictions_csv(path_a), read_predictions_csv(path_b)
    both = f"{a.source} and {b.source}"
    if a.classes != b.classes:
        raise CxrError(f"{both} have different classes: {a.classes} vs {b.classes}")
    only_a = sorted(set(a.paths) - set(b.paths))
    only_b = sorted(set(b.paths) - set(a.paths))
    if only_a or only_b:
        raise CxrError(
            f"{both} do not hold the same images: {len(only_a)} only in {a.source} (e.g. {only_a[:SHOWN]}), "
            f"{len(only_b)} only in {b.source} (e.g. {only_b[:SHOWN]}); compare runs on the same test split"
        )
    position = {p: i for i, p in enumerate(b.paths)}
    b = b.reordered(np.array([position[p] for p in a.paths], dtype=np.int64))
    differ = np.flatnonzero(a.labels != b.labels)
    if differ.size:
        examples = [f"{a.paths[i]}: {a.classes[a.labels[i]]} vs {b.classes[b.labels[i]]}" for i in differ[:SHOWN]]
        raise CxrError(f"{both} label {differ.size} images differently, e.g. {examples}")
    return a, b
