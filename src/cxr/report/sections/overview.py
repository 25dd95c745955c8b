"""The first two sections: how the run was set up, and what data it saw."""

from __future__ import annotations

from cxr.report.blocks import Block, Code, Heading, Table, not_available, para
from cxr.report.format import fmt_duration, get, plain
from cxr.report.runfiles import METRICS_SPLIT_COUNTS, RunFiles
from cxr.report.sections.common import DATASET_FIGURES, class_order, figures
from cxr.report.sections.findings import finding_counts, is_multilabel_run
from cxr.rundir import SPLITS


def summary(files: RunFiles) -> list[Block]:
    """Run summary: the settings that define the run, and its device and wall time."""
    blocks: list[Block] = [Heading(2, "Run summary")]
    cfg, metrics = files.config, files.metrics or {}
    config_path = files.run.config
    if cfg is None:
        blocks.append(not_available("Configuration", files.reason(config_path, f"{config_path.name} missing")))
    rows = [
        ("Data root", get(cfg, "data.root")),
        ("Backbone", get(cfg, "model.backbone")),
        ("Weights", get(cfg, "model.weights")),
        ("Freeze", get(cfg, "model.freeze")),
        ("Head widths", get(cfg, "model.head")),
        ("Epochs (configured)", get(cfg, "train.epochs")),
        ("Epochs (run)", len(files.history) if files.history is not None else None),
        ("Best epoch (val loss)", metrics.get("best_epoch")),
        ("Batch size", get(cfg, "train.batch_size")),
        ("Optimizer, learning rate", f"{plain(get(cfg, 'train.optimizer'))}, {plain(get(cfg, 'train.lr'))}"),
        ("LR schedule", get(cfg, "train.schedule")),
        ("Class weights", get(cfg, "train.class_weights")),
        ("Split ratios (train/val/test), split seed",
         f"{plain(get(cfg, 'data.ratios'))}; {plain(get(cfg, 'data.split_seed'))}"),
        ("Training seed", get(cfg, "train.seed")),
        ("Device", metrics.get("device")),
        ("Wall time", fmt_duration(metrics["wall_seconds"]) if "wall_seconds" in metrics else None),
    ]
    blocks.append(Table(("Setting", "Value"), tuple((k, plain(v)) for k, v in rows)))
    return blocks


def _no_counts_reason(files: RunFiles) -> str:
    reasons = [files.reason(files.run.split, "no split counts")]
    if METRICS_SPLIT_COUNTS in files.problems:
        reasons.append(files.problems[METRICS_SPLIT_COUNTS])
    return "; ".join(reasons)


def dataset(files: RunFiles) -> list[Block]:
    """Dataset: images per class and split (one row per class, one column per split), then figures."""
    blocks: list[Block] = [Heading(2, "Dataset")]
    counts = files.split_counts
    if not counts:
        blocks.append(not_available("Class counts per split", _no_counts_reason(files)))
    else:
        rows = []
        for label in class_order(files):
            values = [int(counts.get(s, {}).get(label, 0)) for s in SPLITS]
            rows.append((label, *map(str, values), str(sum(values))))
        totals = [sum(counts.get(s, {}).values()) for s in SPLITS]
        rows.append(("Total", *map(str, totals), str(sum(totals))))
        what, column = ("label combination", "Label") if is_multilabel_run(files) else ("class", "Class")
        blocks.append(para(f"Images per {what} and split (from ", Code(str(files.split_counts_source)), ")."))
        blocks.append(Table((column, *SPLITS, "total"), tuple(rows)))
        blocks += finding_counts(files)
    blocks.extend(figures(files, DATASET_FIGURES))
    return blocks
