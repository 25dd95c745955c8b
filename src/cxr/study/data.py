"""The data side of a study: discover the images, audit them, make (or reuse) the split, draw the data figures."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxr.config import RunConfig
from cxr.data.audit import audit
from cxr.data.dataset import label_targets
from cxr.data.discover import Discovery, discover
from cxr.data.masks import with_regions
from cxr.data.multilabel import finding_counts
from cxr.data.samples import write_augmented_samples as write_samples
from cxr.data.split import make_split
from cxr.errors import CxrError
from cxr.rank import is_main_process
from cxr.report import dataset_figures
from cxr.rundir import (
    RunDir,
    SplitCounts,
    SplitRow,
    read_json,
    read_split_csv,
    split_counts,
    write_json,
    write_split_csv,
)
from cxr.study.auto_lungs import crop_rows
from cxr.study.scoring import require_regions

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """Where the images are, their classes, and the split rows."""

    root: Path
    classes: list[str]
    rows: list[SplitRow]
    discovery: Discovery | None = None
    split_report: dict[str, Any] | None = None
    task: str = "multiclass"  # multilabel: `classes` are findings, row labels are cxr.data.multilabel strings

    @property
    def multilabel(self) -> bool:
        return self.task == "multilabel"

    def split(self, name: str) -> list[SplitRow]:
        return [r for r in self.rows if r.split == name]

    def counts(self) -> SplitCounts:
        """split -> class -> images (multi-label: split -> finding -> images with it, and No Finding)."""
        if self.multilabel:
            return finding_counts(self.rows, self.classes)
        return split_counts(self.rows, self.classes)

    def labels(self, split: str) -> np.ndarray:
        """Training targets of a split: class indices, or multi-label target vectors (NaN = unlabelled)."""
        return label_targets(self.split(split), self.classes, self.multilabel)


def prepare_data(
    cfg: RunConfig,
    data: Path,
    run: RunDir,
    *,
    resume: bool = False,
    split_csv: Path | None = None,
    progress: bool = True,
) -> PreparedData:
    """Discover the images and make (or reuse) the split; writes split.csv (and audit.json) into the run.

    A given `split_csv` is used as is; on resume the run's split.csv is reused, so the resumed run
    trains on exactly the same images.
    """
    found = with_regions(discover(data, task=cfg.data.task, uncertain=cfg.data.uncertain), cfg.data.masks,
                         cfg.data.boxes)  # lung masks/boxes from elsewhere
    classes = list(found.classes)
    report: dict[str, Any] | None = None
    if split_csv is not None:
        rows = read_split_csv(split_csv)
        log.info("using the split in %s (%d images)", split_csv, len(rows))
    elif resume and run.split.is_file():
        rows = read_split_csv(run.split)
        report = read_json(run.split_report) if run.split_report.is_file() else None
        log.info("resume: reusing %s (%d images)", run.split, len(rows))
    else:
        audited = audit(found, near_threshold=cfg.data.near_duplicate_threshold, progress=progress)
        for warning in audited.warnings():
            log.warning("data: %s", warning)
        if is_main_process():
            write_json(run.audit, audited.to_json())
        rows, report = make_split(
            found, ratios=tuple(cfg.data.ratios), seed=cfg.data.split_seed,
            near_threshold=cfg.data.near_duplicate_threshold, progress=progress, audit_report=audited,
        )
        if is_main_process():
            write_json(run.split_report, report)
    unknown = [] if found.task == "multilabel" else sorted({r.label for r in rows} - set(classes))
    if unknown:
        raise CxrError(f"split labels {unknown} are not classes of the data at {data}: {classes}")
    if is_main_process() and (split_csv is None or Path(split_csv).resolve() != run.split.resolve()):
        write_split_csv(rows, run.split)
    prepared = PreparedData(root=found.root, classes=classes, rows=rows, discovery=found, split_report=report,
                            task=found.task)
    if prepared.multilabel:
        label_targets(rows, classes, multilabel=True)  # every finding of the rows is known (else a CxrError)
        log.info("multi-label task (%s): %d findings %s", found.layout, len(classes), classes)
    for name in ("train", "val"):
        if not prepared.split(name):
            raise CxrError(
                f"the {name} split is empty ({len(rows)} images in all); add images or change data.ratios "
                f"(now {list(cfg.data.ratios)})"
            )
    warn_small_classes(prepared)
    if cfg.data.lung_crop:
        prepared.rows = crop_rows(rows, found.root, cfg, "data.lung_crop", progress=progress)  # automatic lungs
        require_regions(prepared.rows, "data.lung_crop")
    return prepared


def warn_small_classes(prepared: PreparedData) -> list[str]:
    """A WARNING for each class too small to appear in every split (its metrics there are missing)."""
    counts = prepared.counts()
    warnings = []
    for name in prepared.classes:
        missing = [split for split, per_class in counts.items() if not per_class.get(name)]
        if missing:
            total = sum(per_class.get(name, 0) for per_class in counts.values())
            warnings.append(f"class {name!r} has {total} image(s): none in the {' and '.join(missing)} split, so "
                            f"its {'/'.join(missing)} metrics are missing; add images of it")
    for text in warnings:
        log.warning("data: %s", text)
    return warnings


def write_dataset_figures(prepared: PreparedData, cfg: RunConfig, run: RunDir) -> list[Path]:
    """figures/bar_chart.png, pie_chart.png (images per class, all splits) and dataset_images.png."""
    counts = prepared.counts()
    totals = {c: sum(per_class.get(c, 0) for per_class in counts.values()) for c in prepared.classes}
    return dataset_figures.write_dataset_figures(prepared.root, prepared.rows, run.figures, counts=totals,
                                                 per_class=cfg.eval.grid_per_class, seed=cfg.train.seed)


def write_augmented_samples(prepared: PreparedData, cfg: RunConfig, run: RunDir) -> list[Path]:
    """aug_images/aug_*.png: training images as the training augmentation shows them (the seed's folder).

    The same writer as `cxr data augment-samples`; earlier files are replaced, so a resumed run
    does not accumulate them.
    """
    for old in run.aug_images.glob("aug_*.png"):
        old.unlink()
    train_rows = sorted(prepared.split("train"), key=lambda r: r.path)
    return write_samples(prepared.root, train_rows, cfg.eval.aug_samples, run.aug_images, cfg.augment,
                         size=cfg.data.image_size, seed=cfg.train.seed)
