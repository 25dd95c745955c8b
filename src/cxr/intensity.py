"""Intensity standardisation of a grayscale X-ray: histogram equalisation or CLAHE (scikit-image).

X-rays from different scanners and hospitals differ in exposure, contrast curve and post-processing.
Mapping every image to a standard intensity distribution before the network sees it removes part of
that difference. The method is part of the checkpoint's preprocessing record
(`cxr.transforms.Preprocessing.intensity`), so training, evaluation, prediction, serving, exports and
Grad-CAM apply the same one. Torch-free.

- `equalize`: global histogram equalisation (`skimage.exposure.equalize_hist`, 256 bins);
- `clahe`: contrast-limited adaptive histogram equalisation (`skimage.exposure.equalize_adapthist`,
  tiles of 1/8 of the image side, clip limit `CLAHE_CLIP`), the usual choice for chest X-rays.
"""

from __future__ import annotations

import numpy as np

from cxr.config import INTENSITY_METHODS
from cxr.errors import CxrError

CLAHE_CLIP = 0.01  # skimage's default clip limit (a fraction of the tile's pixel count)


def _exposure():  # noqa: ANN202 - the skimage module, imported when a record asks for it
    try:
        from skimage import exposure
    except ImportError:
        raise CxrError("intensity standardisation (preprocessing intensity equalize/clahe) needs scikit-image: "
                       "pip install 'cxr[robust]'") from None
    return exposure


def standardize(img: np.ndarray, method: str) -> np.ndarray:
    """`img` (H, W) uint8 (or float in [0, 255], rounded) standardised by `method`; uint8 (H, W)."""
    if method not in INTENSITY_METHODS:
        raise CxrError(f"unknown intensity method {method!r}; allowed: {', '.join(INTENSITY_METHODS)}")
    pixels = np.asarray(img)
    if pixels.dtype != np.uint8:
        pixels = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    if method == "none":
        return pixels
    if pixels.ndim != 2:
        raise CxrError(f"intensity standardisation needs a grayscale (H, W) image, got shape {pixels.shape}")
    if pixels.min() == pixels.max():
        return pixels  # a flat image has no histogram to spread
    exposure = _exposure()
    if method == "equalize":
        out = exposure.equalize_hist(pixels, nbins=256)
    else:
        out = exposure.equalize_adapthist(pixels, clip_limit=CLAHE_CLIP)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
