"""The seed's dataset figures: class bar chart, class pie chart, a sample grid, an image grid.

Figures are built as `matplotlib.figure.Figure` objects and written with the Agg canvas, never
through pyplot's global state, so they are safe in threads, servers and tests. Never imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cxr.io import read_image

DPI = 100
_CELL_INCHES = 2.0  # side of one image in a grid
_CHART_SIZE = (8.0, 6.0)
_COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI)
    return path


def _colors(n: int) -> list[str]:
    return [_COLORS[i % len(_COLORS)] for i in range(n)]


def _display_name(label: str) -> str:
    """The class name as discovered, spelled the same in every table and figure."""
    return label


def class_bar_chart(
    counts: Mapping[str, int], path: str | Path, title: str = "Number of images per class"
) -> Path:
    """Bar chart of images per class, each bar labelled with its count."""
    names = list(counts)
    values = [int(counts[n]) for n in names]
    fig = Figure(figsize=_CHART_SIZE, layout="constrained")
    ax = fig.add_subplot()
    bars = ax.bar([_display_name(n) for n in names], values, color=_colors(len(names)))
    ax.bar_label(bars, labels=[f"{v:,}" for v in values], padding=3)
    ax.set_title(title)
    ax.set_xlabel("Class")
    ax.set_ylabel("Number of images")
    ax.margins(y=0.1)
    return _save(fig, path)


def class_pie_chart(counts: Mapping[str, int], path: str | Path, title: str = "Class distribution") -> Path:
    """Pie chart of the class shares, labelled with percentages."""
    names = list(counts)
    values = [int(counts[n]) for n in names]
    fig = Figure(figsize=_CHART_SIZE, layout="constrained")
    ax = fig.add_subplot()
    ax.pie(
        values,
        labels=[_display_name(n) for n in names],
        colors=_colors(len(names)),
        autopct="%1.1f%%",
        startangle=90,
        counterclock=False,
        wedgeprops={"edgecolor": "white"},
    )
    ax.set_title(title)
    ax.axis("equal")
    return _save(fig, path)


def sample_grid(
    images_by_class: Mapping[str, Sequence[np.ndarray]],
    path: str | Path,
    title: str = "Sample images per class",
) -> Path:
    """One row per class, its images side by side, the class name on the left of each row."""
    names = list(images_by_class)
    cols = max((len(v) for v in images_by_class.values()), default=0)
    rows = len(names)
    if rows == 0 or cols == 0:
        raise ValueError("sample_grid needs at least one image")
    fig = Figure(figsize=(cols * _CELL_INCHES + 1.0, rows * _CELL_INCHES + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for r, name in enumerate(names):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            images = images_by_class[name]
            if c < len(images):
                ax.imshow(images[c], cmap="gray", vmin=0, vmax=255)
            else:
                ax.set_axis_off()
        axes[r][0].set_ylabel(_display_name(name), fontsize=12)
    fig.suptitle(title)
    return _save(fig, path)


def image_grid(
    images: Sequence[np.ndarray],
    path: str | Path,
    titles: Sequence[str] | None = None,
    cols: int | None = None,
    title: str | None = None,
) -> Path:
    """A near-square grid of grayscale (H, W) images (uint8, or float in [0, 255]) with optional titles."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"image_grid got {len(images)} images but {len(titles)} titles")
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    fig = Figure(
        figsize=(cols * _CELL_INCHES, rows * _CELL_INCHES + (0.4 if title else 0.0)), layout="constrained"
    )
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.set_axis_off()
        if i < len(images):
            ax.imshow(np.asarray(images[i]), cmap="gray", vmin=0, vmax=255)
            if titles is not None:
                ax.set_title(titles[i], fontsize=9)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def write_dataset_figures(
    root: str | Path,
    samples: Sequence,
    out_dir: str | Path,
    counts: Mapping[str, int] | None = None,
    per_class: int = 5,
    seed: int = 0,
) -> list[Path]:
    """The seed's three dataset figures in `out_dir`: bar_chart.png, pie_chart.png, dataset_images.png.

    `samples` are objects with `.path` (relative to `root`) and `.label` (`Sample`, audit records);
    the grid shows `per_class` of them per class, chosen with `seed`. `counts` defaults to the
    samples' own class counts.
    """

    out_dir = Path(out_dir)
    by_class: dict[str, list] = {}
    for sample in sorted(samples, key=lambda s: s.path):
        by_class.setdefault(sample.label, []).append(sample)
    if counts is None:
        counts = {label: len(items) for label, items in by_class.items()}
    rng = np.random.default_rng(seed)
    images: dict[str, list[np.ndarray]] = {}
    for label in counts:
        items = by_class.get(label, [])
        chosen = (
            sorted(rng.choice(len(items), size=min(per_class, len(items)), replace=False)) if items else []
        )
        images[label] = [read_image(Path(root) / items[i].path) for i in chosen]
    paths = [
        class_bar_chart(counts, out_dir / "bar_chart.png"),
        class_pie_chart(counts, out_dir / "pie_chart.png"),
    ]
    if any(images.values()):
        paths.append(sample_grid(images, out_dir / "dataset_images.png"))
    return paths
