"""Grad-CAM: which regions of the last feature map drove a class score, drawn over the X-ray.

A short implementation of our own, for any module with `forward_features(x) -> (N, C, h, w)` and
`forward_head(features) -> logits` (the `Classifier` contract). The feature map is computed once,
detached and made a leaf that requires a gradient, so no hooks are needed and the backbone is not
back-propagated through: cam = ReLU(sum_c mean_hw(d score / d A_c) * A_c), upsampled to the input.

That default explains the feature map the head pools: the last stage of every backbone family (after
its final per-position norm). `layer` (the config key ``model.cam_layer``, or ``cxr explain
--cam-layer``) names another layer instead, as a module path of the backbone's library model
(``layer3``, ``features.denseblock3``, ``stages.2``, ``blocks.5``): a forward hook then makes its
output the leaf, and the network after it is back-propagated through. Token and NHWC outputs are laid
out as (N, C, h, w) by the backbone's ``to_map``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from cxr.data.masks import Region
from cxr.errors import CxrError
from cxr.models.stages import as_feature_map, find_layer
from cxr.notices import SYNTHETIC_FIGURE_NOTE
from cxr.predict import ImageInput, Prediction, Predictor
from cxr.report.explain_figures import explanation_figure
from cxr.transforms import output_probs

OVERLAY_ALPHA = 0.45  # weight of the heatmap colour in the blend
OVERLAY_MAX_SIDE = 1024  # overlays of larger images are drawn at this size (long side)
COLORMAP = "jet"
_FEATURE_DIMS = 4


def grad_cam(
    model: nn.Module, x: torch.Tensor, class_index: int | None = None, layer: str | None = None,
    temperature: float = 1.0, multilabel: bool = False,
) -> tuple[np.ndarray, int, np.ndarray]:
    """Grad-CAM of one input.

    x: normalised input (C, H, W) or (1, C, H, W) on the model's device. class_index: the class to
    explain (default: the predicted one). layer: a backbone layer path (module docstring); None or ''
    explains the feature map the head pools. Returns (cam float32 (H, W) scaled to [0, 1], the class
    index explained, the class probabilities float64 (C,), of the logits divided by `temperature`: a
    softmax, or one sigmoid per finding when `multilabel`; the finding explained is then one logit).
    Runs in fp32 with gradients on, also when called under `torch.no_grad()`.
    """
    if x.dim() == _FEATURE_DIMS - 1:
        x = x.unsqueeze(0)
    if x.dim() != _FEATURE_DIMS or x.shape[0] != 1:
        raise CxrError(f"grad_cam explains one image of shape (C, H, W) or (1, C, H, W), got {tuple(x.shape)}")
    with torch.enable_grad():
        if layer:
            feats, logits = _hooked_forward(model, x, layer)
        else:
            feats = model.forward_features(x)
            if feats.dim() != _FEATURE_DIMS:
                raise CxrError(f"Grad-CAM needs a (N, C, h, w) feature map, got shape {tuple(feats.shape)}")
            feats = feats.detach().float().requires_grad_(True)
            logits = model.forward_head(feats).float()
        num_classes = logits.shape[1]
        if class_index is None:
            class_index = int(logits[0].argmax())
        if not 0 <= class_index < num_classes:
            raise CxrError(f"class index {class_index} out of range 0..{num_classes - 1}")
        (grads,) = torch.autograd.grad(logits[0, class_index], feats)
    if layer:
        feats, grads = _layer_map(model, feats, x, layer), _layer_map(model, grads, x, layer)
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * feats.detach()).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    peak = float(cam.max())
    cam = cam / peak if peak > 0 else torch.zeros_like(cam)
    probs = output_probs(logits.detach()[:1] / temperature, multilabel)[0].double().cpu().numpy()
    return cam.cpu().numpy().astype(np.float32), class_index, probs


def _hooked_forward(model: nn.Module, x: torch.Tensor, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(the output of backbone layer `layer` as a gradient leaf, the logits computed from it)."""
    module = find_layer(model.backbone, layer)
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, _inputs: object, out: object) -> torch.Tensor:
        if not isinstance(out, torch.Tensor):
            raise CxrError(f"model.cam_layer {layer!r} outputs a {type(out).__name__}, not a tensor; "
                           "choose a layer that outputs a feature map")
        leaf = out.detach().float().requires_grad_(True)
        captured.append(leaf)
        return leaf.clone().to(out.dtype)  # a clone, so in-place layers after it leave the leaf intact

    handle = module.register_forward_hook(hook)
    try:
        logits = model(x).float()
    finally:
        handle.remove()
    if not captured:
        raise CxrError(f"model.cam_layer {layer!r} is not run by the model's forward pass; choose another layer")
    return captured[-1], logits


