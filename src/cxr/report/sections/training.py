"""The training sections: the per-epoch history table (and whether validation loss rose after the
best epoch), the curves with the best epoch marked, and the augmented samples, each labelled."""

from __future__ import annotations

from typing import Any

from cxr.report.blocks import Block, Bold, Gallery, Heading, Image, Para, Table, not_available, para
from cxr.report.format import fmt, fmt_lr
from cxr.report.runfiles import RunFiles
from cxr.report.sections.common import TRAINING_FIGURES, figures
from cxr.rundir import HISTORY_COLUMNS, INT_HISTORY_COLUMNS, PHASE_COLUMN

MAX_AUG_IMAGES = 20  # augmented samples shown; the seed's README showed a handful
RISE_TOLERANCE = 1e-4  # a validation loss this much above the best one counts as a rise


def overfitting(history: list[dict[str, float]], best_epoch: Any) -> Para | None:
    """The sentence saying how far validation loss rose after the best epoch, or None (no rise)."""
    losses = [(int(r["epoch"]), r["val_loss"]) for r in history
              if r.get("epoch") is not None and isinstance(r.get("val_loss"), float)]
    if not losses:
        return None
    best = next(((e, v) for e, v in losses if e == best_epoch), min(losses, key=lambda ev: ev[1]))
    after = [(e, v) for e, v in losses if e > best[0]]
    if not after:
        return None
    peak = max(after, key=lambda ev: ev[1])
    last = after[-1]
    if peak[1] - best[1] <= RISE_TOLERANCE:
        return para(f"Validation loss did not rise after the best epoch ({best[0]}, {fmt(best[1], 4)}).")
    if peak[0] == last[0]:
        rise = f"by {fmt(peak[1] - best[1], 4)} (to {fmt(peak[1], 4)} at epoch {peak[0]}, the last)"
    else:
        rise = (f"by up to {fmt(peak[1] - best[1], 4)} (to {fmt(peak[1], 4)} at epoch {peak[0]}; at the last"
                f" epoch, {last[0]}, {fmt(last[1] - best[1], 4)} above it)")
    return para(
        Bold("Over-fitting:"), f" validation loss rose after the best epoch {best[0]} ({fmt(best[1], 4)}) {rise}:"
        " the later epochs fitted the training split at the expense of new images. best.pt is epoch"
        f" {best[0]}, the one evaluated."
    )


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
        note = overfitting(files.history, (files.metrics or {}).get("best_epoch"))
        if note is not None:
            blocks.append(note)
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
        f"Training images after the seed's augmentation (showing {len(shown)} of {len(files.aug_images)}),"
        " each with its class."
    ))
    blocks.append(Gallery(tuple(Image(p, files.rel(p), files.aug_labels.get(p.name, p.stem)) for p in shown)))
    return blocks
