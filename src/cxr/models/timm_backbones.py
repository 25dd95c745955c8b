"""timm models as backbones (``timm:NAME``): timm's unpooled model, its map pooled by the seed's head.

The model is ``timm.create_model(NAME, num_classes=0, global_pool="")``, timm's documented way to get
unpooled features: the classifier is gone, and what remains of the head (a ConvNeXt's final norm, a
MobileNetV3's 1x1 head conv) runs per position on the feature map. Its output becomes (N, C, h, w):
NCHW maps as they are, NHWC maps (Swin) permuted, transformer tokens laid out on their patch grid
(prefix tokens dropped). ``num_features`` is the model's own (``head_hidden_size``, else
``num_features``). A model that refuses ``global_pool=""`` uses its ``forward_features`` instead.

Pretrained files (weights ``imagenet``, the name's pretrained tag) come from the HF hub cache, else
timm's legacy torch hub cache (the basename of the config's ``url``), else are downloaded into the HF
cache when the network answers (`pretrained_file`).

A stage (``freeze: stages:N``) ends at each module of timm's ``feature_info`` (``layer1`` ..
``layer4`` after the stem of a ResNet, ``stages.i`` of a ConvNeXt, each of a ViT's ``blocks``): the
modules from the previous boundary up to that one, the stem in the first and the head in the last.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from cxr.errors import CxrError
from cxr.models.cache import (
    HubFile,
    fetch_hub_file,
    hf_cached_file,
    hf_download,
    hf_endpoint,
    hf_repo_folder,
    missing_file,
    torch_hub_checkpoints,
    unreachable,
)
from cxr.models.families import import_timm
from cxr.models.stages import StageGroup, as_feature_map, groups_at_boundaries

log = logging.getLogger(__name__)
_UNPOOLED_REFUSALS = (TypeError, ValueError, AssertionError, RuntimeError, NotImplementedError)
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # timm's order of preference on the hub


class TimmBackbone(nn.Module):
    """A timm model without its classifier: ``forward_features(x) -> (N, num_features, h, w)``."""

    def __init__(self, name: str, in_chans: int = 3) -> None:
        super().__init__()
        timm = import_timm()
        self.name = name
        try:
            self.model = timm.create_model(name, pretrained=False, num_classes=0, global_pool="", in_chans=in_chans)
            self.unpooled = True
        except _UNPOOLED_REFUSALS as exc:
            log.debug("timm %s refuses global_pool='' (%s): using forward_features", name, exc)
            self.model = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans)
            self.unpooled = False
        model = self.model
        hidden = getattr(model, "head_hidden_size", None) if self.unpooled else None
        self.num_features = int(hidden or model.num_features)
        self.channels_last = str(getattr(model, "output_fmt", "NCHW")).upper().endswith("NHWC")
        self.prefix_tokens = int(getattr(model, "num_prefix_tokens", 0) or 0)
        patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
        self.patch_size = tuple(int(p) for p in patch) if patch is not None else None
        self.boundaries = [str(info["module"]) for info in getattr(model, "feature_info", None) or []]
        self.cam_layer = self.boundaries[-1] if self.boundaries else ""

    @property
    def stages(self) -> list[StageGroup]:
        """One stage per ``feature_info`` module (module docstring); together every parameter."""
        return groups_at_boundaries(self.model, self.boundaries)

    def grid(self, height: int, width: int) -> tuple[int, int] | None:
        """The patch grid of an input of this size (transformers), None for others."""
        if self.patch_size is None:
            return None
        return height // self.patch_size[0], width // self.patch_size[1]

    def to_map(self, out: torch.Tensor, x: torch.Tensor, layer: str = "") -> torch.Tensor:
        """The output of any layer (NCHW, NHWC as the model's ``output_fmt``, or tokens) for input `x`
        as (N, C, h, w)."""
        return as_feature_map(out, channels_last=self.channels_last, prefix_tokens=self.prefix_tokens,
                              grid=self.grid(*x.shape[-2:]))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image batch (N, C, H, W) -> the last feature map (N, num_features, h, w)."""
        out = self.model(x) if self.unpooled else self.model.forward_features(x)
        return self.to_map(out, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """timm-named tensors -> this module's names (the ``model.`` prefix); keys that match nothing
        keep their name, so the load report shows them as they were."""
        own = self.state_dict()
        return {(f"model.{k}" if f"model.{k}" in own else k): v for k, v in state.items()}

    def describe_params(self) -> str:
        """The parameter count as timm knows it, and what was removed, for `cxr model summary`."""
        timm = import_timm()
        text = f"timm {self.name} with num_classes=0"
        try:
            with torch.device("meta"):  # shapes only: no memory, no initialisation cost
                full = timm.create_model(self.name, pretrained=False)
        except Exception:  # noqa: BLE001 - the comparison is informative only
            return text
        head = full.get_classifier()
        head_params = sum(p.numel() for p in head.parameters()) if isinstance(head, nn.Module) else 0
        total = sum(p.numel() for p in full.parameters())
        return f"{text}, i.e. without its classifier ({head_params:,}); timm's model has {total:,}"


def create_timm_backbone(name: str, in_chans: int = 3) -> TimmBackbone:
    """A freshly initialised ``timm:NAME`` backbone."""
    return TimmBackbone(name, in_chans)


def pretrained_file(name: str, spec: str = "imagenet") -> Path:
    """The pretrained file of ``timm:NAME`` (its config's tag): cached, or downloaded when possible."""
    cfg = import_timm().models.get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise CxrError(f"timm {name} has no pretrained weights; use weights random or file:PATH")
    if cfg.file and Path(cfg.file).is_file():
        return Path(cfg.file)
    hf_names = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else HF_WEIGHT_FILES
    legacy = torch_hub_checkpoints() / cfg.url.rsplit("/", 1)[-1] if cfg.url else None
    for found in [*(hf_cached_file(cfg.hf_hub_id, f) for f in hf_names if cfg.hf_hub_id), legacy]:
        if found is not None and found.is_file():
            return found
    if cfg.hf_hub_id:
        where, url = hf_repo_folder(cfg.hf_hub_id), f"{hf_endpoint()}/{cfg.hf_hub_id}/resolve/main/{hf_names[0]}"
        reason = unreachable(hf_endpoint())
        if reason is None:
            try:
                return hf_download(cfg.hf_hub_id, hf_names[0])
            except Exception as exc:  # noqa: BLE001 - hub errors of every kind mean "not downloaded"
                reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        raise missing_file(f"{spec} (timm:{name})", hf_names[0], where, url, reason)
    return fetch_hub_file(HubFile(cfg.url, "", f"timm {name}"), spec=f"{spec} (timm:{name})")
