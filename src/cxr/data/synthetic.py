"""Synthetic, procedurally drawn chest-X-ray-like images, for the demo and the tests only.

These are NOT medical images. Each synthetic image has a dark background, a body silhouette, two
dark lung fields with soft edges, posterior and anterior ribs, clavicles, a spine and a heart shadow
(on the image's right, the patient's left in a PA view), lung markings, noise and a small pose
jitter. Each class adds its own pattern at random positions, sizes and intensities:

- COVID: bilateral, peripheral, lower-zone ground glass with clustered patchy nodules;
- Lung_Opacity: one dense lobar consolidation (one lung above or below a sharp, tilted fissure)
  with dark air bronchograms;
- Normal: clear lungs;
- Viral_Pneumonia: a diffuse fine reticular (net-like) texture in both lungs.

`make_image` draws one image with its class pattern at full strength (or at the `severity` given,
plus any faint `shared` patterns of other classes). `generate_dataset` makes the classes overlap the
way real ones do (`Overlap`): each image's pattern strength is drawn (some diseased images look
nearly normal), some images also show a faint pattern of another disease (and some Normal images
one), the quantum noise is stronger, and a few images are labelled with a class other than the one
drawn (label noise). So a classifier of the demo's size reaches a good but imperfect accuracy and
its confusion matrix, ROC and reliability diagram show real confusions. Every draw comes from the
generator of the image, so a seed gives the same images on every machine. The dataset folder holds
`SYNTHETIC.txt` (`SYNTHETIC_MARKER`): studies on it say so and never compare it with real results.

For the shortcut audit (`cxr.study.shortcut`): `masks=True` also writes each image's lung mask in the
Kaggle v4 layout (`<Class>/images/<name>.png`, `<Class>/masks/<name>.png`), and `marker="corner"`
burns a class-dependent text-like block into one corner, outside the lungs (`SHORTCUT_CORNERS`): a
shortcut a model can learn instead of the lungs, as real models learn hospital text and borders.
`marker="lungs"` puts the same block inside a lung: the control whose evidence lies in the lungs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cxr.data import synthetic_anatomy as draw
from cxr.data.discover import CANONICAL_CLASSES
from cxr.errors import CxrError
from cxr.progress import Progress

log = logging.getLogger(__name__)

CLASSES = CANONICAL_CLASSES
MIN_SIZE = 16  # smallest image side drawn
LUNG_THRESHOLD = 0.5  # the soft lung field above this is the written lung mask
SHORTCUT_CORNERS = (("top", "left"), ("top", "right"), ("bottom", "left"), ("bottom", "right"))  # per class
MARKER_SIDE = 7  # a class marker's side is 1/7 of the image side
MARKER_PLACES = ("corner", "lungs")  # where class markers go: the shortcut, or inside a lung (a control)
SYNTHETIC_MARKER = "SYNTHETIC.txt"  # written into every generated dataset's root: "these are not X-rays"
DISEASES = tuple(c for c in CLASSES if c != "Normal")


@dataclass(frozen=True)
class Overlap:
    """How much the classes of a generated dataset resemble each other (drawn per image)."""

    severity: tuple[float, float] = (0.5, 1.0)  # strength of the class pattern, uniform (1 = textbook case)
    shared: float = 0.2  # chance that an image also shows a faint pattern of another disease class
    shared_severity: tuple[float, float] = (0.1, 0.35)  # strength of that shared pattern, uniform
    label_noise: float = 0.04  # chance that an image is drawn as another class than its label says
    noise: float = 1.2  # multiplier of the quantum noise


CLEAR = Overlap(severity=(1.0, 1.0), shared=0.0, shared_severity=(0.0, 0.0), label_noise=0.0, noise=1.0)


def make_image(
    label: str,
    rng: np.random.Generator,
    size: int = 224,
    *,
    severity: float = 1.0,
    shared: Mapping[str, float] | None = None,
    noise: float = 1.0,
    marker: str | None = None,
) -> np.ndarray:
    """Draw one synthetic chest-X-ray-like uint8 (size, size) image of class `label`.

    `severity` scales the class pattern (1: full strength); `shared` adds patterns of other classes
    at the strengths given ({"COVID": 0.3}); `noise` scales the quantum noise; `marker` adds the
    class's marker (`class_marker`). The patterns have their own generator, split off first, so from
    the same generator state the four classes share anatomy, exposure and noise and differ only by
    their pattern. The smooth anatomy (the bulk of the work) is drawn at half resolution and
    resized; the fine reticular pattern, the marker and the noise are drawn at full resolution.
    """
    return make_image_and_mask(label, rng, size, severity=severity, shared=shared, noise=noise, marker=marker)[0]


def make_image_and_mask(
    label: str,
    rng: np.random.Generator,
    size: int = 224,
    *,
    severity: float = 1.0,
    shared: Mapping[str, float] | None = None,
    noise: float = 1.0,
    marker: str | None = None,
    marker_class: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`make_image` and the lung fields it drew, as a uint8 (size, size) mask (255 = lung, 0 = not).

    `marker` ("corner": the shortcut, "lungs": the same block inside a lung) draws the marker of
    `marker_class` (default `label`) from a generator spawned off `rng`, so the rest of the image is
    the one drawn without it.
    """
    if marker is not None and marker not in MARKER_PLACES:
        raise CxrError(f"unknown synthetic marker place {marker!r}; allowed: {', '.join(MARKER_PLACES)}")
    for name in (label, marker_class or label):
        if name not in CLASSES:
            raise CxrError(f"unknown synthetic class {name!r}; allowed: {', '.join(CLASSES)}")
    if size < MIN_SIZE:
        raise CxrError(f"synthetic image size must be >= {MIN_SIZE} pixels, got {size}")
    strengths = {label: float(severity)} if label != "Normal" else {}
    for name, value in (shared or {}).items():
        if name not in DISEASES:
            raise CxrError(f"unknown shared pattern {name!r}; allowed: {', '.join(DISEASES)}")
        strengths.setdefault(name, float(value))
    pattern_rng = np.random.default_rng(int(rng.integers(2**63)))
    pose = draw.pose(rng)
    coarse = draw.canvas(pose, size // 2)
    image, lungs = draw.anatomy(rng, coarse)
    fine = []
    for name, strength in strengths.items():  # the label's pattern first, then the shared ones
        if name in draw.COARSE_PATTERNS:
            image += strength * draw.COARSE_PATTERNS[name](pattern_rng, coarse, lungs)
        else:
            fine.append((name, strength))
    image = draw.resize(draw.expose(rng, image), size)
    full_lungs = draw.resize(lungs, size)
    if fine:
        fine_canvas = draw.canvas(pose, size)
        for name, strength in fine:
            image = image + strength * draw.FINE_PATTERNS[name](pattern_rng, fine_canvas, full_lungs)
    marker_rng = rng.spawn(1)[0] if marker else None  # spawning leaves rng's own draws unchanged
    image = draw.finish(rng, image, noise)
    lung_mask = full_lungs > LUNG_THRESHOLD
    if marker_rng is not None:
        class_marker(image, CLASSES.index(marker_class or label), marker_rng, marker, lung_mask)
    return image, np.where(lung_mask, 255, 0).astype(np.uint8)


def class_marker(
    image: np.ndarray, class_index: int, rng: np.random.Generator, place: str = "corner",
    lungs: np.ndarray | None = None,
) -> np.ndarray:
    """Burn the class's marker into a uint8 image (in place): a text-like block of `class_index + 1`
    bright bars, its side `1/MARKER_SIDE` of the image, jittered by a few pixels. Its pattern tells
    the class. "corner": in corner `SHORTCUT_CORNERS[class_index]`, outside the lungs (the shortcut);
    "lungs": centred in the image-left lung of the boolean mask `lungs` (evidence inside the lungs)."""
    size = image.shape[0]
    side = max(size // MARKER_SIDE, 4)
    jitter = [int(rng.integers(0, max(size // 64, 1) + 1)) for _ in range(2)]
    if place == "corner":
        top_bottom, left_right = SHORTCUT_CORNERS[class_index % len(SHORTCUT_CORNERS)]
        top = size // 40 + jitter[0] if top_bottom == "top" else size - size // 40 - jitter[0] - side
        left = size // 40 + jitter[1] if left_right == "left" else size - size // 40 - jitter[1] - side
    else:
        rows, cols = np.nonzero(lungs[:, : size // 2]) if lungs is not None else ((), ())
        centre_row, centre_col = (np.mean(rows), np.mean(cols)) if len(rows) else (size / 2, size / 4)
        top = int(centre_row) - side // 2 + jitter[0] - jitter[1]
        left = int(centre_col) - side // 2 + jitter[1] - jitter[0]
    bars = class_index + 1
    rows = np.arange(side) * (2 * bars) // side  # 2 * bars stripes: bright, dark, bright, ...
    block = np.where(rows % 2 == 0, int(rng.integers(235, 256)), int(rng.integers(0, 20)))
    image[top : top + side, left : left + side] = block.astype(np.uint8)[:, None]
    return image


@dataclass(frozen=True)
class Case:
    """What one generated image shows: the class drawn (its label may differ), strengths, shared patterns."""

    label: str  # the class the image is filed and labelled under
    drawn: str  # the class whose pattern was drawn (differs from `label` for label noise)
    severity: float
    shared: dict[str, float]


def draw_case(label: str, rng: np.random.Generator, overlap: Overlap) -> Case:
    """The case of one image of class `label` under `overlap`, drawn from `rng`."""
    drawn = label
    if rng.random() < overlap.label_noise:
        others = [c for c in CLASSES if c != label]
        drawn = others[int(rng.integers(len(others)))]
    severity = float(rng.uniform(*overlap.severity))
    shared: dict[str, float] = {}
    if rng.random() < overlap.shared:
        others = [c for c in DISEASES if c != drawn]
        shared[others[int(rng.integers(len(others)))]] = float(rng.uniform(*overlap.shared_severity))
    return Case(label, drawn, severity, shared)


def generate_dataset(
    out_dir: str | Path,
    n_per_class: int = 60,
    size: int = 224,
    seed: int = 0,
    classes: Sequence[str] = CLASSES,
    overlap: Overlap = Overlap(),  # noqa: B008 - frozen, so one shared default is safe
    *,
    masks: bool = False,
    marker: str | None = None,
) -> Path:
    """Write `n_per_class` synthetic PNGs per class to `<out_dir>/<Class>/<class>_<i>.png`; returns out_dir.

    Image `i` of a class is drawn from `default_rng([seed, position of the class in CLASSES, i])`,
    so the files do not depend on which other classes are generated. `overlap` sets how alike the
    classes are (`CLEAR`: every image a textbook case, no label noise). `masks`: the Kaggle v4
    layout instead, `<Class>/images/<class>_<i>.png` with its lung mask `<Class>/masks/<class>_<i>.png`.
    `marker`: every image carries the marker of the class it is labelled (`class_marker`): "corner"
    outside the lungs (a shortcut a model can learn instead of the lungs), "lungs" inside one.
    `SYNTHETIC.txt` in out_dir says what the folder is and lists the images whose label is not the
    class drawn.
    """
    unknown = [name for name in classes if name not in CLASSES]
    if unknown:
        raise CxrError(f"unknown synthetic classes {unknown}; allowed: {', '.join(CLASSES)}")
    if n_per_class < 1:
        raise CxrError(f"n_per_class must be >= 1, got {n_per_class}")
    out = Path(out_dir)
    jobs = [(name, i) for name in classes for i in range(n_per_class)]
    folders = {name: (Path(name, "images"), Path(name, "masks")) if masks else (Path(name), None) for name in classes}
    for images, mask_dir in folders.values():
        for folder in (images, mask_dir):
            if folder is not None:
                (out / folder).mkdir(parents=True, exist_ok=True)
    relabelled = []
    with Progress(len(jobs), "synthetic images") as bar:
        for name, i in jobs:
            rng = np.random.default_rng([seed, CLASSES.index(name), i])
            case = draw_case(name, rng, overlap)
            image, mask = make_image_and_mask(
                case.drawn, rng, size, severity=case.severity, shared=case.shared, noise=overlap.noise,
                marker=marker, marker_class=case.label,
            )
            images, mask_dir = folders[name]
            file = (images / f"{name.lower()}_{i:04d}.png").as_posix()
            Image.fromarray(image).save(out / file, compress_level=1)
            if mask_dir is not None:
                Image.fromarray(mask).save(out / mask_dir / f"{name.lower()}_{i:04d}.png", compress_level=1)
            if case.drawn != case.label:
                relabelled.append(f"{file}: labelled {case.label}, drawn as {case.drawn}")
            bar.update(1)
    _write_marker(out, seed=seed, size=size, n_per_class=n_per_class, overlap=overlap, relabelled=relabelled)
    log.info("wrote %d synthetic images (%d classes) to %s", len(jobs), len(classes), out)
    return out


def _write_marker(out: Path, *, seed: int, size: int, n_per_class: int, overlap: Overlap,
                  relabelled: list[str]) -> None:
    lines = [
        "Synthetic images drawn by cxr.data.synthetic: NOT chest X-rays, no medical meaning.",
        "Studies on this folder say so and never compare themselves with results on real data.",
        f"seed {seed}, {n_per_class} images per class, {size} px, overlap {asdict(overlap)}",
        f"label noise: {len(relabelled)} image(s) labelled with a class other than the one drawn",
        *relabelled,
    ]
    (out / SYNTHETIC_MARKER).write_text("\n".join(lines) + "\n")


def is_synthetic(data: str | Path) -> bool:
    """Whether a data folder (or the folder of a CSV manifest) was made by `generate_dataset`."""
    path = Path(data)
    folder = path if path.is_dir() else path.parent
    return (folder / SYNTHETIC_MARKER).is_file()
