"""cxr.models: ResNet-50 / EfficientNet-Lite0 backbones, weights records, the seed's head, freezing."""

from cxr.models.backbones import BACKBONES, create_backbone
from cxr.models.build import Classifier, apply_freeze, build_model, count_parameters
from cxr.models.weights import LoadReport, WeightsRecord, resolve_weights

__all__ = [
    "BACKBONES",
    "Classifier",
    "LoadReport",
    "WeightsRecord",
    "apply_freeze",
    "build_model",
    "count_parameters",
    "create_backbone",
    "resolve_weights",
]
