"""ONNX and OpenVINO files built from a model, cached by a digest of its weights (never re-exported).

An export graph takes the normalised input (N, 3, S, S) float32 with a dynamic batch axis and returns
one output: the pooled backbone features (`output='features'`) or the classifier's logits
(`output='logits'`); probabilities are made by the caller. Files live in `cache_root()/engines/`,
named by a SHA-256 over the weights (every tensor of the state dict), the output kind, the input
size and the export format, and are written to a temporary name and renamed into place, so two
processes exporting the same model at once both end with a complete file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from cxr.engine.base import OUTPUTS
from cxr.errors import CxrError

log = logging.getLogger(__name__)

EXPORT_FORMAT = "cxr-engine-export/1"
OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "output"


def cache_root() -> Path:
    """$CXR_CACHE_DIR, else $XDG_CACHE_HOME/cxr (~/.cache/cxr): engines.json and engines/ live here."""
    explicit = os.environ.get("CXR_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cxr"


class PooledFeatures(nn.Module):
    """x -> `model.forward_features(x).mean((2, 3))`: what the feature cache stores, as one graph."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x).mean((2, 3))


def graph_module(model: nn.Module, output: str) -> nn.Module:
    """The module whose graph is exported for `output`: pooled features, or the model itself (logits)."""
    if output not in OUTPUTS:
        raise CxrError(f"unknown engine output {output!r}; allowed: {', '.join(OUTPUTS)}")
    if output == "features":
        if not hasattr(model, "forward_features"):
            raise CxrError(f"{type(model).__name__} has no forward_features: it cannot be run as a backbone")
        return PooledFeatures(model)
    return model


def weights_digest(model: nn.Module) -> str:
    """SHA-256 over every tensor of the state dict (name, dtype, shape and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def export_stem(model: nn.Module, output: str, size: int) -> str:
    """The file name (without suffix) of `model`'s export for `output` at input size `size`."""
    digest = hashlib.sha256(f"{EXPORT_FORMAT}\0{OPSET}\0{output}\0{size}\0{type(model).__name__}\0".encode())
    digest.update(weights_digest(model).encode())
    return f"{output}-{size}px-{digest.hexdigest()[:24]}"


def write_onnx(module: nn.Module, example: torch.Tensor, out: Path, input_name: str,
               output_names: Sequence[str], opset: int = OPSET) -> Path:
    """`torch.onnx.export` of `module` (eval, fp32) with a dynamic batch axis on every input and output."""
    dynamic = {name: {0: "batch"} for name in (input_name, *output_names)}
    with warnings.catch_warnings():
        # The TorchScript-based exporter needs no onnxscript and handles our models; torch marks it
        # deprecated in favour of the torch.export-based one. Shape arithmetic on the input size is
        # frozen by tracing, which is right: only the batch axis varies.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(module.float().eval(), (example,), str(out), dynamo=False, opset_version=opset,
                          input_names=[input_name], output_names=list(output_names), dynamic_axes=dynamic,
                          do_constant_folding=True)
    return out


def _publish(folder: Path, final: Path, write: object) -> Path:
    """Run `write(tmp_path)` into a temporary file beside `final` and rename it into place."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".tmp-{final.stem}-", suffix=final.suffix, dir=folder)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)  # type: ignore[operator]
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_suffix(".bin").unlink(missing_ok=True)  # OpenVINO's weights file, if left behind
    return final


def onnx_export(model: nn.Module, output: str, size: int, folder: Path | None = None) -> Path:
    """The cached ONNX file of `model` for `output` at `size` px, exported on the first call."""
    folder = folder or cache_root() / "engines"
    final = folder / f"{export_stem(model, output, size)}.onnx"
    if final.is_file():
        return final
    module = graph_module(model, output)
    was_training = model.training
    example = torch.zeros(1, 3, size, size)
    try:
        with torch.no_grad():
            _publish(folder, final, lambda tmp: write_onnx(module, example, tmp, INPUT_NAME, [OUTPUT_NAME]))
    finally:
        model.train(was_training)
    log.info("engine: exported %s to %s", type(model).__name__, final)
    return final


def openvino_export(model: nn.Module, output: str, size: int, folder: Path | None = None) -> Path:
    """The cached OpenVINO IR (.xml + .bin, fp32 weights) of `model`, converted from its ONNX export."""
    import openvino as ov

    folder = folder or cache_root() / "engines"
    final = folder / f"{export_stem(model, output, size)}.xml"
    if final.is_file() and final.with_suffix(".bin").is_file():
        return final
    converted = ov.convert_model(str(onnx_export(model, output, size, folder)))

    def write(tmp: Path) -> None:
        ov.save_model(converted, str(tmp), compress_to_fp16=False)
        os.replace(tmp.with_suffix(".bin"), final.with_suffix(".bin"))  # the weights first, then the graph

    _publish(folder, final, write)
    log.info("engine: converted %s to OpenVINO IR %s", type(model).__name__, final)
    return final
