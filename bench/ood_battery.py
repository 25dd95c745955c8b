"""The out-of-distribution battery of `bench/ood.py`: pictures that are not radiographs, made from
material that packages ship, and transformed chest X-rays. Every item is written as a PNG file so
that it goes through `cxr predict`'s path (decode, colour check, gray checks, detector)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SKIMAGE_NAMES = (
    "astronaut", "cat", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
    "colorwheel", "logo", "camera", "brick", "grass", "gravel", "cell", "clock", "coins", "moon", "page", "text",
    "microaneurysms", "checkerboard", "horse", "binary_blobs", "shepp_logan_phantom",
)
WORDS = ("PATIENT", "chest", "radiograph", "Lorem ipsum dolor sit amet", "2024-01-01", "CXR", "report", "12345")


def as_uint8(image: np.ndarray) -> np.ndarray:
    """bool / float / uint8 arrays as uint8 (floats stretched to 0..255)."""
    if image.dtype == bool:
        return image.astype(np.uint8) * 255
    if image.dtype != np.uint8:
        lo, hi = float(image.min()), float(image.max())
        return np.clip((image - lo) / max(hi - lo, 1e-9) * 255, 0, 255).astype(np.uint8)
    return image


def package_pictures() -> Iterator[tuple[str, np.ndarray]]:
    """scikit-image's sample images and scikit-learn's two sample photos (those installed offline)."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    for name in SKIMAGE_NAMES:
        try:
            yield f"skimage-{name}", as_uint8(np.asarray(getattr(skimage.data, name)()))
        except Exception:  # noqa: BLE001 - a sample that needs a download is left out
            continue
    sample = load_sample_images()
    for fname, image in zip(sample.filenames, sample.images, strict=True):
        yield f"sklearn-{Path(fname).stem}", image


def drawn_pictures(seed: int, count: int = 6) -> Iterator[tuple[str, np.ndarray]]:
    """Pillow-drawn text pages and shapes, grey and colour."""
    rng = np.random.default_rng(seed)
    font = ImageFont.load_default()
    for i in range(count):
        size = (int(rng.integers(200, 600)), int(rng.integers(200, 600)))
        page = Image.new("L", size, int(rng.integers(180, 256)))
        draw = ImageDraw.Draw(page)
        for _ in range(int(rng.integers(5, 30))):
            xy = (int(rng.integers(0, size[0])), int(rng.integers(0, size[1])))
            draw.text(xy, str(rng.choice(WORDS)), fill=int(rng.integers(0, 100)), font=font)
        yield f"text-{i}", np.asarray(page)
        shapes = Image.new("RGB" if i % 2 else "L", size, (0, 0, 0) if i % 2 else int(rng.integers(0, 256)))
        draw = ImageDraw.Draw(shapes)
        for _ in range(int(rng.integers(3, 15))):
            x0, y0 = int(rng.integers(0, size[0])), int(rng.integers(0, size[1]))
            box = (x0, y0, x0 + int(rng.integers(10, 200)), y0 + int(rng.integers(10, 200)))
            fill = tuple(int(v) for v in rng.integers(0, 256, 3)) if i % 2 else int(rng.integers(0, 256))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
        yield f"shapes-{i}", np.asarray(shapes)


def noise_and_constant(seed: int) -> Iterator[tuple[str, np.ndarray]]:
    """Uniform, Gaussian and colour noise; black, white and grey images."""
    rng = np.random.default_rng(seed)
    for i in range(3):
        yield f"noise-uniform-{i}", rng.integers(0, 256, (256, 256), dtype=np.uint8)
        yield f"noise-gauss-{i}", np.clip(rng.normal(128, 40, (256, 256)), 0, 255).astype(np.uint8)
        yield f"noise-colour-{i}", rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
        yield f"noise-smooth-{i}", np.asarray(Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8))
                                              .resize((256, 256), Image.Resampling.BICUBIC))
    for name, value in (("black", 0), ("white", 255), ("grey", 128)):
        yield f"constant-{name}", np.full((256, 256), value, dtype=np.uint8)


def grey_versions(pictures: list[tuple[str, np.ndarray]], seed: int) -> Iterator[tuple[str, np.ndarray]]:
    """Each colour picture in grey (the colour check cannot help there), and square crops of the grey
    pictures: what the feature detector alone has to catch."""
    rng = np.random.default_rng(seed)
    for name, image in pictures:
        gray = np.asarray(Image.fromarray(image).convert("L")) if image.ndim == 3 else image
        if image.ndim == 3:
            yield f"{name}-grey", gray
        h, w = gray.shape
        side = min(h, w)
        if side >= 96:
            top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            yield f"{name}-grey-crop", gray[top : top + side, left : left + side]


def transformed_xrays(paths: list[Path], seed: int) -> Iterator[tuple[str, np.ndarray]]:
    """Each X-ray inverted, rotated by 90 degrees, and heavily cropped (a random window of a quarter
    of its side, the size of a few ribs)."""
    from cxr.io import read_image

    rng = np.random.default_rng(seed)
    for i, path in enumerate(paths):
        gray = read_image(path)
        yield f"inverted-{i}", 255 - gray
        yield f"rot90-{i}", np.rot90(gray).copy()
        h, w = gray.shape
        side = max(16, min(h, w) // 4)
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        yield f"crop-{i}", gray[top : top + side, left : left + side]


def write_battery(out: Path, test_paths: list[Path], seed: int = 0) -> dict[str, list[Path]]:
    """PNG files of the battery under `out`: {"non_radiograph": [...], "transformed": [...]}."""
    out.mkdir(parents=True, exist_ok=True)
    pictures = [*package_pictures(), *drawn_pictures(seed), *noise_and_constant(seed)]
    groups = {"non_radiograph": [*pictures, *grey_versions(pictures, seed)],
              "transformed": list(transformed_xrays(test_paths, seed))}
    files: dict[str, list[Path]] = {}
    for group, items in groups.items():
        files[group] = []
        for name, image in items:
            path = out / f"{group}-{name}.png"
            Image.fromarray(np.ascontiguousarray(image)).save(path)
            files[group].append(path)
    return files
