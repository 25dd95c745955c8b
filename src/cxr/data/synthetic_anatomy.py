"""The drawing behind `cxr.data.synthetic`: pose, anatomy, the class patterns, exposure and noise.

Every function draws from the generator passed in; fields are float32 (size, size) arrays in
[0, 1]-ish units until `finish` turns them into uint8.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

NOISE_CELLS = 24  # coarse grid of the smooth noise fields, independent of the image size
RETICULAR_CELLS = 44  # finer grid whose zero crossings draw the viral-pneumonia net
BRONCHOGRAM_CELLS = 14  # coarse grid whose zero crossings draw air bronchograms in a consolidation


@dataclass(frozen=True)
class Pose:
    """Random placement of the patient: rotation (radians), scale, shift (normalised units)."""

    angle: float
    scale: float
    dx: float
    dy: float


@dataclass(frozen=True)
class Canvas:
    """Normalised coordinates (x right, y down, about [-1, 1]) of every pixel, after the pose."""

    x: np.ndarray
    y: np.ndarray
    size: int


def pose(rng: np.random.Generator) -> Pose:
    angle = np.deg2rad(rng.uniform(-4.0, 4.0))
    return Pose(angle, rng.uniform(0.94, 1.04), rng.uniform(-0.04, 0.04), rng.uniform(-0.04, 0.04))


def canvas(pose: Pose, size: int) -> Canvas:
    """Pixel-centre grid of a size x size image, so canvases of two sizes line up under resizing."""
    axis = (np.arange(size, dtype=np.float32) + 0.5) * np.float32(2.0 / size) - 1.0
    u, v = axis[None, :] - np.float32(pose.dx), axis[:, None] - np.float32(pose.dy)
    cos, sin = np.float32(np.cos(pose.angle) / pose.scale), np.float32(np.sin(pose.angle) / pose.scale)
    return Canvas(x=cos * u + sin * v, y=cos * v - sin * u, size=size)


def resize(field: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a square float32 field (a new, writable array)."""
    return np.array(Image.fromarray(field, mode="F").resize((size, size), Image.Resampling.BILINEAR))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40.0, 40.0)))


def _ellipse(c: Canvas, cx: float, cy: float, ax: float | np.ndarray, ay: float, edge: float) -> np.ndarray:
    """Soft elliptic mask: 1 inside, 0 outside, a sigmoid ramp of width ~`edge` across the border."""
    dx, dy = (c.x - cx) / ax, (c.y - cy) / ay
    return _sigmoid((1.0 - np.sqrt(dx * dx + dy * dy)) / edge)


