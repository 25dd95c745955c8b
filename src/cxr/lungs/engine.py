"""The lung model on an inference engine: ONNX Runtime or OpenVINO from a cached ONNX export, or PyTorch.

The export takes (N, 1, S, S) float32 normalised images and returns (N, 1, S, S) logits; it is made
once per model and size and kept in the engine cache (`cxr.engine.exports.cache_root()/engines`),
named by the weights file's digest, like the classifier's exports. `auto` picks OpenVINO, else ONNX
Runtime, else PyTorch: on 2 CPU cores OpenVINO ran the Lite0 U-Net 1.6x as fast as ONNX Runtime
(35 vs 21 images/s at 128 px under load) and PyTorch eager slowest. Every export is checked against
PyTorch on a probe batch (`check_parity`) before it is used.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxr.config import ENGINES
from cxr.engine.base import Engine, installed
from cxr.errors import CxrError

log = logging.getLogger(__name__)

LUNG_ENGINES = ENGINES  # the classifier's names; `auto` here is a fixed order: OpenVINO, else ONNX Runtime, else PyTorch
PARITY_TOLERANCE = 1e-3  # largest |probability difference| allowed between an export and PyTorch fp32


class TorchLungEngine(Engine):
    """The PyTorch module itself (the reference), under no_grad, fp32."""

    name = "torch"

    def __init__(self, model: nn.Module, threads: int) -> None:
        super().__init__("logits", "fp32", threads)
        self.model = model.float().eval()

    def run(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return self.model(torch.as_tensor(x, dtype=torch.float32)).numpy()


def resolve_engine(name: str) -> str:
    """A concrete engine for `name` ('auto': the fastest installed)."""
    if name not in LUNG_ENGINES:
        raise CxrError(f"unknown lung engine {name!r}; allowed: {', '.join(LUNG_ENGINES)}")
    if name != "auto":
        if name != "torch" and not installed(name):
            raise CxrError(f"lung engine {name!r} is not installed here; use --engine torch or auto")
        return name
    return next((e for e in ("openvino", "onnxruntime") if installed(e)), "torch")


def export_onnx(model: nn.Module, size: int, digest: str, folder: Path | None = None) -> Path:
    """The cached ONNX export of the lung model with weights `digest` at `size` px."""
    from cxr.engine.exports import INPUT_NAME, OUTPUT_NAME, _publish, cache_root, write_onnx

    folder = folder or cache_root() / "engines"
    final = folder / f"lungs-{size}px-{digest[:24]}.onnx"
    if final.is_file():
        return final
    example = torch.zeros(1, 1, size, size)
    with torch.no_grad():
        _publish(folder, final, lambda tmp: write_onnx(model.float().eval(), example, tmp, INPUT_NAME, [OUTPUT_NAME]))
    log.info("lungs: exported the lung model to %s", final)
    return final


def build_lung_engine(name: str, model: nn.Module, size: int, digest: str, threads: int,
                      folder: Path | None = None) -> Engine:
    """Engine `name` ('auto' resolved) running the lung model on (N, 1, size, size) batches."""
    concrete = resolve_engine(name)
    if concrete == "torch":
        torch.set_num_threads(threads)
        return TorchLungEngine(model, threads)
    path = export_onnx(model, size, digest, folder)
    if concrete == "onnxruntime":
        from cxr.engine.ort import OrtEngine

        return OrtEngine(path, "logits", threads)
    from cxr.engine.openvino import OpenVinoEngine

    return OpenVinoEngine(path, "logits", threads, "fp32", "throughput")


def check_parity(engine: Engine, model: nn.Module, batch: np.ndarray,
                 tolerance: float = PARITY_TOLERANCE) -> float:
    """Largest |probability difference| between `engine` and PyTorch fp32 on `batch`; a CxrError over
    `tolerance` (the export would draw other masks than the model)."""
    reference = TorchLungEngine(model, torch.get_num_threads()).run(batch)
    got = engine.run(batch)
    diff = float(np.abs(_sigmoid(got) - _sigmoid(reference)).max())
    if diff > tolerance:
        raise CxrError(f"lung engine {engine.name} differs from PyTorch by {diff:.2g} in probability "
                       f"(allowed {tolerance:g}); use --engine torch")
    return diff


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))
