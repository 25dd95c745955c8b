"""Every engine built from an export is checked against PyTorch eager fp32 before it is used.

On a handful of images (the data's own when the caller has them, else synthetic chest-X-ray-like
images from `cxr.data.synthetic`), the engine's output is compared with the reference:

- logits engines: the largest absolute difference of the class probabilities, softmax of the
  logits and, for multi-label models and shifts a softmax cannot see, their sigmoids; bounded by 1e-3 for fp32 engines and 5e-2 for bf16/int8 ones. fp32 graph rewrites
  (fused convolutions, other summation orders) move probabilities by ~1e-6; a bound 1000x larger
  still catches a wrong graph (a missing normalisation or layer moves them by 0.1 or more), while
  bf16's 8-bit mantissa moved them by up to 0.03 (PyTorch's own bf16 autocast as much as OpenVINO's);
- features engines (the feature cache, where no trained head exists yet): the largest relative
  error of an image's feature vector, max_i |f_i - g_i| / |f_i| (Euclidean norms), bounded by 1e-3
  for fp32 and 0.15 for bf16. On EfficientNet-Lite0 with ImageNet weights bf16 gives 0.07-0.10
  (cosine similarity >= 0.995), PyTorch's bf16 autocast (what cxr already uses on CPUs with native
  bf16) and OpenVINO's alike; fp32 engines give ~1e-6.

Above its bound an engine is refused with a CxrError that gives both numbers.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from cxr.data.synthetic import CLASSES, make_image
from cxr.engine.base import Engine, as_input
from cxr.errors import CxrError
from cxr.transforms import Preprocessing, resize_gray, to_input

log = logging.getLogger(__name__)

FP32_TOLERANCE = 1e-3
LOW_PRECISION_TOLERANCE = 5e-2  # probabilities, bf16 and int8
LOW_PRECISION_FEATURE_TOLERANCE = 0.15  # relative feature error, bf16
PARITY_IMAGES = 8


def tolerance(precision: str, output: str = "logits") -> float:
    """The bound for an engine computing in `precision` and returning `output`."""
    if precision == "fp32":
        return FP32_TOLERANCE
    return LOW_PRECISION_FEATURE_TOLERANCE if output == "features" else LOW_PRECISION_TOLERANCE


def synthetic_inputs(pre: Preprocessing, n: int = PARITY_IMAGES, seed: int = 0) -> torch.Tensor:
    """`n` normalised synthetic X-ray-like images (every class in turn), for checks without data."""
    images = [make_image(CLASSES[i % len(CLASSES)], np.random.default_rng([seed, i]), pre.size) for i in range(n)]
    return torch.stack([to_input(resize_gray(img, pre.size), pre) for img in images])


@torch.no_grad()
def reference_output(model: nn.Module, output: str, x: torch.Tensor) -> np.ndarray:
    """PyTorch eager fp32 on the CPU: pooled features or logits, as numpy float32."""
    was_training = model.training
    model.eval()
    try:
        x = torch.from_numpy(as_input(x))
        out = model.forward_features(x).mean((2, 3)) if output == "features" else model(x)
    finally:
        model.train(was_training)
    return out.float().numpy()


def parity_error(reference: np.ndarray, candidate: np.ndarray, output: str) -> float:
    """The compared quantity of the module docstring (probabilities for logits, relative features)."""
    if reference.shape != candidate.shape:
        raise CxrError(f"engine output has shape {candidate.shape}, PyTorch's {reference.shape}")
    if output == "logits":
        ref, got = torch.from_numpy(reference).double(), torch.from_numpy(candidate).double()
        softmax = (torch.softmax(ref, 1) - torch.softmax(got, 1)).abs().max()
        sigmoid = (torch.sigmoid(ref) - torch.sigmoid(got)).abs().max()
        return float(torch.maximum(softmax, sigmoid))
    ref = reference.astype(np.float64)
    norms = np.maximum(np.linalg.norm(ref, axis=1), np.finfo(np.float32).tiny)
    return float((np.linalg.norm(ref - candidate, axis=1) / norms).max())


def check_parity(engine: Engine, model: nn.Module, x: torch.Tensor) -> float:
    """Compare `engine` with PyTorch on `x`; log the difference and raise a CxrError above the bound."""
    error = parity_error(reference_output(model, engine.output, x), engine.run(x), engine.output)
    bound = tolerance(engine.precision, engine.output)
    what = "max abs probability difference" if engine.output == "logits" else "max relative feature error"
    log.info("engine %s vs PyTorch fp32 on %d images: %s %.3g (bound %g)", engine.describe(), len(x), what,
             error, bound)
    if not error <= bound:
        raise CxrError(f"engine {engine.name} ({engine.precision}) differs from PyTorch fp32 on {len(x)} images: "
                       f"{what} {error:.3g}, above the bound {bound:g}; use --engine torch")
    return error