def _gaussian(c: Canvas, cx: float, cy: float, sigma: float) -> np.ndarray:
    dx, dy = c.x - cx, c.y - cy
    return np.exp(np.maximum((dx * dx + dy * dy) * (-0.5 / sigma**2), -30.0))


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Band-limited noise: a cells x cells normal grid upsampled bicubically to size x size."""
    small = rng.standard_normal((cells, cells), dtype=np.float32)
    return np.asarray(Image.fromarray(small, mode="F").resize((size, size), Image.Resampling.BICUBIC))


def _segment_distance(c: Canvas, p0: tuple[float, float], p1: tuple[float, float]) -> np.ndarray:
    """Distance of every pixel to the segment p0-p1 (clavicles)."""
    ex, ey = p1[0] - p0[0], p1[1] - p0[1]
    px, py = c.x - p0[0], c.y - p0[1]
    t = np.clip((px * ex + py * ey) / (ex * ex + ey * ey), 0.0, 1.0)
    dx, dy = px - t * ex, py - t * ey
    return np.sqrt(dx * dx + dy * dy)


def _body(rng: np.random.Generator, c: Canvas) -> np.ndarray:
    """Soft mask of the torso with sloping shoulders, and the neck."""
    half_width = rng.uniform(0.89, 0.96)
    shoulders = rng.uniform(-0.95, -0.86) + rng.uniform(0.3, 0.4) * c.x * c.x
    torso = _sigmoid((half_width - np.abs(c.x)) / 0.03) * _sigmoid((c.y - shoulders) / 0.04)
    neck = _sigmoid((rng.uniform(0.2, 0.25) - np.abs(c.x)) / 0.03)
    return np.maximum(torso, neck)


def _lungs(rng: np.random.Generator, c: Canvas, body: np.ndarray, heart: np.ndarray) -> np.ndarray:
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


def _ribs(rng: np.random.Generator, c: Canvas, lungs: np.ndarray) -> np.ndarray:
    """Posterior ribs (arcs bending down laterally) and fainter anterior ribs (bending up)."""
    spacing = rng.uniform(0.17, 0.2)
    posterior = _cosine_bands((c.y - rng.uniform(0.45, 0.6) * c.x * c.x) / spacing + rng.uniform())
    anterior = _cosine_bands((c.y + rng.uniform(0.25, 0.4) * c.x * c.x) / (1.4 * spacing) + rng.uniform())
    thorax = _ellipse(c, 0.0, -0.1, 0.88, 0.74, 0.06)
    return thorax * (0.3 + 0.7 * lungs) * (0.065 * posterior + 0.03 * anterior)


def _clavicles(rng: np.random.Generator, c: Canvas) -> np.ndarray:
    out = np.zeros_like(c.x)
    for side in (-1.0, 1.0):
        p0 = (side * 0.07, rng.uniform(-0.76, -0.7))
        p1 = (side * rng.uniform(0.6, 0.7), rng.uniform(-0.88, -0.8))
        dist = _segment_distance(c, p0, p1) * (1.0 / 0.035)
        out += np.exp(-dist * dist)
    return 0.1 * out


def anatomy(rng: np.random.Generator, c: Canvas) -> tuple[np.ndarray, np.ndarray]:
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


def _covid(rng: np.random.Generator, c: Canvas, lungs: np.ndarray) -> np.ndarray:
    """Ground glass along the outer margins of both lower lungs, with clustered patchy nodules."""
    outer = _sigmoid((np.abs(c.x) - rng.uniform(0.42, 0.5)) / 0.06) * _sigmoid((c.y + rng.uniform(0.0, 0.2)) / 0.1)
    patches = rng.uniform(0.1, 0.16) * outer
    for side in (-1.0, 1.0):
        for _ in range(int(rng.integers(10, 16))):
            cx, cy = side * rng.uniform(0.45, 0.72), rng.uniform(-0.1, 0.5)
            patches += rng.uniform(0.12, 0.2) * _gaussian(c, cx, cy, rng.uniform(0.03, 0.07))
    return np.minimum(patches, 0.35) * lungs


def _lung_opacity(rng: np.random.Generator, c: Canvas, lungs: np.ndarray) -> np.ndarray:
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


def _viral_pneumonia(rng: np.random.Generator, c: Canvas, lungs: np.ndarray) -> np.ndarray:
    """A fine reticular net over both lungs (zero crossings of band-limited noise), perihilar-weighted."""
    net = np.zeros_like(c.x)
    for cells in (RETICULAR_CELLS, RETICULAR_CELLS * 3 // 2):
        noise = _smooth_noise(rng, c.size, cells) * (1.0 / 0.22)
        net += np.exp(-noise * noise)
    hilar = np.abs(c.x) - 0.24
    weight = 0.6 + 0.4 * np.exp(hilar * hilar * (-1.0 / 0.06))
    return (rng.uniform(0.12, 0.18) * np.minimum(net, 1.0) * weight + 0.03) * lungs


Pattern = Callable[[np.random.Generator, Canvas, np.ndarray], np.ndarray]
# Smooth patterns are drawn at half resolution with the anatomy; the fine net needs every pixel.
COARSE_PATTERNS: dict[str, Pattern] = {"COVID": _covid, "Lung_Opacity": _lung_opacity}
FINE_PATTERNS: dict[str, Pattern] = {"Viral_Pneumonia": _viral_pneumonia}


def expose(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Random exposure: gain and offset about mid-grey, then a gamma."""
    image = (image - 0.5) * rng.uniform(0.95, 1.05) + (0.5 + rng.uniform(-0.02, 0.02))
    return np.clip(image, 0.0, 1.0) ** rng.uniform(0.92, 1.08)


def finish(rng: np.random.Generator, image: np.ndarray, noise: float = 1.0) -> np.ndarray:
    """A side marker and quantum noise (`noise` times the usual level); to uint8."""
    size = image.shape[0]
    if rng.random() < 0.7:
        side = max(size // 28, 2)
        top, left = rng.integers(size // 20, size // 6), rng.integers(size // 20, size - size // 20 - side)
        image[top : top + 2 * side, left : left + side] = rng.uniform(0.85, 1.0)
    image += noise * rng.uniform(0.012, 0.02) * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
