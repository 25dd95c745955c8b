"""Grad-CAM against lung masks: batched heatmaps, the share of their energy inside the lungs, and
overlays with the mask's outline drawn on.

`grad_cam_batch` is `cxr.explain.grad_cam` for a whole batch in one forward and one backward pass
through the head: the feature map is detached and made a leaf, and the sum of each image's chosen
logit is differentiated once (eval mode: images do not interact, so each gets its own gradient).
`cam_share` is the fraction of a heatmap's total (non-negative) energy that lies inside a mask; a
map spread evenly over the image would put the mask's area fraction there (`area_fraction`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from cxr.data.masks import Region, RegionOptions, apply_region, region_mask
from cxr.errors import CxrError
from cxr.explain import overlay
from cxr.predict import ImageInput, Predictor

OUTLINE_RGB = (0, 255, 0)  # the mask outline on overlays
_FEATURE_DIMS = 4


def grad_cam_batch(
    model: nn.Module, x: torch.Tensor, class_index: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Grad-CAM of a batch (N, 3, H, W) on the model's device: (cams (N, H, W) float32 in [0, 1] per
    image, raw (not scaled to the peak), the class explained per image (N,) and the probabilities (N, C)).

    `class_index`: per-image classes to explain (default: the predicted ones). Runs in fp32 with
    gradients on, also under `torch.no_grad()`. Returns the unscaled maps: shares do not depend on scale.
    """
    if x.dim() != _FEATURE_DIMS:
        raise CxrError(f"grad_cam_batch needs a batch (N, 3, H, W), got shape {tuple(x.shape)}")
    with torch.no_grad():  # the backbone is not differentiated: no graph through it
        feats = model.forward_features(x)
    if feats.dim() != _FEATURE_DIMS:
        raise CxrError(f"Grad-CAM needs a (N, C, h, w) feature map, got shape {tuple(feats.shape)}")
    with torch.enable_grad():
        feats = feats.detach().float().requires_grad_(True)
        logits = model.forward_head(feats).float()
        chosen = logits.argmax(dim=1) if class_index is None else class_index.to(logits.device).long()
        (grads,) = torch.autograd.grad(logits.gather(1, chosen[:, None]).sum(), feats)
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * feats.detach()).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    probs = torch.softmax(logits.detach(), dim=1)
    return cam.float(), chosen.detach(), probs


def cam_share(cam: np.ndarray | torch.Tensor, mask: np.ndarray | torch.Tensor) -> np.ndarray:
    """Share of each heatmap's energy inside its mask: (N,) from cams and masks (N, H, W) (or one of
    each, (H, W)); NaN where a heatmap is all zero (no energy to share) or the mask is empty."""
    cams = torch.as_tensor(cam, dtype=torch.float64)
    masks = torch.as_tensor(mask, dtype=torch.float64)
    if cams.shape != masks.shape:
        raise CxrError(f"heatmaps {tuple(cams.shape)} and masks {tuple(masks.shape)} differ in shape")
    if cams.dim() == 2:
        cams, masks = cams[None], masks[None]
    total = cams.sum(dim=(1, 2))
    inside = (cams * (masks > 0.5)).sum(dim=(1, 2))
    defined = (total > 0) & (masks > 0.5).any(dim=2).any(dim=1)
    share = torch.where(defined, inside / total.clamp_min(1e-300), torch.full_like(total, float("nan")))
    return share.numpy()


def area_fraction(mask: np.ndarray | torch.Tensor) -> np.ndarray:
    """The share of each mask's pixels that are lung, (N,) from (N, H, W): what an even map puts inside."""
    masks = torch.as_tensor(mask, dtype=torch.float64)
    if masks.dim() == 2:
        masks = masks[None]
    return (masks > 0.5).double().mean(dim=(1, 2)).numpy()


def outline(mask: np.ndarray) -> np.ndarray:
    """The boundary pixels of a boolean mask (inside pixels with a 4-neighbour outside), thickened once."""
    m = np.asarray(mask, dtype=bool)
    padded = np.pad(m, 1, mode="constant", constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    edge = m & ~interior
    thick = np.pad(edge, 1, mode="constant")
    return edge | thick[:-2, 1:-1] | thick[2:, 1:-1] | thick[1:-1, :-2] | thick[1:-1, 2:]


def draw_outline(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Draw a boolean mask's outline in OUTLINE_RGB on an RGB image (in place; the mask is resized to it)."""
    m = np.asarray(mask, dtype=bool)
    h, w = rgb.shape[:2]
    if m.shape != (h, w):
        m = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((w, h), Image.Resampling.NEAREST)) > 127
    rgb[outline(m)] = OUTLINE_RGB
    return rgb


def lungs_on_explanation(rgb: np.ndarray, predictor: Predictor, image: ImageInput, region: Region) -> np.ndarray:
    """An explanation's overlay with the outline of the lung `region` of `image` drawn on, in the
    coordinates of what the overlay shows (the lung crop for a lung-crop model)."""
    full = predictor.load(image)
    lungs = region_mask(region, full.shape)
    if predictor.lung_crop is not None:
        _, lungs = apply_region(full, lungs, RegionOptions(crop_margin=predictor.lung_crop))
    return draw_outline(rgb, lungs)


def overlay_with_outline(image_gray: np.ndarray, cam: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """`cxr.explain.overlay` of a heatmap (scaled to its peak here) with the mask's outline in
    OUTLINE_RGB; the mask is resized to the image when needed. RGB uint8 (H, W, 3)."""
    heat = np.asarray(cam, dtype=np.float32)
    peak = float(heat.max(initial=0.0))
    rgb = overlay(image_gray, heat / peak if peak > 0 else heat)
    return draw_outline(rgb, mask) if mask is not None else rgb
