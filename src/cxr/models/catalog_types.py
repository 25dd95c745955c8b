"""The records of the backbone/weights catalog (`cxr.models.catalog`), torch-free.

They live apart from the table so that the library families (`cxr.models.families`), which the
catalog registers, can build them without importing the catalog itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr.errors import CxrError
from cxr.suggest import did_you_mean

KINDS = ("hub", "keras", "file", "package", "timm", "xrv", "random")  # how weights are read; listings group by it
PATH_ARGUMENT = "PATH"


@dataclass(frozen=True)
class InputSpec:
    """A preprocessing record in plain values (`cxr.transforms.Preprocessing.from_dict(spec.record())`):
    what a library's pretrained config says about the input (mean/std, size, channels, filter)."""

    mode: str  # caffe | imagenet | half | meanstd
    size: int  # the input side the weights were trained at
    mean: tuple[float, ...] | None = None  # meanstd: per-channel mean of x/255
    std: tuple[float, ...] | None = None  # meanstd: per-channel std of x/255
    channels: int = 3  # 3 (RGB) or 1 (grayscale)
    interpolation: str = "bilinear"  # resize filter

    def record(self) -> dict[str, Any]:
        """The keys of a `Preprocessing` record."""
        out: dict[str, Any] = {"mode": self.mode, "size": self.size, "channels": self.channels,
                               "interpolation": self.interpolation}
        if self.mode == "meanstd":
            out.update(mean=list(self.mean or ()), std=list(self.std or ()))
        return out

    def describe(self) -> str:
        """'imagenet, 224 px, bicubic' for listings."""
        text = f"{self.mode}, {self.size} px"
        if self.mode == "meanstd":
            text += f", mean {self.mean} std {tuple(round(s, 6) for s in self.std or ())}"
        if self.channels != 3:
            text += f", {self.channels} channel"
        return text + ("" if self.interpolation == "bilinear" else f", {self.interpolation}")


PreprocessingSpec = str | InputSpec  # a mode name (built-in backbones) or a full spec (library families)


def describe_preprocessing(spec: PreprocessingSpec) -> str:
    """A mode name as it is, an InputSpec described."""
    return spec if isinstance(spec, str) else spec.describe()


@dataclass(frozen=True)
class WeightsEntry:
    """One weights spec of a backbone: where the tensors come from and how they were trained."""

    spec: str  # a name ("imagenet") or a pattern PREFIX:ARG ("file:PATH", "keras-imagenet:PATH")
    kind: str  # one of KINDS: selects the reader in cxr.models.weights
    help: str  # one line for listings, errors and --help
    source: str = ""  # URL (hub), package (package) or a description; a pattern's ARG is its source
    preprocessing: PreprocessingSpec | None = None  # what the weights were trained with; None: the backbone's own
    variant: str | None = None  # architecture variant they fit; None: the backbone's
    sha256_prefix: str | None = None  # hub files: the published hash prefix
    choices: tuple[str, ...] = ()  # allowed ARG values of a non-PATH pattern ("xrv:NAME")

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
    variant: str  # architecture variant: v1.5 | keras | lite0 | timm | torchvision
    preprocessing: PreprocessingSpec  # what its random or file weights use (cxr.transforms.Preprocessing)
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
    """Backbones named PREFIX:NAME that are looked up on demand (timm:NAME, tv:NAME)."""

    prefix: str  # "timm:"
    description: str  # for listings and help
    lookup: Callable[[str], Backbone | None]  # NAME -> its Backbone (named PREFIX:NAME), None if unknown
    names: Callable[[], list[str]] | None = None  # every NAME, for "did you mean" and `cxr model list`
    examples: tuple[str, ...] = ()  # a few NAMEs for listings


FILE_WEIGHTS = WeightsEntry(
    "file:PATH", "file",
    "a .pth/.pt/.safetensors state dict, cxr checkpoint or timm/EfficientNet-PyTorch file",
)
RANDOM_WEIGHTS = WeightsEntry("random", "random", "the backbone's own initialisation", "random initialisation")
COMMON_WEIGHTS = (FILE_WEIGHTS, RANDOM_WEIGHTS)  # every backbone takes these, in its natural preprocessing
