"""What the `run_study` benchmarks (accuracy.py, seed_recipe.py) share: their start and the data subset."""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from cxr.data.discover import discover
from cxr.malloc import reexec_with_malloc_tunables


def start(script: str, argv: list[str], args: argparse.Namespace, prefix: str, subset_seed: int) -> tuple[Path, Path]:
    """Re-execute `script` with the malloc tunables `cxr` sets (unless --no-malloc-tune), log to
    stderr, and return (output folder: --out or a new temp dir, data: DATA or its --subset manifest)."""
    if not args.no_malloc_tune:
        reexec_with_malloc_tunables([sys.executable, os.path.abspath(script), *argv])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    out = args.out or Path(tempfile.mkdtemp(prefix=prefix))
    out.mkdir(parents=True, exist_ok=True)
    data = subset_manifest(args.data, args.subset, subset_seed, out) if args.subset else args.data
    return out, data


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
