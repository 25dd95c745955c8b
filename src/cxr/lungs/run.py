"""What `cxr lungs train` and `cxr lungs eval` do, as functions: train, save, score, report.

A training folder holds `model.safetensors` (the model, its spec and training record in the
metadata), `split.csv` (which pairs trained and which were held out), and the held-out evaluation:
`metrics.json`, `per_image.csv`, `overlays.png`, `report.md`.
"""

from __future__ import annotations

import csv
import logging
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from cxr.errors import CxrError
from cxr.lungs.evaluate import Evaluation, evaluate
from cxr.lungs.model import LungModelSpec, TrainSettings
from cxr.lungs.pairs import Pair
from cxr.lungs.report import write_report
from cxr.lungs.segmenter import LungSegmenter
from cxr.lungs.store import load_model, save_model
from cxr.lungs.train import fit

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
GRID_IMAGES = 24  # overlays in the report


def write_split(out: Path, train: Sequence[Pair], test: Sequence[Pair]) -> Path:
    path = out / "split.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "mask", "split"])
        writer.writerows([str(p.image), str(p.mask), "train"] for p in train)
        writer.writerows([str(p.image), str(p.mask), "heldout"] for p in test)
    return path


def train_and_report(train: Sequence[Pair], test: Sequence[Pair], out: Path, spec: LungModelSpec,
                     settings: TrainSettings, *, engine: str = "auto", split: str = "",
                     threads: int = 1, init: Path | None = None) -> tuple[Path, Evaluation | None]:
    """Train on `train` (from the lung model file `init` when given, whose spec then wins), save
    `out/model.safetensors`, score `test` and write the report there."""
    if len(train) < 2:
        raise CxrError(f"lung training needs at least 2 image/mask pairs, got {len(train)}")
    torch.set_num_threads(max(1, threads))
    start = time.perf_counter()
    start_model = None
    if init is not None:
        start_model, spec, _ = load_model(init)
    model, history = fit(train, spec, settings, init=start_model)
    info: dict[str, Any] = {"model": MODEL_FILE, "trained_on": len(train), "heldout": len(test), "split": split,
                            "sites": sorted({p.site for p in train}), "settings": asdict(settings),
                            "init": str(init) if init else "ImageNet encoder" if settings.pretrained else "scratch",
                            "train_seconds": round(time.perf_counter() - start, 1), "machine": platform.machine(),
                            "history": history}
    path = save_model(model, spec, out / MODEL_FILE, info=info)
    write_split(out, train, test)
    if not test:
        log.info("lungs: nothing held out; no evaluation")
        return path, None
    segmenter = LungSegmenter.from_file(path, engine=engine, threads=threads)
    evaluation, shown = evaluate(segmenter, test, keep_images=GRID_IMAGES)
    write_report(out, evaluation, shown, {**info, "engine": segmenter.describe(), "digest": segmenter.digest})
    return path, evaluation


def evaluate_and_report(model: Path | None, pairs: Sequence[Pair], out: Path | None, *, engine: str = "auto",
                        threads: int = 0) -> Evaluation:
    """Score a lung model file (None: the packaged default) on `pairs`; the report in `out` if given."""
    segmenter = LungSegmenter.default(engine, threads=threads) if model is None else \
        LungSegmenter.from_file(model, engine, threads=threads)
    evaluation, shown = evaluate(segmenter, pairs, keep_images=GRID_IMAGES if out else 0)
    if out is not None:
        write_report(out, evaluation, shown, {"model": str(segmenter.path), "digest": segmenter.digest,
                                              "engine": segmenter.describe(), "pairs": len(pairs)})
    return evaluation
