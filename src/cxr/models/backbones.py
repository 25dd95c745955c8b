"""The factories of the backbones named in `cxr.models.catalog` (which holds their variant, natural
preprocessing and weights): a name becomes a freshly initialised network here."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

from cxr.errors import CxrError
from cxr.models.catalog import get_backbone
from cxr.models.efficientnet import efficientnet_lite0
from cxr.models.families import TIMM_PREFIX, TV_PREFIX
from cxr.models.resnet import resnet50
from cxr.models.timm_backbones import create_timm_backbone
from cxr.models.tv_backbones import create_tv_backbone

FACTORIES: dict[str, Callable[[], nn.Module]] = {  # catalog name -> a new backbone
    "resnet50": partial(resnet50, "v1.5"),
    "resnet50-keras": partial(resnet50, "keras"),
    "efficientnet_lite0": efficientnet_lite0,
}
FAMILY_FACTORIES: dict[str, Callable[..., nn.Module]] = {  # catalog.FAMILIES prefix -> (NAME, in_chans) -> backbone
    TIMM_PREFIX: create_timm_backbone,
    TV_PREFIX: create_tv_backbone,
}


def create_backbone(name: str, in_chans: int = 3) -> nn.Module:
    """A freshly initialised backbone (``forward_features``, ``num_features``, ``stages``) taking
    `in_chans` input channels (1 for one-channel weights such as torchxrayvision's)."""
    entry = get_backbone(name)  # a CxrError lists the allowed names
    if entry.name in FACTORIES:
        if in_chans != 3:
            raise CxrError(f"backbone {name!r} takes 3 input channels, not {in_chans}")
        return FACTORIES[entry.name]()
    prefix, _, rest = entry.name.partition(":")
    return FAMILY_FACTORIES[prefix + ":"](rest, in_chans=in_chans)
