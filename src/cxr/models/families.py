"""The library backbone families of the catalog: ``timm:NAME`` and ``tv:NAME``, and torchxrayvision weights.

Torch-free at import: each lookup imports its library (timm, torchvision, and so torch) only when a
name of its family is looked up. A family member's catalog entry takes its preprocessing from the
library's own pretrained config (timm's ``pretrained_cfg`` mean/std/input size/interpolation,
torchvision's weights-enum transforms), so random, file and pretrained weights all use it.

- ``timm:NAME``: any model of ``timm.list_models()``, a pretrained tag included (``timm:convnext_tiny``,
  ``timm:resnet18.a1_in1k``); weights ``imagenet`` = that tag's pretrained file (HF hub / timm's cache).
- ``tv:NAME``: the torchvision classification models whose layout cxr knows (`TV_LAYOUTS`);
  weights ``imagenet`` = the DEFAULT weights of the torchvision enum (torch hub cache).
- ``xrv:NAME`` weights: torchxrayvision's chest-X-ray DenseNet-121 and ResNet-50 weights, for
  ``tv:densenet121`` and ``tv:resnet50``: one channel, intensities mapped to [-1024, 1024].
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from cxr.errors import CxrError
from cxr.models.catalog_types import COMMON_WEIGHTS, Backbone, InputSpec, WeightsEntry

TIMM_PREFIX, TV_PREFIX, XRV_PREFIX = "timm:", "tv:", "xrv:"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)
TV_LAYOUTS = {  # layout (cxr.models.tv_backbones) -> the torchvision names it covers
    "resnet": r"resnet\d+|resnext\d+_\w+|wide_resnet\d+_\d+",
    "densenet": r"densenet\d+",
    "regnet": r"regnet_[xy]_\w+",
    "features": r"efficientnet_\w+|mobilenet_v2|mobilenet_v3_\w+|convnext_\w+",
    "swin": r"swin_\w+",
}
TV_SUPPORTED = "resnet*, resnext*, wide_resnet*, densenet*, regnet_*, efficientnet_*, mobilenet_v2/v3, convnext_*, swin_*"
TV_HASH = re.compile(r"-([a-f0-9]+)\.")  # torch hub's convention: the sha256 prefix in the file name
XRV_WEIGHTS = {  # torchxrayvision's published weights (xrv.models.model_urls) -> the tv backbone they fit
    **{f"densenet121-res224-{d}": "densenet121" for d in ("all", "rsna", "nih", "pc", "chex", "mimic_nb", "mimic_ch")},
    "resnet50-res512-all": "resnet50",
}
XRV_RANGE = 1024.0  # torchxrayvision's input: pixels in [0, 255] mapped linearly to [-1024, 1024]
XRV_HINT = ("torchxrayvision weights xrv:NAME fit tv:densenet121 (densenet121-res224-*) and "
            "tv:resnet50 (resnet50-res512-all)")


def input_spec(mean: Any, std: Any, size: int, interpolation: str = "bilinear") -> InputSpec:
    """The spec of a mean/std normalisation: the fixed 'imagenet'/'half' modes when they match, else meanstd."""
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    interpolation = interpolation if interpolation in ("bilinear", "bicubic", "nearest", "lanczos") else "bilinear"
    for mode, (m, s) in (("imagenet", (IMAGENET_MEAN, IMAGENET_STD)), ("half", (HALF, HALF))):
        if len(mean) == 3 and all(abs(a - b) < 1e-6 for a, b in zip(mean + std, m + s, strict=True)):
            return InputSpec(mode, int(size), interpolation=interpolation)
    return InputSpec("meanstd", int(size), mean, std, channels=len(mean), interpolation=interpolation)


# ------------------------------------------------------------------------------------------ timm


def import_timm() -> Any:
    """The timm package; a CxrError says how to install it."""
    try:
        import timm
    except ImportError:
        raise CxrError("backbones timm:NAME need the package timm: pip install 'cxr[timm]'") from None
    return timm


def timm_names() -> list[str]:
    """Every timm architecture name (without pretrained tags)."""
    return list(import_timm().list_models())


@cache
def timm_backbone(name: str) -> Backbone | None:
    """The catalog entry of ``timm:NAME``, None when timm has no such model."""
    timm = import_timm()
    if not timm.is_model(name):
        return None
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        spec = InputSpec("imagenet", 224)
    else:
        spec = input_spec(cfg.mean, cfg.std, cfg.input_size[-1], cfg.interpolation)
    weights: list[WeightsEntry] = []
    source = (cfg.hf_hub_id or cfg.url or cfg.file or "") if cfg is not None else ""
    if source:
        where = f"HF hub {cfg.hf_hub_id}" if cfg.hf_hub_id else source
        weights.append(WeightsEntry("imagenet", "timm", f"timm pretrained {cfg.architecture}.{cfg.tag} ({where})",
                                    source=source, preprocessing=spec))
    return Backbone(f"{TIMM_PREFIX}{name}", "timm", spec, f"timm {name}", (*weights, *COMMON_WEIGHTS))


# ------------------------------------------------------------------------------------ torchvision


def tv_layout(name: str) -> str | None:
    """The cxr layout of a torchvision model name, None when cxr knows none for it."""
    for layout, pattern in TV_LAYOUTS.items():
        if re.fullmatch(pattern, name):
            return layout
    return None


def tv_all_names() -> list[str]:
    """torchvision's classification models."""
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def tv_names() -> list[str]:
    """The torchvision classification models that work as cxr backbones."""
    return [n for n in tv_all_names() if tv_layout(n) is not None]


