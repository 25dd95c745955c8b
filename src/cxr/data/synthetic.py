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

The patterns are strong enough for a small CNN to learn in a few epochs. Everything is drawn from
the generator passed in, so a seed gives the same images on every machine.

For the shortcut audit (`cxr.study.shortcut`): `masks=True` also writes each image's lung mask in the
Kaggle v4 layout (`<Class>/images/<name>.png`, `<Class>/masks/<name>.png`), and `marker="corner"`
burns a class-dependent text-like block into one corner, outside the lungs (`SHORTCUT_CORNERS`): a
shortcut a model can learn instead of the lungs, as real models learn hospital text and borders.
`marker="lungs"` puts the same block inside a lung: the control whose evidence lies in the lungs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cxr.data.discover import CANONICAL_CLASSES
from cxr.errors import CxrError
from cxr.progress import Progress

log = logging.getLogger(__name__)

CLASSES = CANONICAL_CLASSES
MIN_SIZE = 16  # smallest image side drawn
NOISE_CELLS = 24  # coarse grid of the smooth noise fields, independent of the image size
RETICULAR_CELLS = 44  # finer grid whose zero crossings draw the viral-pneumonia net
BRONCHOGRAM_CELLS = 14  # coarse grid whose zero crossings draw air bronchograms in a consolidation
LUNG_THRESHOLD = 0.5  # the soft lung field above this is the written lung mask
SHORTCUT_CORNERS = (("top", "left"), ("top", "right"), ("bottom", "left"), ("bottom", "right"))  # per class
MARKER_SIDE = 7  # a class marker's side is 1/7 of the image side
MARKER_PLACES = ("corner", "lungs")  # where class markers go: the shortcut, or inside a lung (a control)


@dataclass(frozen=True)
class _Pose:
    """Random placement of the patient: rotation (radians), scale, shift (normalised units)."""

    angle: float
    scale: float
    dx: float
    dy: float


@dataclass(frozen=True)
class _Canvas:
    """Normalised coordinates (x right, y down, about [-1, 1]) of every pixel, after the pose."""

    x: np.ndarray
    y: np.ndarray
    size: int


def _pose(rng: np.random.Generator) -> _Pose:
    angle = np.deg2rad(rng.uniform(-4.0, 4.0))
    return _Pose(angle, rng.uniform(0.94, 1.04), rng.uniform(-0.04, 0.04), rng.uniform(-0.04, 0.04))


def _canvas(pose: _Pose, size: int) -> _Canvas:
    """Pixel-centre grid of a size x size image, so canvases of two sizes line up under resizing."""
    axis = (np.arange(size, dtype=np.float32) + 0.5) * np.float32(2.0 / size) - 1.0
    u, v = axis[None, :] - np.float32(pose.dx), axis[:, None] - np.float32(pose.dy)
    cos, sin = np.float32(np.cos(pose.angle) / pose.scale), np.float32(np.sin(pose.angle) / pose.scale)
    return _Canvas(x=cos * u + sin * v, y=cos * v - sin * u, size=size)


