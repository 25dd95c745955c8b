"""torchxrayvision's chest-X-ray weights (``xrv:NAME``), read through the package (extra ``cxr[xrv]``).

The file of a name is the basename of its ``model_urls[NAME]["weights_url"]``, in torchxrayvision's
cache folder (``utils.get_cache_dir()``, ``~/.torchxrayvision/models_data/``); it is downloaded there
(the package's own downloader) only when the network answers. The DenseNet files hold a whole pickled
``torchxrayvision.models.DenseNet``, the ResNet file a state dict of its torchvision ResNet-50. Both
are loaded with ``torch.load(weights_only=True)``: the only classes allowed out of a pickle are
torch's and torchxrayvision's modules (`ALLOWED_CLASSES`), never arbitrary code.
"""

from __future__ import annotations

import importlib
import logging
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxr.errors import CxrError
from cxr.models.cache import missing_file, socket_timeout, unreachable, xrv_cache_dir

log = logging.getLogger(__name__)

ALLOWED_CLASSES = ("torch.nn.modules.", "torchxrayvision.models.")  # module prefixes a weights pickle may name
XRV_IGNORED = ("op_threshs",)  # buffers of torchxrayvision's classifier, not of the backbone
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_MAX_CLASSES = 64  # distinct classes one weights pickle may need


def import_xrv() -> Any:
    """The torchxrayvision package; a CxrError says how to install it."""
    try:
        import torchxrayvision
    except ImportError:
        raise CxrError("weights xrv:NAME need the package torchxrayvision: pip install 'cxr[xrv]'") from None
    return torchxrayvision


def weights_url(name: str) -> str:
    """The published URL of torchxrayvision weights `name` (from the package's own table)."""
    urls = import_xrv().models.model_urls
    if name not in urls:
        raise CxrError(f"torchxrayvision has no weights {name!r}; it has: {', '.join(sorted(urls))}")
    return str(urls[name]["weights_url"])


def weights_file(name: str) -> Path:
    """The cached file of weights `name`, downloaded first when absent and the network answers."""
    url = weights_url(name)
    folder = xrv_cache_dir()
    path = folder / url.rsplit("/", 1)[-1]
    if path.is_file():
        return path
    spec = f"xrv:{name}"
    reason = unreachable(url)
    if reason is not None:
        raise missing_file(spec, path.name, folder, url, reason)
    folder.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s to %s", url, path)
    try:
        with socket_timeout():
            import_xrv().utils.download(url, str(path))
    except Exception as exc:  # noqa: BLE001 - requests/OS errors alike mean "not downloaded"
        raise missing_file(spec, path.name, folder, url, f"{type(exc).__name__}: {exc}") from None
    return path


def _allowed_class(name: str) -> Any:
    if not name.startswith(ALLOWED_CLASSES):
        raise CxrError(f"it holds a {name} object; cxr only unpickles torch and torchxrayvision modules")
    module, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        raise CxrError(f"it names {name}, which the installed packages do not have") from None


def load_restricted(path: Path) -> Any:
    """`torch.load(weights_only=True)` allowing only the module classes of `ALLOWED_CLASSES`."""
    allowed: list[Any] = []
    for _ in range(_MAX_CLASSES):
        try:
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            found = _GLOBAL.search(str(exc))
            if found is None:
                raise CxrError(f"{path} is not a readable torchxrayvision weights file") from None
            try:
                allowed.append(_allowed_class(found.group(1)))
            except CxrError as why:
                raise CxrError(f"{path} is not a torchxrayvision weights file: {why}") from None
        except Exception as exc:  # noqa: BLE001 - a truncated or foreign file is the user's to replace
            raise CxrError(f"{path} is not a readable torchxrayvision weights file ({type(exc).__name__}: "
                           f"{exc}); delete it and download it again") from None
    raise CxrError(f"{path} needs more than {_MAX_CLASSES} classes to unpickle; not a torchxrayvision file")


def read_xrv_state(name: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The tensors of torchxrayvision weights `name` (torchvision names) and the keys ignored
    (its classifier's buffers)."""
    path = weights_file(name)
    obj = load_restricted(path)
    state = obj.state_dict() if isinstance(obj, nn.Module) else obj
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CxrError(f"{path} holds neither a torchxrayvision model nor a state dict")
    ignored = [k for k in state if k.split(".")[-1] in XRV_IGNORED]
    return {k.removeprefix("model."): v for k, v in state.items() if k not in ignored}, ignored
