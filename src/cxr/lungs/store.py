"""Lung model files: safetensors holding the network's tensors (fp16) and its spec in the metadata.

A file is self-describing: `load_model(path)` rebuilds the network from the `cxr.lungs.spec`
metadata entry, so no pickled objects are ever read. The packaged default model lives beside this
module in `weights/` and is found by `default_model_path()`; its sha256 is the model's identity
(`LungSegmenter.digest`), written in `weights/MODEL_CARD.md` and checked by the tests.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxr.errors import CxrError
from cxr.lungs.model import LungModelSpec, build_model

log = logging.getLogger(__name__)

FORMAT = "cxr-lungs/1"
DEFAULT_NAME = "lungs-unet-lite0-128.safetensors"
DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


def default_model_path() -> Path:
    """The packaged default lung model (inside the installed package, no download)."""
    return Path(__file__).resolve().parent / "weights" / DEFAULT_NAME


def save_model(model: nn.Module, spec: LungModelSpec, path: str | Path, *, dtype: str = "fp16",
               info: dict[str, Any] | None = None) -> Path:
    """Write `model`'s tensors (floating ones as `dtype`) with `spec` and `info` as metadata, atomically."""
    from safetensors.torch import save_file

    if dtype not in DTYPES:
        raise CxrError(f"unknown weights dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
    tensors = {}
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu")
        tensors[name] = (t.to(DTYPES[dtype]) if t.is_floating_point() else t).contiguous()
    metadata = {"format": FORMAT, "cxr.lungs.spec": spec.to_json(), "cxr.lungs.info": json.dumps(info or {})}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.stem}-", suffix=".safetensors", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a lung model file; a CxrError when it is not one."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CxrError(f"lung model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for a file that is not one
        raise CxrError(f"{path} is not a lung model file (safetensors): {exc}") from None
    if metadata.get("format") != FORMAT:
        raise CxrError(f"{path} is not a cxr lung model (format {metadata.get('format')!r}, expected {FORMAT!r})")
    return metadata


def load_model(path: str | Path) -> tuple[nn.Module, LungModelSpec, dict[str, Any]]:
    """The network of a lung model file in fp32 eval mode, its spec and its info record."""
    from safetensors.torch import load_file

    metadata = read_metadata(path)
    spec = LungModelSpec.from_json(metadata["cxr.lungs.spec"])
    model = build_model(spec)
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(str(path)).items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CxrError(f"{path}: the weights do not fit their own model settings: {first}") from None
    try:
        info = json.loads(metadata.get("cxr.lungs.info", "{}"))
    except ValueError:
        info = {}
    return model.float().eval(), spec, info
