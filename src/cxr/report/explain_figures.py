"""The figure of one Grad-CAM explanation: the X-ray beside the heatmap overlay, a colour bar, and
the class and probability in the title. Used by `cxr explain` and the report's error gallery.

Plain arrays in (the uint8 image, the [0, 1] heatmap on any grid), a matplotlib `Figure` through the
Agg canvas out, so nothing touches pyplot's global state. Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cxr.errors import CxrError

COLORMAP = "jet"
ALPHA = 0.45  # weight of the heatmap over the X-ray, as `cxr.explain.overlay`
FULL_SIZE = (8.4, 4.2)  # inches: `cxr explain`
THUMBNAIL_SIZE = (6.0, 3.2)  # inches: one image of the error gallery (720 x 384 px: its text readable)
FULL_DPI, THUMBNAIL_DPI = 120, 120


def explanation_figure(
    image: np.ndarray,
    cam: np.ndarray,
    path: str | Path,
    *,
    title: str,
    thumbnail: bool = False,
    formats: Sequence[str] = ("png",),
    note: str | None = None,
) -> Path:
    """Write the X-ray (left) and the X-ray with the heatmap (right, colour bar beside it) to `path`
    (one file per format, `path` with that suffix); returns the first. `thumbnail`: small and light,
    for galleries. The heatmap is stretched over the whole image, as the network saw it resized. `note`: a
    line in red under the images (a synthetic-data model's warning)."""
    gray = np.asarray(image)
    heat = np.clip(np.asarray(cam, dtype=np.float32), 0.0, 1.0)
    if gray.ndim != 2 or heat.ndim != 2:
        raise CxrError(f"explanation_figure needs a 2-D image and heatmap, got {gray.shape} and {heat.shape}")
    fig = Figure(figsize=THUMBNAIL_SIZE if thumbnail else FULL_SIZE, layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    h, w = gray.shape
    extent = (-0.5, w - 0.5, h - 0.5, -0.5)  # the heatmap's grid stretched over the image's pixels
    for ax, label in ((left, "X-ray"), (right, "Grad-CAM")):
        ax.imshow(gray, cmap="gray", vmin=0, vmax=255, extent=extent)
        ax.set_title(label, fontsize=10 if thumbnail else 11)
        ax.set_axis_off()
    shown = right.imshow(heat, cmap=COLORMAP, vmin=0.0, vmax=1.0, alpha=ALPHA, extent=extent,
                         interpolation="bilinear")
    bar = fig.colorbar(shown, ax=right, shrink=0.85, fraction=0.08)
    bar.set_label("relative importance", fontsize=9)
    bar.ax.tick_params(labelsize=8)
    fig.suptitle(title, fontsize=10 if thumbnail else 12)
    if note:  # e.g. a synthetic-data model's warning, in red under the images
        fig.supxlabel(note, color="#b00020", fontsize=9 if thumbnail else 11, fontweight="bold")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        target = path.with_suffix(f".{fmt}")
        fig.savefig(target, format=fmt, dpi=THUMBNAIL_DPI if thumbnail else FULL_DPI, facecolor="white")
        written.append(target)
    return written[0]
