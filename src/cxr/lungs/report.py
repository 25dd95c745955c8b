"""The lung model's report: metrics.json, per_image.csv, an overlay grid and report.md.

The grid shows held-out X-rays with the predicted lung outline (red) over the reference (green
filled); the worst images by Dice come first, so failures are seen, not averaged away.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxr.lungs.evaluate import Evaluation, Shown

GRID_COLUMNS = 6


def overlay_grid(shown: Sequence[Shown], path: Path) -> Path:
    """A PNG grid of X-rays, reference lungs (green) and predicted outlines (red)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    rows = max(1, -(-len(shown) // GRID_COLUMNS))
    fig = Figure(figsize=(2.2 * GRID_COLUMNS, 2.4 * rows), dpi=90)
    FigureCanvasAgg(fig)
    for i, (image, pred, ref, title) in enumerate(shown):
        ax = fig.add_subplot(rows, GRID_COLUMNS, i + 1)
        if image.shape != ref.shape:
            image = np.asarray(Image.fromarray(image).resize((ref.shape[1], ref.shape[0]), Image.BILINEAR))
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        ax.imshow(np.ma.masked_where(~ref, ref), cmap="summer", alpha=0.3, vmin=0, vmax=1)
        if pred.any():
            ax.contour(pred.astype(float), levels=[0.5], colors="red", linewidths=0.8)
        ax.set_title(title, fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    return path


def _fmt(entry: dict[str, Any], digits: int = 3) -> str:
    if entry.get("mean") is None:
        return "n/a"
    ci = entry.get("ci")
    interval = f" ({ci[0]:.{digits}f}-{ci[1]:.{digits}f})" if ci else ""
    return f"{entry['mean']:.{digits}f}{interval}"


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """Dice, IoU, HD95 and the QC share as text lines (for the report and the command's output)."""
    sus = summary.get("suspect", {})
    return [f"Dice {_fmt(summary['dice'])}", f"IoU {_fmt(summary['iou'])}", f"HD95 {_fmt(summary['hd95'], 1)} px",
            f"QC suspect {sus.get('n', 0)}/{summary['n']} ({sus.get('share', 0.0):.1%})"]


def write_report(out: Path, evaluation: Evaluation, shown: Sequence[Shown],
                 info: dict[str, Any]) -> Path:
    """metrics.json, per_image.csv, overlays.png and report.md in `out`; returns report.md."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({**info, "heldout": evaluation.summary}, indent=2, default=str))
    rows = evaluation.rows()
    if rows:
        with (out / "per_image.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    lines = ["# Lung segmentation model", "", f"Model: `{info.get('model', 'model.safetensors')}`", ""]
    lines += [f"- {k}: {v}" for k, v in info.items() if k not in ("history", "model")]
    lines += ["", f"## Held-out images (n = {evaluation.summary['n']}), mean with 95% bootstrap interval", ""]
    lines += [f"- {line}" for line in summary_lines(evaluation.summary)]
    if shown:
        overlay_grid(shown, out / "overlays.png")
        lines += ["", "## Overlays (worst Dice first): reference green, prediction red", "", "![overlays](overlays.png)"]
    history = info.get("history") or []
    if history:
        lines += ["", "## Training", "", "| epoch | loss | seconds |", "|---|---|---|"]
        lines += [f"| {h['epoch']} | {h['loss']:.4f} | {h['seconds']:.0f} |" for h in history]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report

