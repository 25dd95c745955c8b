"""The factories of the backbones named in `cxr.models.catalog` (which holds their variant, natural
preprocessing and weights): a name becomes a freshly initialised network here."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

from cxr.models.catalog import get_backbone
from cxr.models.efficientnet import efficientnet_lite0
from cxr.models.resnet import resnet50

FACTORIES: dict[str, Callable[[], nn.Module]] = {  # catalog name -> a new backbone
    "resnet50": partial(resnet50, "v1.5"),
    "resnet50-keras": partial(resnet50, "keras"),
    "efficientnet_lite0": efficientnet_lite0,
}
FAMILY_FACTORIES: dict[str, Callable[[str], nn.Module]] = {}  # catalog.FAMILIES prefix -> NAME -> backbone


def create_backbone(name: str) -> nn.Module:
    """A freshly initialised backbone (``forward_features``, ``num_features``, ``stages``)."""
    entry = get_backbone(name)  # a CxrError lists the allowed names
    if entry.name in FACTORIES:
        return FACTORIES[entry.name]()
    prefix, _, rest = entry.name.partition(":")
    return FAMILY_FACTORIES[prefix + ":"](rest)
