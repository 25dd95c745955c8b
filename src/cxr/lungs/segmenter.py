"""`LungSegmenter`: grayscale chest X-rays of any size -> boolean lung masks at their own size, with QC.

Each image is resized to the model's square input (`spec.size`), run through the engine in batches,
and the lung probability map is resized back to the image's size and thresholded at 0.5. The QC
numbers (`cxr.lungs.qc`) are computed on the probability map at the model's size, where the model
made its decision. The engine is built on first use (or by `prepare()`), so loading is cheap.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cxr.errors import CxrError
from cxr.hashing import file_sha256
from cxr.lungs.qc import THRESHOLD, LungQC, lung_qc

log = logging.getLogger(__name__)

BATCH_SIZE = 32  # images per engine call


@dataclass(frozen=True)
class LungResult:
    """The lung mask of one image and its quality numbers."""

    mask: np.ndarray  # bool (H, W) at the input image's own size
    qc: LungQC  # area fraction, parts, balance, confidence, flag


def resize_gray(image: np.ndarray, size: int) -> np.ndarray:
    """A uint8 grayscale (H, W) image resized to (size, size) (bilinear, antialiased when shrinking)."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] in (1, 3, 4):
        image = np.asarray(Image.fromarray(np.ascontiguousarray(image[..., :3] if image.shape[2] != 1 else image[..., 0])).convert("L"))
    if image.ndim != 2 or min(image.shape) < 1:
        raise CxrError(f"a lung image must be a 2-D grayscale array, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise CxrError(f"a lung image must be uint8 grayscale, got {image.dtype} (read files with cxr.io.read_image)")
    if image.shape == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def resize_prob(prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A float probability map resized to `shape` (H, W), bilinear."""
    if prob.shape == shape:
        return prob
    return np.asarray(Image.fromarray(prob.astype(np.float32), mode="F").resize((shape[1], shape[0]), Image.BILINEAR))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.clip(x, -60.0, 60.0)))).astype(np.float32)


def probe_batch(size: int) -> np.ndarray:
    """Two fixed normalised inputs (a smooth pattern and its negative) for the engine parity check."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    pattern = np.sin(6 * xx) * np.cos(4 * yy) * 0.8
    return np.stack([pattern, -pattern])[:, None].astype(np.float32)


class LungSegmenter:
    """A lung model on an engine. `LungSegmenter.default()` is the packaged model (offline)."""

    def __init__(self, path: str | Path, engine: str = "auto", threads: int = 0,
                 batch_size: int = BATCH_SIZE) -> None:
        from cxr.lungs.engine import resolve_engine
        from cxr.lungs.store import load_model

        self.engine_name = resolve_engine(engine)  # a bad name fails before any work
        self.path = Path(path)
        self.model, self.spec, self.info = load_model(self.path)
        self.digest: str = file_sha256(self.path)
        self.threads = threads
        self.batch_size = max(1, int(batch_size))
        self._engine = None

    @classmethod
    def default(cls, engine: str = "auto", **kwargs: object) -> LungSegmenter:
        """The model shipped inside the package (no download)."""
        from cxr.lungs.store import default_model_path

        return cls(default_model_path(), engine=engine, **kwargs)  # type: ignore[arg-type]

    @classmethod
    def from_file(cls, path: str | Path, engine: str = "auto", **kwargs: object) -> LungSegmenter:
        """A lung model file written by `cxr lungs train` (`<out>/model.safetensors`)."""
        return cls(path, engine=engine, **kwargs)  # type: ignore[arg-type]

    @property
    def size(self) -> int:
        return self.spec.size

    def prepare(self) -> LungSegmenter:
        """Build the engine now (export, compile): the start-up cost, paid once."""
        if self._engine is None:
            from cxr.lungs.engine import build_lung_engine, check_parity
            from cxr.threads import plan_threads

            threads = plan_threads(self.threads or 0, measure=False).threads
            engine = build_lung_engine(self.engine_name, self.model, self.size, self.digest, threads)
            if engine.name != "torch":  # every export is checked against PyTorch before it draws a mask
                diff = check_parity(engine, self.model, probe_batch(self.size))
                log.debug("lungs: %s within %.1e of PyTorch", engine.describe(), diff)
            self._engine = engine
        return self

    def describe(self) -> str:
        engine = self._engine.describe() if self._engine is not None else self.engine_name
        return f"lung model {self.path.name} ({self.spec.arch} {self.spec.encoder}, {self.size} px) on {engine}"

    def probabilities(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Lung probabilities (N, S, S) float32 at the model's size, for uint8 grayscale images."""
        self.prepare()
        out = np.empty((len(images), self.size, self.size), dtype=np.float32)
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            batch = np.stack([resize_gray(im, self.size) for im in chunk])[:, None].astype(np.float32)
            logits = self._engine.run(batch / np.float32(127.5) - np.float32(1.0))  # type: ignore[union-attr]
            out[start:start + len(chunk)] = sigmoid(logits[:, 0])
        return out

    def segment(self, images: Sequence[np.ndarray]) -> list[LungResult]:
        """One `LungResult` per uint8 grayscale image (any size): the mask at the image's size, its QC."""
        images = list(images)
        probs = self.probabilities(images)
        results = []
        for image, prob in zip(images, probs, strict=True):
            shape = np.asarray(image).shape[:2]
            mask = resize_prob(prob, shape) >= THRESHOLD
            results.append(LungResult(mask=mask, qc=lung_qc(prob)))
        return results

    def segment_paths(self, paths: Iterable[str | Path]) -> list[LungResult]:
        """`segment` of image files read with `cxr.io.read_image` (an unreadable file: ImageReadError)."""
        from cxr.io import read_image

        paths = list(paths)
        results: list[LungResult] = []
        for start in range(0, len(paths), self.batch_size):
            results += self.segment([read_image(p) for p in paths[start:start + self.batch_size]])
        return results
