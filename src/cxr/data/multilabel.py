"""Multi-label datasets: several findings per image (NIH ChestX-ray14, CheXpert, MIMIC-CXR, PadChest).

Two manifest styles are read:
- NIH: a `label` column holding findings joined by '|' (`Effusion|Cardiomegaly`), `No Finding` for none;
- CheXpert: one column per finding holding 1 (present), 0 (absent), -1 (uncertain) or blank (not
  mentioned, counted absent), beside `path` (and optionally `group`, e.g. the patient id).

An image's findings are kept as ONE label string in the split rows and split.csv, so the run-folder
contract stays `path,label,split,group`: findings joined by '|' in the findings' order, an uncertain
one marked with a trailing '?' (unlabelled: left out of its loss and metrics), `No Finding` for none.
The uncertain policy decides what a -1 becomes: `ignore` ('?'), `zeros` (absent) or `ones` (present).
Torch-free.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from cxr.config import UNCERTAIN_POLICIES
from cxr.errors import CxrError
from cxr.rundir import SPLITS, SplitCounts, SplitRow

NO_FINDING = "No Finding"
SEPARATOR = "|"
UNCERTAIN = "?"
BINARY_VALUES = {"1": 1, "1.0": 1, "0": 0, "0.0": 0, "-1": -1, "-1.0": -1, "": 0}
RESERVED_COLUMNS = frozenset({"path", "label", "group", "mask", "lung_box", "patient", "study"})


def split_findings(label: str) -> list[str]:
    """'Effusion|Mass' -> ['Effusion', 'Mass']; 'No Finding' (or empty) -> []."""
    parts = [part.strip() for part in label.split(SEPARATOR)]
    return [part for part in parts if part and part != NO_FINDING]


def label_names(label: str) -> list[str]:
    """The findings an image has (uncertain ones included, unmarked), or [`No Finding`]."""
    return [part.rstrip(UNCERTAIN) for part in split_findings(label)] or [NO_FINDING]


def is_nih_style(labels: Iterable[str]) -> bool:
    """True when some label joins several findings with '|' (a single-label column never does)."""
    return any(SEPARATOR in label for label in labels)


def binary_columns(columns: Sequence[str], rows: Sequence[dict[str, str]]) -> list[str]:
    """The CheXpert-style finding columns: every non-reserved column whose cells are all 1/0/-1/blank."""
    found = []
    for column in columns:
        if column in RESERVED_COLUMNS:
            continue
        if rows and all(row.get(column, "").strip() in BINARY_VALUES for row in rows):
            found.append(column)
    return found


def encode(present: Iterable[str], uncertain: Iterable[str], findings: Sequence[str]) -> str:
    """The label string of an image: its findings in the order of `findings`, uncertain ones with '?'."""
    present, uncertain = set(present), set(uncertain)
    parts = [f for f in findings if f in present] + [f + UNCERTAIN for f in findings if f in uncertain]
    return SEPARATOR.join(parts) if parts else NO_FINDING


def from_binary_row(row: dict[str, str], columns: Sequence[str], policy: str, where: str) -> str:
    """A CheXpert-style row as a label string, -1 resolved by `policy`."""
    if policy not in UNCERTAIN_POLICIES:
        raise CxrError(f"unknown uncertain-label policy {policy!r}; allowed: {', '.join(UNCERTAIN_POLICIES)}")
    present, uncertain = [], []
    for column in columns:
        value = BINARY_VALUES.get(row.get(column, "").strip())
        if value is None:
            raise CxrError(f"{where}: column {column!r} holds {row.get(column)!r}; allowed: 1, 0, -1 or blank")
        if value == 1 or (value == -1 and policy == "ones"):
            present.append(column)
        elif value == -1 and policy == "ignore":
            uncertain.append(column)
    return encode(present, uncertain, columns)


def findings_of(labels: Iterable[str]) -> list[str]:
    """Every finding named in label strings, sorted (uncertain marks stripped)."""
    names = {part.rstrip(UNCERTAIN) for label in labels for part in split_findings(label)}
    return sorted(names)


def targets(labels: Sequence[str], findings: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(multi-hot (N, C) float32, labelled (N, C) bool) of label strings; an unknown finding is a CxrError."""
    index = {name: i for i, name in enumerate(findings)}
    y = np.zeros((len(labels), len(findings)), dtype=np.float32)
    known = np.ones((len(labels), len(findings)), dtype=bool)
    for row, label in enumerate(labels):
        for part in split_findings(label):
            name = part.rstrip(UNCERTAIN)
            if name not in index:
                raise CxrError(f"finding {name!r} of label {label!r} is not among the findings {list(findings)}")
            if part.endswith(UNCERTAIN):
                known[row, index[name]] = False
            else:
                y[row, index[name]] = 1.0
    return y, known


def manifest_labels(
    rows: Sequence[dict[str, str]], columns: Sequence[str], task: str, policy: str, where: str
) -> tuple[list[str], str, list[str]]:
    """The label string of every manifest row, the task it implies and its findings (multi-label only).

    task 'auto' is multi-label when the manifest has no `label` column but 0/1/-1 finding columns
    (CheXpert style), or a `label` column whose values join findings with '|' (NIH style).
    """
    if "label" not in columns:
        finding_columns = binary_columns(columns, rows)
        if not finding_columns or task == "multiclass":
            raise CxrError(f"{where} has no 'label' column and no 0/1/-1 finding columns; found columns: "
                           f"{', '.join(columns) or '(none)'}; required header: path,label[,group]")
        labels = [from_binary_row(row, finding_columns, policy, f"{where} line {i}")
                  for i, row in enumerate(rows, start=2)]
        return labels, "multilabel", list(finding_columns)
    labels = [row["label"] for row in rows]
    if task == "multilabel" or (task == "auto" and is_nih_style(labels)):
        findings = findings_of(labels)
        if not findings:
            raise CxrError(f"{where}: a multi-label manifest needs at least one finding; every row is {NO_FINDING!r}")
        return [encode(split_findings(label), [], findings) for label in labels], "multilabel", findings
    return labels, "multiclass", []


def finding_counts(rows: Iterable[SplitRow], findings: Sequence[str]) -> SplitCounts:
    """split -> finding -> images with it (uncertain ones not counted), and `No Finding` -> images without any."""
    counts: SplitCounts = {s: dict.fromkeys([*findings, NO_FINDING], 0) for s in SPLITS}
    for row in rows:
        present = [part for part in split_findings(row.label) if not part.endswith(UNCERTAIN)]
        per = counts.setdefault(row.split, dict.fromkeys([*findings, NO_FINDING], 0))
        for name in present or [NO_FINDING]:
            per[name] = per.get(name, 0) + 1
    return counts
