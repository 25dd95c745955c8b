"""The feature cache's key and its entries on disk: what names an entry, and how it is read back.

An entry is a folder `<cache>/<key[:32]>/` with `manifest.json`, `<split>.npy` (views, images,
channels) float16 memory maps and `<split>_labels.npy`. The key covers everything the features
depend on, what computed them included (`extractor_record`: engine, precision, batch size, device,
library versions, CPU instruction sets); any change makes a new entry, so a study's result never
depends on which run filled the cache first.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxr.config import RunConfig, to_dict
from cxr.data.regions import is_box_spec
from cxr.errors import CxrError
from cxr.hashing import update_with_file
from cxr.rundir import SPLITS
from cxr.runtime import cpu_flags

FORMAT = "cxr-feature-cache/1"
# CPU instruction sets that select different kernels (and so change fp32 results in the last bits)
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8")
_LIBRARIES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}


def extractor_record(engine_name: str, precision: str, cfg: RunConfig, device: torch.device) -> dict[str, Any]:
    """What computes the features, as far as it changes their bits: part of the cache key.

    Engines agree with PyTorch only within their parity bound (about 1e-6 relative in fp32), and
    PyTorch's own fp32 results change with the batch size (measured on Lite0: 3e-6 between batch 32
    and 8, not with 1 or 2 threads or with channels_last at batch 32); training amplifies such
    differences into different metrics, so each of these makes its own entry.
    """
    record: dict[str, Any] = {
        "engine": engine_name, "precision": precision, "batch_size": cfg.train.batch_size,
        "device": device.type, "torch": torch.__version__,
    }
    if device.type == "cuda":
        record["gpu"] = torch.cuda.get_device_name(device)
    else:
        record["cpu_flags"] = sorted(cpu_flags() & set(KERNEL_FLAGS))
    if engine_name == "torch":
        record["channels_last"] = cfg.train.channels_last
        record["compiled"] = cfg.train.compile
    elif engine_name in _LIBRARIES:
        try:
            record[engine_name] = importlib.metadata.version(_LIBRARIES[engine_name])
        except importlib.metadata.PackageNotFoundError:
            record[engine_name] = None
    return record



def cache_key(
    model: nn.Module,
    root: Path,
    rows: Sequence[Any],
    classes: list[str],
    cfg: RunConfig,
    views: int,
    extractor: dict[str, Any],
) -> str:
    """SHA-256 hex digest naming a cache entry; any change to what the features depend on changes it.

    Covers the image bytes (`files_digest`), the row order, classes, backbone name, weights spec and
    state, preprocessing, augmentation, image size, views, seed and what extracts them (`extractor`,
    from `extractor_record`: engine, precision, batch size, ...); not the head.
    """
    pre = getattr(model, "preprocessing", None)
    settings = {
        "format": FORMAT,
        "classes": list(classes),
        "backbone": cfg.model.backbone,
        "weights": cfg.model.weights,
        "backbone_state": state_digest(model),
        "preprocessing": pre.to_dict() if pre is not None else None,
        "augment": {k: v for k, v in to_dict(cfg.augment).items()  # scanner fields only when used: old keys hold
                    if not (k.startswith("scanner") and cfg.augment.scanner in ("none", ""))},
        "image_size": cfg.data.image_size,
        "views": views,
        "seed": cfg.train.seed,
        "extractor": extractor,
    }
    if cfg.data.lung_crop:  # only then: other entries keep their keys
        settings["lung_crop_margin"] = cfg.data.lung_crop_margin
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    digest.update(files_digest(root, rows).encode())
    if cfg.data.lung_crop:
        digest.update(regions_digest(root, rows).encode())
    for row in rows:  # features are stored in the rows' order, which the loaders' batches follow
        digest.update(f"{row.split}\0{row.path}\n".encode())
    return digest.hexdigest()


def files_digest(root: Path, rows: Sequence[Any]) -> str:
    """SHA-256 over each image's path, label, split and bytes, streamed in sorted path order."""
    digest = hashlib.sha256()
    for row in sorted(rows, key=lambda r: r.path):
        digest.update(f"{row.path}\0{row.label}\0{row.split}\0".encode())
        try:
            update_with_file(digest, Path(root) / row.path)
        except OSError as exc:
            raise CxrError(f"cannot read image {Path(root) / row.path} for the feature cache key: {exc}") from None
        digest.update(b"\0")
    return digest.hexdigest()


def regions_digest(root: Path, rows: Sequence[Any]) -> str:
    """SHA-256 over each row's lung region: its boxes, or its mask file's bytes (the lung crop's input)."""
    digest = hashlib.sha256()
    for row in sorted(rows, key=lambda r: r.path):
        region = getattr(row, "mask", None) or ""
        digest.update(f"{row.path}\0{region}\0".encode())
        if region and not is_box_spec(region):
            try:
                update_with_file(digest, Path(root) / region)
            except OSError as exc:
                raise CxrError(f"cannot read lung mask {Path(root) / region} for the feature cache key: {exc}") from None
    return digest.hexdigest()


def state_digest(model: nn.Module) -> str:
    """SHA-256 of every tensor the backbone uses (the state dict without the head's entries)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith("head."):
            continue
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        if t.numel():
            digest.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_manifest(entry: Path, key: str) -> dict[str, Any] | None:
    """The entry's manifest when it is complete and belongs to `key`, else None."""
    path = entry / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("format") != FORMAT or manifest.get("key") != key:
        return None
    if not all((entry / f"{s}.npy").is_file() and (entry / f"{s}_labels.npy").is_file() for s in SPLITS):
        return None
    return manifest
