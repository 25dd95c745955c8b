"""The training sections: the per-epoch history table and the augmented samples."""

from __future__ import annotations

from cxr.report.blocks import Block, Gallery, Heading, Image, Table, not_available, para
from cxr.report.format import fmt, fmt_lr
from cxr.report.runfiles import RunFiles
from cxr.report.sections.common import TRAINING_FIGURES, figures
from cxr.rundir import HISTORY_COLUMNS, INT_HISTORY_COLUMNS, PHASE_COLUMN

MAX_AUG_IMAGES = 20  # augmented samples shown; the seed's README showed a handful


def _history_cell(column: str, value: float | None) -> str:
    if value is None:
        return "" if column in INT_HISTORY_COLUMNS else "n/a"
    if column in INT_HISTORY_COLUMNS:
        return str(int(value))
    if column == "lr":
        return fmt_lr(value)
    return fmt(value, 1 if column == "seconds" else 4)


def training(files: RunFiles) -> list[Block]:
    """Training history: one row per epoch in the contract's column order, then the curves."""
    blocks: list[Block] = [Heading(2, "Training history")]
    history_path = files.run.history
    if files.history is None:
        blocks.append(not_available("Training history", files.reason(history_path, f"{history_path.name} missing")))
    elif not files.history:
        blocks.append(para(f"Training history: {history_path.name} holds no epochs."))
    else:
        known = (*HISTORY_COLUMNS, PHASE_COLUMN)
        columns = [c for c in known if c in files.history_columns]
        columns += [c for c in files.history_columns if c not in known]
        rows = tuple(tuple(_history_cell(c, row.get(c)) for c in columns) for row in files.history)
        blocks.append(para("One row per epoch; precision and recall with Keras semantics."))
        blocks.append(Table(tuple(columns), rows))
    blocks.extend(figures(files, TRAINING_FIGURES))
    return blocks


def augmented(files: RunFiles) -> list[Block]:
    """Augmented training samples: a gallery of the first MAX_AUG_IMAGES."""
    blocks: list[Block] = [Heading(2, "Augmented training samples")]
    if not files.aug_images:
        blocks.append(not_available("Augmented samples", f"{files.rel(files.run.aug_images)}/ holds no PNG files"))
        return blocks
    shown = files.aug_images[:MAX_AUG_IMAGES]
    blocks.append(para(
        f"Training images after the seed's augmentation (showing {len(shown)} of {len(files.aug_images)})."
    ))
    blocks.append(Gallery(tuple(Image(p, files.rel(p), p.stem) for p in shown)))
    return blocks