def _resize(field: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a square float32 field (a new, writable array)."""
    return np.array(Image.fromarray(field, mode="F").resize((size, size), Image.Resampling.BILINEAR))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40.0, 40.0)))


def _ellipse(c: _Canvas, cx: float, cy: float, ax: float | np.ndarray, ay: float, edge: float) -> np.ndarray:
    """Soft elliptic mask: 1 inside, 0 outside, a sigmoid ramp of width ~`edge` across the border."""
    dx, dy = (c.x - cx) / ax, (c.y - cy) / ay
    return _sigmoid((1.0 - np.sqrt(dx * dx + dy * dy)) / edge)


def _gaussian(c: _Canvas, cx: float, cy: float, sigma: float) -> np.ndarray:
    dx, dy = c.x - cx, c.y - cy
    return np.exp(np.maximum((dx * dx + dy * dy) * (-0.5 / sigma**2), -30.0))


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Band-limited noise: a cells x cells normal grid upsampled bicubically to size x size."""
    small = rng.standard_normal((cells, cells), dtype=np.float32)
    return np.asarray(Image.fromarray(small, mode="F").resize((size, size), Image.Resampling.BICUBIC))


def _segment_distance(c: _Canvas, p0: tuple[float, float], p1: tuple[float, float]) -> np.ndarray:
    """Distance of every pixel to the segment p0-p1 (clavicles)."""
    ex, ey = p1[0] - p0[0], p1[1] - p0[1]
    px, py = c.x - p0[0], c.y - p0[1]
    t = np.clip((px * ex + py * ey) / (ex * ex + ey * ey), 0.0, 1.0)
    dx, dy = px - t * ex, py - t * ey
    return np.sqrt(dx * dx + dy * dy)


def _body(rng: np.random.Generator, c: _Canvas) -> np.ndarray:
    """Soft mask of the torso with sloping shoulders, and the neck."""
    half_width = rng.uniform(0.89, 0.96)
    shoulders = rng.uniform(-0.95, -0.86) + rng.uniform(0.3, 0.4) * c.x * c.x
    torso = _sigmoid((half_width - np.abs(c.x)) / 0.03) * _sigmoid((c.y - shoulders) / 0.04)
    neck = _sigmoid((rng.uniform(0.2, 0.25) - np.abs(c.x)) / 0.03)
    return np.maximum(torso, neck)


def _lungs(rng: np.random.Generator, c: _Canvas, body: np.ndarray, heart: np.ndarray) -> np.ndarray:
    """Soft mask of both lung fields: narrow apices, wide bases, the left one notched by the heart."""
    mask = np.zeros_like(c.x)
    for side in (-1.0, 1.0):
        cx, cy = side * rng.uniform(0.4, 0.44), rng.uniform(-0.14, -0.08)
        ax, ay = rng.uniform(0.28, 0.32), rng.uniform(0.6, 0.66)
        taper = 0.68 + 0.32 * np.clip((c.y - (cy - ay)) / ay, 0.0, 1.0)
        mask += _ellipse(c, cx, cy, ax * taper, ay, 0.05)
    return mask * (1.0 - heart) * body


def _cosine_bands(phase: np.ndarray) -> np.ndarray:
    """Periodic bright bands, (0.5 + 0.5 cos(2 pi phase))^3."""
    band = 0.5 + 0.5 * np.cos(2.0 * np.pi * phase)
    return band * band * band


def _ribs(rng: np.random.Generator, c: _Canvas, lungs: np.ndarray) -> np.ndarray:
    """Posterior ribs (arcs bending down laterally) and fainter anterior ribs (bending up)."""
    spacing = rng.uniform(0.17, 0.2)
    posterior = _cosine_bands((c.y - rng.uniform(0.45, 0.6) * c.x * c.x) / spacing + rng.uniform())
    anterior = _cosine_bands((c.y + rng.uniform(0.25, 0.4) * c.x * c.x) / (1.4 * spacing) + rng.uniform())
    thorax = _ellipse(c, 0.0, -0.1, 0.88, 0.74, 0.06)
    return thorax * (0.3 + 0.7 * lungs) * (0.065 * posterior + 0.03 * anterior)


def _clavicles(rng: np.random.Generator, c: _Canvas) -> np.ndarray:
    out = np.zeros_like(c.x)
    for side in (-1.0, 1.0):
        p0 = (side * 0.07, rng.uniform(-0.76, -0.7))
        p1 = (side * rng.uniform(0.6, 0.7), rng.uniform(-0.88, -0.8))
        dist = _segment_distance(c, p0, p1) * (1.0 / 0.035)
        out += np.exp(-dist * dist)
    return 0.1 * out


def _anatomy(rng: np.random.Generator, c: _Canvas) -> tuple[np.ndarray, np.ndarray]:
    """The healthy chest in [0, 1] intensity, and the lung mask the class patterns are drawn into."""
    body = _body(rng, c)
    heart = _ellipse(c, rng.uniform(0.08, 0.15), rng.uniform(0.3, 0.38), rng.uniform(0.28, 0.33),
                     rng.uniform(0.2, 0.25), 0.05)
    lungs = _lungs(rng, c, body, heart)
    spine = _sigmoid((0.07 - np.abs(c.x)) / 0.01) * (0.04 + 0.02 * np.cos(2.0 * np.pi * c.y / 0.11))
    hila = _gaussian(c, -0.17, -0.05, 0.07) + _gaussian(c, 0.17, -0.05, 0.07)
    markings = (0.035 * _smooth_noise(rng, c.size, NOISE_CELLS) + 0.08 * hila) * lungs
    image = (
        rng.uniform(0.04, 0.08)
        + body * (rng.uniform(0.54, 0.58) + 0.05 * c.y)
        - rng.uniform(0.31, 0.35) * lungs
        + 0.04 * heart
        + body * (spine + _ribs(rng, c, lungs) + _clavicles(rng, c))
        + markings
    )
    return image, lungs


def _covid(rng: np.random.Generator, c: _Canvas, lungs: np.ndarray) -> np.ndarray:
    """Ground glass along the outer margins of both lower lungs, with clustered patchy nodules."""
    outer = _sigmoid((np.abs(c.x) - rng.uniform(0.42, 0.5)) / 0.06) * _sigmoid((c.y + rng.uniform(0.0, 0.2)) / 0.1)
    patches = rng.uniform(0.1, 0.16) * outer
    for side in (-1.0, 1.0):
        for _ in range(int(rng.integers(10, 16))):
            cx, cy = side * rng.uniform(0.45, 0.72), rng.uniform(-0.1, 0.5)
            patches += rng.uniform(0.12, 0.2) * _gaussian(c, cx, cy, rng.uniform(0.03, 0.07))
    return np.minimum(patches, 0.35) * lungs


def _lung_opacity(rng: np.random.Generator, c: _Canvas, lungs: np.ndarray) -> np.ndarray:
    """A dense lobar consolidation: the part of one lung above or below a tilted fissure, with air bronchograms."""
    side = 1.0 if rng.random() < 0.5 else -1.0
    lung = lungs * _sigmoid(c.x * (side / 0.02))
    rows = c.y[lung > 0.5]
    top, bottom = (float(rows.min()), float(rows.max())) if rows.size else (-0.7, 0.5)
    upper = rng.random() < 0.5  # the lobe lies above the fissure (else below); it spans at least half the lung
    height = rng.uniform(0.5, 0.7) if upper else rng.uniform(0.3, 0.5)
    fissure_y = top + height * (bottom - top) + rng.uniform(-0.3, 0.3) * (c.x - side * 0.43)
    lobe = _sigmoid((fissure_y - c.y) * ((1.0 if upper else -1.0) / 0.012))
    airways = _smooth_noise(rng, c.size, BRONCHOGRAM_CELLS) * (1.0 / 0.3)
    density = rng.uniform(0.28, 0.38) * (1.0 - 0.3 * np.exp(-airways * airways))
    return lobe * density * lung


def _viral_pneumonia(rng: np.random.Generator, c: _Canvas, lungs: np.ndarray) -> np.ndarray:
    """A fine reticular net over both lungs (zero crossings of band-limited noise), perihilar-weighted."""
    net = np.zeros_like(c.x)
    for cells in (RETICULAR_CELLS, RETICULAR_CELLS * 3 // 2):
        noise = _smooth_noise(rng, c.size, cells) * (1.0 / 0.22)
        net += np.exp(-noise * noise)
    hilar = np.abs(c.x) - 0.24
    weight = 0.6 + 0.4 * np.exp(hilar * hilar * (-1.0 / 0.06))
    return (rng.uniform(0.12, 0.18) * np.minimum(net, 1.0) * weight + 0.03) * lungs


_Pattern = Callable[[np.random.Generator, _Canvas, np.ndarray], np.ndarray]
# Smooth patterns are drawn at half resolution with the anatomy; the fine net needs every pixel.
_COARSE_PATTERNS: dict[str, _Pattern] = {"COVID": _covid, "Lung_Opacity": _lung_opacity}
_FINE_PATTERNS: dict[str, _Pattern] = {"Viral_Pneumonia": _viral_pneumonia}


def _expose(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Random exposure: gain and offset about mid-grey, then a gamma."""
    image = (image - 0.5) * rng.uniform(0.95, 1.05) + (0.5 + rng.uniform(-0.02, 0.02))
    return np.clip(image, 0.0, 1.0) ** rng.uniform(0.92, 1.08)


def _finish(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """A side marker and quantum noise; to uint8."""
    size = image.shape[0]
    if rng.random() < 0.7:
        side = max(size // 28, 2)
        top, left = rng.integers(size // 20, size // 6), rng.integers(size // 20, size - size // 20 - side)
        image[top : top + 2 * side, left : left + side] = rng.uniform(0.85, 1.0)
    image += rng.uniform(0.012, 0.02) * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def make_image(label: str, rng: np.random.Generator, size: int = 224, *, marker: str | None = None) -> np.ndarray:
    """Draw one synthetic chest-X-ray-like uint8 (size, size) image of class `label`.

    The class pattern has its own generator, split off first, so from the same generator state the
    four classes share anatomy, exposure and noise and differ only by their pattern. The smooth
    anatomy (the bulk of the work) is drawn at half resolution and resized; the fine reticular
    pattern, the marker and the noise are drawn at full resolution. `marker`: add the class's
    marker (`class_marker`).
    """
    return make_image_and_mask(label, rng, size, marker=marker)[0]


def make_image_and_mask(
    label: str, rng: np.random.Generator, size: int = 224, *, marker: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """`make_image` and the lung fields it drew, as a uint8 (size, size) mask (255 = lung, 0 = not).

    `marker` ("corner": the shortcut, "lungs": the same block inside a lung) draws the class's
    marker (`class_marker`) from a generator spawned off `rng`, so the rest of the image is the one
    drawn without it.
    """
    if marker is not None and marker not in MARKER_PLACES:
        raise CxrError(f"unknown synthetic marker place {marker!r}; allowed: {', '.join(MARKER_PLACES)}")
    if label not in CLASSES:
        raise CxrError(f"unknown synthetic class {label!r}; allowed: {', '.join(CLASSES)}")
    if size < MIN_SIZE:
        raise CxrError(f"synthetic image size must be >= {MIN_SIZE} pixels, got {size}")
    pattern_rng = np.random.default_rng(int(rng.integers(2**63)))
    pose = _pose(rng)
    coarse = _canvas(pose, size // 2)
    image, lungs = _anatomy(rng, coarse)
    if label in _COARSE_PATTERNS:
        image += _COARSE_PATTERNS[label](pattern_rng, coarse, lungs)
    image = _resize(_expose(rng, image), size)
    lung_mask = _resize(lungs, size) > LUNG_THRESHOLD
    if label in _FINE_PATTERNS:
        image = image + _FINE_PATTERNS[label](pattern_rng, _canvas(pose, size), _resize(lungs, size))
    marker_rng = rng.spawn(1)[0] if marker else None  # spawning leaves rng's own draws unchanged
    image = _finish(rng, image)
    if marker_rng is not None:
        class_marker(image, CLASSES.index(label), marker_rng, marker, lung_mask)
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


def generate_dataset(
    out_dir: str | Path,
    n_per_class: int = 60,
    size: int = 224,
    seed: int = 0,
    classes: Sequence[str] = CLASSES,
    *,
    masks: bool = False,
    marker: str | None = None,
) -> Path:
    """Write `n_per_class` synthetic PNGs per class to `<out_dir>/<Class>/<class>_<i>.png`; returns out_dir.

    Image `i` of a class is drawn from `default_rng([seed, position of the class in CLASSES, i])`,
    so the files do not depend on which other classes are generated. `masks`: the Kaggle v4 layout
    instead, `<Class>/images/<class>_<i>.png` with its lung mask `<Class>/masks/<class>_<i>.png`.
    `marker`: every image carries its class's marker (`class_marker`): "corner" outside the lungs
    (a shortcut a model can learn instead of the lungs), "lungs" inside one (the same cue, in the lungs).
    """
    unknown = [name for name in classes if name not in CLASSES]
    if unknown:
        raise CxrError(f"unknown synthetic classes {unknown}; allowed: {', '.join(CLASSES)}")
    if n_per_class < 1:
        raise CxrError(f"n_per_class must be >= 1, got {n_per_class}")
    out = Path(out_dir)
    jobs = [(name, i) for name in classes for i in range(n_per_class)]
    folders = {name: (out / name / "images", out / name / "masks") if masks else (out / name, None) for name in classes}
    for images, mask_dir in folders.values():
        for folder in (images, mask_dir):
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
    with Progress(len(jobs), "synthetic images") as bar:
        for name, i in jobs:
            rng = np.random.default_rng([seed, CLASSES.index(name), i])
            image, mask = make_image_and_mask(name, rng, size, marker=marker)
            images, mask_dir = folders[name]
            Image.fromarray(image).save(images / f"{name.lower()}_{i:04d}.png", compress_level=1)
            if mask_dir is not None:
                Image.fromarray(mask).save(mask_dir / f"{name.lower()}_{i:04d}.png", compress_level=1)
            bar.update(1)
    log.info("wrote %d synthetic images (%d classes) to %s", len(jobs), len(classes), out)
    return out
