"""Where the libraries keep pretrained files, and reaching the network without hanging on it.

- torch hub: ``$TORCH_HOME/hub/checkpoints`` (torchvision's and timm's legacy URL downloads);
- Hugging Face hub: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub`` (timm);
- torchxrayvision: its ``utils.get_cache_dir()`` (``~/.torchxrayvision/models_data/``).

A cached file is used as it is. Otherwise a download is tried only when the network is not declared
off (``HF_HUB_OFFLINE=1`` or ``CXR_OFFLINE=1``) and the host answers a TCP connection within
`NETWORK_TIMEOUT` seconds; downloads run with that socket timeout. Failing that, `missing_file` is the
one-line error: which file, which folder, from where to fetch it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from cxr.errors import CxrError
from cxr.hashing import file_sha256

log = logging.getLogger(__name__)

NETWORK_TIMEOUT = 5.0  # seconds: TCP connect probe and socket timeout of downloads
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "CXR_OFFLINE")
HF_ENDPOINT = "https://huggingface.co"
_TRUE = {"1", "true", "yes", "on"}


def torch_hub_checkpoints() -> Path:
    """``$TORCH_HOME/hub/checkpoints`` (torch's own resolution, read at call time)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache folder, from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    base = Path(os.environ["XDG_CACHE_HOME"]).expanduser() if os.environ.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def hf_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or HF_ENDPOINT


def xrv_cache_dir() -> Path:
    """torchxrayvision's weights folder (its own function when the package is installed)."""
    try:
        from torchxrayvision.utils import get_cache_dir
    except ImportError:
        return Path("~/.torchxrayvision/models_data").expanduser()
    return Path(get_cache_dir()).expanduser()


def offline_reason() -> str | None:
    """'HF_HUB_OFFLINE=1' when an offline variable is set, else None."""
    for name in OFFLINE_VARIABLES:
        if os.environ.get(name, "").strip().lower() in _TRUE:
            return f"{name}={os.environ[name]}"
    return None


def unreachable(url: str, timeout: float = NETWORK_TIMEOUT) -> str | None:
    """Why `url` cannot be downloaded now (offline variable, no TCP connection), or None."""
    reason = offline_reason()
    if reason is not None:
        return reason
    parsed = urlparse(url)
    if not parsed.hostname:
        return f"not a URL: {url}"
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{parsed.hostname} unreachable: {exc.strerror or exc}"


@contextlib.contextmanager
def socket_timeout(seconds: float = NETWORK_TIMEOUT) -> Iterator[None]:
    """Downloads inside the block fail after `seconds` without data instead of hanging."""
    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(before)


@dataclass(frozen=True)
class HubFile:
    """A file published at ``url`` whose sha256 starts with ``sha256_prefix`` (torch hub convention)."""

    url: str
    sha256_prefix: str
    label: str

    @property
    def filename(self) -> str:
        return Path(urlparse(self.url).path).name


def hub_checkpoint_path(hub: HubFile) -> Path:
    """Where torch hub keeps (or would keep) the file: ``$TORCH_HOME/hub/checkpoints/<name>``."""
    return torch_hub_checkpoints() / hub.filename


def fetch_hub_file(hub: HubFile, spec: str) -> Path:
    """The cached file, downloaded into the torch hub cache first if absent; hash-checked either way.

    Offline (an offline variable, or no connection to the host within `NETWORK_TIMEOUT`) it fails at
    once with one line naming the file, where to put it and other weights to choose."""
    path = hub_checkpoint_path(hub)
    if not path.is_file():
        reason = unreachable(hub.url)
        if reason is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            log.info("downloading %s (%s) to %s", hub.url, hub.label, path)
            try:
                with socket_timeout():
                    torch.hub.download_url_to_file(hub.url, str(path), hash_prefix=hub.sha256_prefix or None,
                                                   progress=True)
            except (OSError, RuntimeError, ValueError) as exc:  # URLError/HTTPError are OSErrors
                reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        if reason is not None:
            raise CxrError(
                f"weights {spec!r} ({hub.label}) are needed first and could not be downloaded ({reason}): "
                f"download {hub.url} and put it at {path} (sha256 starts with {hub.sha256_prefix}), or choose "
                f"other weights: --backbone efficientnet_lite0 --weights lite0-imagenet, or --weights file:PATH"
            )
    digest = file_sha256(path)
    if not digest.startswith(hub.sha256_prefix):
        raise CxrError(
            f"{path} has sha256 {digest[:16]}..., expected a prefix {hub.sha256_prefix}: the file is damaged "
            f"or not {hub.filename}; delete it and download {hub.url} again"
        )
    return path


def missing_file(spec: str, filename: str, folder: Path, url: str, reason: str) -> CxrError:
    """The one-line error of weights that are neither cached nor downloadable."""
    return CxrError(f"weights {spec!r}: {filename} is not in {folder} and cannot be downloaded ({reason}); "
                    f"download {url} into {folder}, or use weights file:PATH")


def hf_repo_folder(repo_id: str) -> Path:
    """The HF cache folder of a model repository (``models--timm--resnet18.a1_in1k``)."""
    return hf_hub_cache() / ("models--" + repo_id.replace("/", "--"))


def hf_cached_file(repo_id: str, filename: str) -> Path | None:
    """The cached snapshot file of `repo_id` (the revision ``refs/main`` names), None if absent."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, cache_dir=hf_hub_cache())
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def hf_download(repo_id: str, filename: str) -> Path:
    """Download one file of a HF repository into the HF cache (hub's own timeouts, ours for the probe)."""
    from huggingface_hub import hf_hub_download

    with socket_timeout():
        return Path(hf_hub_download(repo_id, filename, cache_dir=hf_hub_cache(), etag_timeout=NETWORK_TIMEOUT))


def cached_weights() -> dict[str, dict[str, object]]:
    """What the three caches hold now: folder and file (or repository) names, for `cxr model list`."""
    hub, hf, xrv = torch_hub_checkpoints(), hf_hub_cache(), xrv_cache_dir()
    files = {
        "torch hub": (hub, sorted(p.name for p in hub.glob("*") if p.is_file()) if hub.is_dir() else []),
        "huggingface hub": (hf, sorted(p.name.removeprefix("models--").replace("--", "/")
                                       for p in hf.glob("models--*") if (p / "snapshots").is_dir())
                            if hf.is_dir() else []),
        "torchxrayvision": (xrv, sorted(p.name for p in xrv.glob("*") if p.is_file() and p.suffix != ".part")
                            if xrv.is_dir() else []),
    }
    return {name: {"folder": str(folder), "files": names} for name, (folder, names) in files.items()}
