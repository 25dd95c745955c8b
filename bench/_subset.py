"""A stratified subset of a dataset as a CSV manifest, shared by the benchmark scripts."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from cxr.data.discover import discover


def subset_manifest(data: Path, n: int, seed: int, out: Path) -> Path:
    """out/subset.csv: about n images of `data` (absolute paths), the same fraction of every class
    (at least 3 each), groups kept, so that a run on it can still split every class."""
    found = discover(data)
    rng = np.random.default_rng(seed)
    by_class: dict[str, list] = {}
    for sample in found.samples:
        by_class.setdefault(sample.label, []).append(sample)
    path = out / "subset.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "group"])
        for samples in by_class.values():
            take = max(3, round(len(samples) * n / len(found.samples)))
            for i in sorted(rng.permutation(len(samples))[:take]):
                s = samples[i]
                writer.writerow([str((found.root / s.path).resolve()), s.label, s.group or ""])
    return path
