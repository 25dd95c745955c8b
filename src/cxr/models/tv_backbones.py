"""torchvision classifiers as backbones (``tv:NAME``): the model without its classification head.

The torchvision model is kept whole as ``.model`` (so its state dict keys are torchvision's behind a
``model.`` prefix) minus its head: the pooling and classifier modules after the last feature map are
removed. ``num_features`` is the input width of the removed classifier's first Linear.

Layouts (`cxr.models.families.TV_LAYOUTS`) and what a stage is for each (``freeze: stages:N``):

- resnet (resnet, resnext, wide_resnet): 5 stages, the stem (conv1, bn1, relu, maxpool), layer1..layer4;
- densenet: 5 stages, the stem (conv0 .. pool0), then each dense block with the transition after it
  (the last with norm5); the map is ``relu(features(x))``, as torchvision's forward;
- regnet: 5 stages, the stem and trunk_output.block1..block4;
- features (efficientnet, mobilenet_v2/v3, convnext): one stage per child of ``features`` (convnext
  keeps its classifier's LayerNorm2d, in the last stage);
- swin: one stage per child of ``features``; norm and permute (to NCHW) join the last.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from cxr.errors import CxrError
from cxr.models.families import tv_layout
from cxr.models.stages import StageGroup, as_feature_map, groups_of_paths, replace_first_conv

TRUNKS = {  # layout -> children of the torchvision model run in order (the others are its head)
    "resnet": ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"),
    "densenet": ("features",),
    "regnet": ("stem", "trunk_output"),
    "features": ("features",),
    "swin": ("features", "norm", "permute"),
}
KEPT_NORM = "classifier"  # convnext: classifier = (LayerNorm2d, Flatten, Linear); its norm is kept
# torchvision's densenet files use the old names 'norm.1' for 'norm1' (torchvision remaps them the same way)
_DENSENET_OLD_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class TorchvisionBackbone(nn.Module):
    """A torchvision classifier cut before its head: ``forward_features(x) -> (N, num_features, h, w)``."""

    def __init__(self, name: str, model: nn.Module, layout: str, library_params: int | None = None) -> None:
        super().__init__()
        self.name, self.layout = name, layout
        # the torchvision model as published (3 input channels, classifier included)
        self.library_params = library_params if library_params is not None else _params(model)
        self.trunk = TRUNKS[layout] + ((KEPT_NORM,) if layout == "features" and name.startswith("convnext") else ())
        head = [(n, m) for n, m in model.named_children() if n not in self.trunk]
        if KEPT_NORM in self.trunk:  # keep classifier[0] under its own key, drop the rest
            norm, *rest = model.classifier
            head += [(f"{KEPT_NORM}.{i + 1}", m) for i, m in enumerate(rest)]
            model.classifier = nn.Sequential(norm)
        linears = [m for _, h in head for m in h.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise CxrError(f"torchvision {name}: found no classifier to read the feature width from")
        self.num_features = linears[0].in_features
        self.head_names = [n for n, _ in head]
        self.head_params = sum(_params(m) for _, m in head)
        for child in [n for n, _ in model.named_children() if n not in self.trunk]:  # the head
            delattr(model, child)
        self.model = model
        self.cam_layer = self._stage_paths()[-1][-1]

    def _stage_paths(self) -> list[list[str]]:
        model = self.model
        if self.layout == "resnet":
            return [["conv1", "bn1", "relu", "maxpool"], *([f"layer{i}"] for i in range(1, 5))]
        if self.layout == "regnet":
            return [["stem"], *([f"trunk_output.{n}"] for n, _ in model.trunk_output.named_children())]
        children = [f"features.{n}" for n, _ in model.features.named_children()]
        if self.layout == "densenet":
            groups: list[list[str]] = [[]]
            for path in children:
                if path.split(".")[-1].startswith("denseblock"):
                    groups.append([])
                groups[-1].append(path)
            return groups
        groups = [[path] for path in children]
        groups[-1] += [n for n in self.trunk if n != "features"]
        return groups

    @property
    def stages(self) -> list[StageGroup]:
        """The layout's stages (module docstring); together they hold every parameter."""
        return groups_of_paths(self.model, self._stage_paths())

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image batch (N, C, H, W) -> the last feature map (N, num_features, h, w)."""
        for name in self.trunk:
            x = getattr(self.model, name)(x)
        return F.relu(x) if self.layout == "densenet" else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)

    def to_map(self, out: torch.Tensor, x: torch.Tensor, layer: str = "") -> torch.Tensor:
        """The output of layer `layer` as (N, C, h, w): a Swin's layers before ``permute`` are NHWC."""
        nhwc = self.layout == "swin" and layer.split(".")[-1] != "permute"
        return as_feature_map(out, channels_last=nhwc, prefix_tokens=0, grid=None)

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """torchvision-named tensors -> this module's names (``model.`` prefix, old densenet names);
        keys that match nothing keep their name, so the load report shows them as they were."""
        own = self.state_dict()
        out = {}
        for key, tensor in state.items():
            if self.layout == "densenet":
                key = _DENSENET_OLD_KEY.sub(r"\1\2", key)
            out[f"model.{key}" if f"model.{key}" in own else key] = tensor
        return out

    def describe_params(self) -> str:
        """The parameter count as torchvision knows it, and what was removed, for `cxr model summary`."""
        return (f"torchvision {self.name} without its classifier ({', '.join(self.head_names)}: "
                f"{self.head_params:,}); torchvision's model has {self.library_params:,}")


def create_tv_backbone(name: str, in_chans: int = 3) -> TorchvisionBackbone:
    """A freshly initialised ``tv:NAME`` backbone (`in_chans` 1 for torchxrayvision's one-channel weights)."""
    import torchvision

    layout = tv_layout(name)
    if layout is None:
        raise CxrError(f"torchvision model {name!r} has no cxr layout")
    model = torchvision.models.get_model(name, weights=None)
    published = _params(model)
    if in_chans != 3:
        replace_first_conv(model, in_chans)
    return TorchvisionBackbone(name, model, layout, published)
