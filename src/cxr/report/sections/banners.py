"""The first screen of the report: where the data came from, and what must not be missed.

Right below the title: the data path and number of images (a warning banner when the images are
synthetic, with no medical meaning), and a danger banner when the backbone was frozen and never
trained (random weights): then the run is not transfer learning. Nothing when nothing is known.
"""

from __future__ import annotations

from typing import Any

from cxr.report.blocks import Block, Bold, Code, banner, para
from cxr.report.format import get
from cxr.report.runfiles import RunFiles
from cxr.report.sections.common import synthetic_run


def data_facts(files: RunFiles) -> tuple[str | None, int | None]:
    """(data path, number of images) from metrics.json, the provenance, the config and the split."""
    root: Any = None
    images: Any = None
    for record in ((files.metrics or {}).get("data"), (files.provenance or {}).get("data")):
        if isinstance(record, dict):
            root = root or record.get("root")
            images = images if images is not None else record.get("images")
    root = root or get(files.config, "data.root")
    if images is None and files.split_counts:
        images = sum(n for per_class in files.split_counts.values() for n in per_class.values())
    return (str(root) if root else None), (int(images) if isinstance(images, int | float) else None)


def untrained_backbone(files: RunFiles) -> bool:
    """Random weights, a frozen base and no fine-tuning: only the head learned anything."""
    cfg = files.config
    return (get(cfg, "model.weights") == "random" and get(cfg, "model.freeze") == "base"
            and not get(cfg, "train.finetune_epochs"))


def first_screen(files: RunFiles) -> list[Block]:
    """The data source (a banner for synthetic data) and the untrained-backbone banner."""
    blocks: list[Block] = []
    root, images = data_facts(files)
    count = f"{images:,} images" if images is not None else "number of images unknown"
    where = [Code(root), f" ({count})"] if root else [count]
    if synthetic_run(files):
        number = f"{images:,} " if images is not None else ""
        these = [f"The {number}images of ", Code(root)] if root else [f"The {number}images"]
        blocks.append(banner(
            "warning", Bold("Synthetic data, no medical meaning."), " ", *these, " were drawn by ",
            Code("cxr.data.synthetic"), ": procedurally generated, X-ray-like pictures, not X-rays. The numbers"
            " below show what the pipeline produces; they say nothing about chest X-rays, and this report does"
            " not compare them with the seed's published results."))
    elif root or images is not None:
        blocks.append(para(Bold("Data:"), " ", *where, "."))
    if untrained_backbone(files):
        blocks.append(banner(
            "danger", Bold("Frozen, untrained backbone: not transfer learning."), " The backbone kept its random"
            " initialisation (", Code("model.weights: random"), ") and was frozen (", Code("model.freeze: base"),
            "), so only the head learned, on the features of a network that never saw an image. Use ImageNet"
            " weights (", Code("--weights imagenet"), ", or ", Code("--backbone efficientnet_lite0 --weights"
            " lite0-imagenet"), ") for the seed's recipe."))
    return blocks
