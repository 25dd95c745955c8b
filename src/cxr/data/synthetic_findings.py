"""Synthetic multi-label data: several findings drawn on one image, with an NIH-style manifest.

NOT medical images (see `cxr.data.synthetic`, whose anatomy and patterns this reuses). Each image
has each finding of `findings` (the synthetic disease patterns: COVID's ground glass, Lung_Opacity's
lobar consolidation, Viral_Pneumonia's reticular net) independently with probability `prevalence`,
each at its own strength, so images show none, one or several findings, as NIH ChestX-ray14's do.
Findings also appear faintly without being labelled (`Overlap.shared`) and a few labels are flipped
(`Overlap.label_noise`), so a classifier's per-finding AUROC is good but not perfect.

`generate_multilabel_dataset` writes `images/img_<i>.png`, the manifest `labels.csv`
(`path,label,group`: findings joined by '|', `No Finding` for none, two images per patient) and
`SYNTHETIC.txt`, so studies on it say they are synthetic.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from cxr.data.multilabel import NO_FINDING, SEPARATOR
from cxr.data.synthetic import DISEASES, SYNTHETIC_MARKER, Overlap, make_image_and_mask
from cxr.errors import CxrError
from cxr.progress import Progress

log = logging.getLogger(__name__)

MANIFEST = "labels.csv"  # the manifest's name inside the generated folder
IMAGES_PER_PATIENT = 2  # consecutive images share a `group`, so splits must keep them together
STREAM = 7  # seeds images as default_rng([seed, STREAM, i]): apart from generate_dataset's streams


def draw_findings(
    rng: np.random.Generator, findings: Sequence[str], prevalence: float, overlap: Overlap
) -> tuple[list[str], dict[str, float], list[str]]:
    """(the findings an image is labelled with, the strength of every pattern drawn on it, the
    findings whose label was flipped: drawn and not labelled, or labelled and not drawn)."""
    labelled, strengths, flipped = [], {}, []
    for name in findings:
        present = bool(rng.random() < prevalence)
        if present:
            strengths[name] = float(rng.uniform(*overlap.severity))
        elif rng.random() < overlap.shared:
            strengths[name] = float(rng.uniform(*overlap.shared_severity))  # faint, not labelled
        if rng.random() < overlap.label_noise:
            flipped.append(name)
            present = not present
        if present:
            labelled.append(name)
    return labelled, strengths, flipped


def generate_multilabel_dataset(
    out_dir: str | Path,
    n_images: int = 240,
    size: int = 224,
    seed: int = 0,
    findings: Sequence[str] = DISEASES,
    prevalence: float = 0.35,
    overlap: Overlap = Overlap(),  # noqa: B008 - frozen, so one shared default is safe
) -> Path:
    """Write `n_images` synthetic multi-label PNGs and their NIH-style manifest; returns the manifest.

    Image `i` is drawn from `default_rng([seed, STREAM, i])` (the same on every machine). `findings`:
    a subset of `cxr.data.synthetic.DISEASES`; `prevalence`: each finding's chance per image.
    """
    unknown = [name for name in findings if name not in DISEASES]
    if unknown or not findings:
        raise CxrError(f"synthetic findings must be some of {', '.join(DISEASES)}; got {list(findings)}")
    if n_images < 1:
        raise CxrError(f"n_images must be >= 1, got {n_images}")
    if not 0.0 < prevalence < 1.0:
        raise CxrError(f"prevalence must be in (0, 1), got {prevalence}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows, flipped = [], []
    with Progress(n_images, "synthetic images") as bar:
        for i in range(n_images):
            rng = np.random.default_rng([seed, STREAM, i])
            labelled, strengths, wrong = draw_findings(rng, findings, prevalence, overlap)
            image, _ = make_image_and_mask("Normal", rng, size, shared=strengths, noise=overlap.noise)
            path = f"images/img_{i:05d}.png"
            flipped += [f"{path}: {name} label flipped" for name in wrong]
            Image.fromarray(image).save(out / path, compress_level=1)
            rows.append((path, SEPARATOR.join(labelled) or NO_FINDING, f"patient_{i // IMAGES_PER_PATIENT:05d}"))
            bar.update(1)
    manifest = out / MANIFEST
    with manifest.open("w", newline="") as fh:
        csv.writer(fh).writerows([("path", "label", "group"), *rows])
    (out / SYNTHETIC_MARKER).write_text(
        "Synthetic images drawn by cxr.data.synthetic_findings: NOT chest X-rays, no medical meaning.\n"
        "Studies on this folder say so and never compare themselves with results on real data.\n"
        f"seed {seed}, {n_images} images, {size} px, findings {', '.join(findings)}, prevalence {prevalence}, "
        f"overlap {asdict(overlap)}\nlabel noise: {len(flipped)} finding label(s) differ from the patterns drawn\n"
        + "".join(f"{line}\n" for line in flipped)
    )
    log.info("wrote %d synthetic multi-label images (%s) and %s to %s", n_images, ", ".join(findings), MANIFEST, out)
    return manifest