@cache
def tv_backbone(name: str) -> Backbone | None:
    """The catalog entry of ``tv:NAME``; None when torchvision has no such model, a CxrError when it
    has one whose layout cxr does not know."""
    if name not in tv_all_names():
        return None
    if tv_layout(name) is None:
        raise CxrError(f"torchvision model {name!r} is not supported as a backbone (cxr knows no layout for "
                       f"it); supported: {TV_SUPPORTED}")
    import torchvision

    default = torchvision.models.get_model_weights(name).DEFAULT
    transforms = default.transforms()
    spec = input_spec(transforms.mean, transforms.std, transforms.crop_size[0], transforms.interpolation.value)
    found = TV_HASH.search(default.url.rsplit("/", 1)[-1])
    hub = WeightsEntry("imagenet", "hub", f"torchvision {type(default).__name__}.{default.name}",
                       source=default.url, preprocessing=spec, sha256_prefix=found.group(1) if found else "")
    own = [hub, *(xrv_entries(name))]
    return Backbone(f"{TV_PREFIX}{name}", "torchvision", spec, f"torchvision {name}", (*own, *COMMON_WEIGHTS))


# ------------------------------------------------------------------------------- torchxrayvision


def xrv_input(name: str) -> InputSpec:
    """torchxrayvision's preprocessing: one channel, x/255 -> [-1024, 1024], at the weights' resolution."""
    size = int(re.search(r"res(\d+)", name).group(1))  # type: ignore[union-attr]  # every XRV_WEIGHTS name has one
    return InputSpec("meanstd", size, (0.5,), (0.5 / XRV_RANGE,), channels=1)


def xrv_entries(tv_name: str) -> list[WeightsEntry]:
    """The ``xrv:NAME`` entry of a torchvision backbone (none for most)."""
    names = tuple(n for n, arch in XRV_WEIGHTS.items() if arch == tv_name)
    if not names:
        return []
    return [WeightsEntry(f"{XRV_PREFIX}NAME", "xrv",
                         f"torchxrayvision chest X-ray weights (extra cxr[xrv]): {', '.join(names)}",
                         source="package torchxrayvision", preprocessing=xrv_input(names[0]), choices=names)]