def _layer_map(model: nn.Module, out: torch.Tensor, x: torch.Tensor, layer: str) -> torch.Tensor:
    """A layer's output (or its gradient) as (1, C, h, w), the way the backbone lays it out."""
    to_map = getattr(model.backbone, "to_map", None)
    if callable(to_map):
        return to_map(out, x, layer)
    return as_feature_map(out, channels_last=False, prefix_tokens=0, grid=None)


def cam_layer_of(predictor: Predictor) -> str | None:
    """The checkpoint's ``model.cam_layer`` (None: the feature map the head pools)."""
    return ((predictor.info.config or {}).get("model") or {}).get("cam_layer") or None


def overlay(image_gray: np.ndarray, cam: np.ndarray, alpha: float = OVERLAY_ALPHA, cmap: str = COLORMAP) -> np.ndarray:
    """Blend a [0, 1] heatmap (any size; resized bilinearly) over a uint8 (H, W) image -> RGB uint8 (H, W, 3)."""
    from matplotlib import colormaps

    if image_gray.ndim != 2:
        raise CxrError(f"overlay needs a grayscale (H, W) image, got shape {image_gray.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise CxrError(f"overlay alpha must be in [0, 1], got {alpha}")
    h, w = image_gray.shape
    heat = np.asarray(cam, dtype=np.float32)
    if heat.shape != (h, w):
        heat = np.asarray(Image.fromarray(heat).resize((w, h), Image.Resampling.BILINEAR))
    colour = colormaps[cmap](np.clip(heat, 0.0, 1.0))[..., :3] * 255.0
    base = np.repeat(image_gray[..., None].astype(np.float32), 3, axis=2)
    return np.clip(np.rint((1.0 - alpha) * base + alpha * colour), 0, 255).astype(np.uint8)


@dataclass
class Explanation:
    """Grad-CAM of one image: the class explained, the prediction, and the heatmap at input size."""

    class_name: str
    class_index: int
    cam: np.ndarray  # float32 (S, S) in [0, 1], on the network input grid
    prediction: Prediction
    image: np.ndarray  # the decoded uint8 (H, W) image
    note: str | None = None  # a warning drawn under the figure (a model trained on synthetic images)

    def overlay(self, max_side: int = OVERLAY_MAX_SIDE) -> np.ndarray:
        """RGB uint8 overlay on the image (long side capped at `max_side`, aspect kept).

        The network input is the image resized to a square, so the square heatmap stretched back
        to the image's own width and height lines up with it.
        """
        return overlay(_fit(self.image, max_side), self.cam)

    @property
    def title(self) -> str:
        """'Grad-CAM for COVID (p = 0.812); predicted COVID (0.812)': the class and its probability."""
        pred = self.prediction
        return (f"Grad-CAM for {self.class_name} (p = {pred.probabilities[self.class_name]:.3f}); "
                f"predicted {pred.label} ({pred.confidence:.3f})")

    def save_figure(self, path: str | Path, *, thumbnail: bool = False, title: str | None = None,
                    formats: tuple[str, ...] = ("png", "svg")) -> Path:
        """The X-ray beside the overlay, with a colour bar and the class and probability in the title
        (`cxr.report.explain_figures`); one file per format, the first returned."""
        return explanation_figure(_fit(self.image, OVERLAY_MAX_SIDE), self.cam, path, title=title or self.title,
                                  thumbnail=thumbnail, formats=formats, note=self.note)

    def to_png(self, max_side: int = OVERLAY_MAX_SIDE) -> bytes:
        """The overlay encoded as PNG."""
        buf = io.BytesIO()
        Image.fromarray(self.overlay(max_side)).save(buf, format="PNG")
        return buf.getvalue()


def explain(predictor: Predictor, image: ImageInput, class_name: str | None = None, name: str | None = None,
            layer: str | None = None, box: Region | None = None) -> Explanation:
    """Grad-CAM of `image` for `class_name` (default: the predicted class) with a predictor's model, at
    `layer` (default: the checkpoint's ``model.cam_layer``, else the feature map the head pools).
    `box`: the lung region, which a lung-crop model crops to (the explanation's image is then the crop)."""
    full = predictor.load(image, name=name)
    gray = predictor.lung_input(full, box)
    index = predictor.class_index(class_name) if class_name is not None else None
    x = predictor.preprocess(full, box).to(predictor.device)
    cam, index, probs = grad_cam(predictor.model, x, index, layer=layer or cam_layer_of(predictor),
                                 temperature=predictor.temperature, multilabel=predictor.multilabel)
    classes = predictor.classes
    source = str(image) if isinstance(image, str | Path) else name
    prediction = predictor.to_prediction(probs, source)
    return Explanation(class_name=classes[index], class_index=index, cam=cam, prediction=prediction, image=gray,
                       note=SYNTHETIC_FIGURE_NOTE if predictor.synthetic else None)


def _fit(image: np.ndarray, max_side: int) -> np.ndarray:
    h, w = image.shape
    scale = max_side / max(h, w)
    if scale >= 1.0:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
