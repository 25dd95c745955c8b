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
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from cxr.data.discover import CANONICAL_CLASSES
from cxr.errors import CxrError

log = logging.getLogger(__name__)

CLASSES = CANONICAL_CLASSES
MIN_SIZE = 16  # smallest image side drawn
NOISE_CELLS = 24  # coarse grid of the smooth noise fields, independent of the image size
RETICULAR_CELLS = 44  # finer grid whose zero crossings draw the viral-pneumonia net
BRONCHOGRAM_CELLS = 14  # coarse grid whose zero crossings draw air bronchograms in a consolidation
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


def _finish(rng: np.random.Generator, image: np.ndarray, noise: float = 1.0) -> np.ndarray:
    """A side marker and quantum noise (`noise` times the usual level); to uint8."""
    size = image.shape[0]
    if rng.random() < 0.7:
        side = max(size // 28, 2)
        top, left = rng.integers(size // 20, size // 6), rng.integers(size // 20, size - size // 20 - side)
        image[top : top + 2 * side, left : left + side] = rng.uniform(0.85, 1.0)
    image += noise * rng.uniform(0.012, 0.02) * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def make_image(
    label: str,
    rng: np.random.Generator,
    size: int = 224,
    *,
    severity: float = 1.0,
    shared: Mapping[str, float] | None = None,
    noise: float = 1.0,
) -> np.ndarray:
    """Draw one synthetic chest-X-ray-like uint8 (size, size) image of class `label`.

    `severity` scales the class pattern (1: full strength); `shared` adds patterns of other classes
    at the strengths given ({"COVID": 0.3}); `noise` scales the quantum noise. The patterns have
    their own generator, split off first, so from the same generator state the four classes share
    anatomy, exposure and noise and differ only by their pattern. The smooth anatomy (the bulk of
    the work) is drawn at half resolution and resized; the fine reticular pattern, the marker and
    the noise are drawn at full resolution.
    """
    if label not in CLASSES:
        raise CxrError(f"unknown synthetic class {label!r}; allowed: {', '.join(CLASSES)}")
    if size < MIN_SIZE:
        raise CxrError(f"synthetic image size must be >= {MIN_SIZE} pixels, got {size}")
    strengths = {label: float(severity)} if label != "Normal" else {}
    for name, value in (shared or {}).items():
        if name not in DISEASES:
            raise CxrError(f"unknown shared pattern {name!r}; allowed: {', '.join(DISEASES)}")
        strengths.setdefault(name, float(value))
    pattern_rng = np.random.default_rng(int(rng.integers(2**63)))
    pose = _pose(rng)
    coarse = _canvas(pose, size // 2)
    image, lungs = _anatomy(rng, coarse)
    fine = []
    for name, strength in strengths.items():  # the label's pattern first, then the shared ones
        if name in _COARSE_PATTERNS:
            image += strength * _COARSE_PATTERNS[name](pattern_rng, coarse, lungs)
        else:
            fine.append((name, strength))
    image = _resize(_expose(rng, image), size)
    if fine:
        canvas, full_lungs = _canvas(pose, size), _resize(lungs, size)
        for name, strength in fine:
            image = image + strength * _FINE_PATTERNS[name](pattern_rng, canvas, full_lungs)
    return _finish(rng, image, noise)


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
) -> Path:
    """Write `n_per_class` synthetic PNGs per class to `<out_dir>/<Class>/<class>_<i>.png`; returns out_dir.

    Image `i` of a class is drawn from `default_rng([seed, position of the class in CLASSES, i])`,
    so the files do not depend on which other classes are generated. `overlap` sets how alike the
    classes are (`CLEAR`: every image a textbook case, no label noise). `SYNTHETIC.txt` in out_dir
    says what the folder is and lists the images whose label is not the class drawn.
    """
    unknown = [name for name in classes if name not in CLASSES]
    if unknown:
        raise CxrError(f"unknown synthetic classes {unknown}; allowed: {', '.join(CLASSES)}")
    if n_per_class < 1:
        raise CxrError(f"n_per_class must be >= 1, got {n_per_class}")
    out = Path(out_dir)
    jobs = [(name, i) for name in classes for i in range(n_per_class)]
    for name in classes:
        (out / name).mkdir(parents=True, exist_ok=True)
    relabelled = []
    for name, i in tqdm(jobs, desc="synthetic images", unit="img", disable=None):
        rng = np.random.default_rng([seed, CLASSES.index(name), i])
        case = draw_case(name, rng, overlap)
        image = make_image(case.drawn, rng, size, severity=case.severity, shared=case.shared, noise=overlap.noise)
        file = f"{name}/{name.lower()}_{i:04d}.png"
        Image.fromarray(image).save(out / file, compress_level=1)
        if case.drawn != case.label:
            relabelled.append(f"{file}: labelled {case.label}, drawn as {case.drawn}")
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
