"""The interface every inference engine exposes, and which engines this machine has installed."""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import torch

from cxr.config import EVAL_ENGINES
from cxr.errors import CxrError

OUTPUTS = ("features", "logits")  # pooled backbone features (N, C) | the classifier's logits (N, classes)
HINTS = ("throughput", "latency")  # batch work (extraction, predict) | one request at a time (serve)
CONCRETE_ENGINES = ("torch", "onnxruntime", "openvino")  # what `auto` chooses from
INT8_ENGINE = "openvino-int8"
ENGINE_NAMES = EVAL_ENGINES  # auto, the concrete engines and openvino-int8
_PACKAGES = {"torch": ("torch",), "onnxruntime": ("onnx", "onnxruntime"), "openvino": ("onnx", "openvino"),
             INT8_ENGINE: ("onnx", "openvino", "nncf")}
_EXTRAS = {"onnxruntime": "export", "openvino": "openvino", INT8_ENGINE: "openvino"}


def installed(name: str) -> bool:
    """True when every library engine `name` needs can be imported here."""
    return all(importlib.util.find_spec(package) is not None for package in _PACKAGES[name])


def require_installed(name: str) -> None:
    """A CxrError naming the missing library and the extra that installs it."""
    if name not in _PACKAGES:
        raise CxrError(f"unknown engine {name!r}; allowed: {', '.join(ENGINE_NAMES)}")
    missing = [p for p in _PACKAGES[name] if importlib.util.find_spec(p) is None]
    if missing:
        raise CxrError(f"engine {name!r} needs {', '.join(missing)}, which is not installed "
                       f"(pip install 'cxr[{_EXTRAS[name]}]'); or use --engine torch or auto")


def engine_precision(requested: str) -> str:
    """What exported engines (ONNX Runtime, OpenVINO) compute in: bf16 only when asked for by name.

    'auto' resolves to bf16 for PyTorch on CPUs with native bf16, but on a trained Lite0 classifier
    and 120 cxr4-dev X-rays bf16 moved probabilities by up to 0.16-0.18 and changed 2.5-3.3% of the
    labels (PyTorch's bf16 autocast and OpenVINO's bf16 alike), and its feature error reached
    0.15-0.23: not accurate enough to choose on the user's behalf.
    """
    return "bf16" if str(requested).strip().lower() == "bf16" else "fp32"


def as_input(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """A batch as a C-contiguous float32 numpy array (what every engine takes)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).contiguous().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


class Engine:
    """Runs one model on float32 NCHW batches; subclasses implement `run`.

    `output` says what `run` returns (OUTPUTS); `precision` is what the engine computes in (fp32,
    bf16, int8); `threads` its intra-op threads.
    """

    name = "engine"

    def __init__(self, output: str, precision: str, threads: int) -> None:
        if output not in OUTPUTS:
            raise CxrError(f"unknown engine output {output!r}; allowed: {', '.join(OUTPUTS)}")
        self.output = output
        self.precision = precision
        self.threads = threads

    def run(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """(N, 3, S, S) float32 -> (N, K) float32 numpy: features or logits, see `output`."""
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Torch in, torch out (float32, CPU): for code written against a module (TTA, evaluation)."""
        return torch.from_numpy(self.run(x))

    def describe(self) -> str:
        return f"{self.name} ({self.precision}, {self.threads} threads)"

    def info(self) -> dict[str, Any]:
        """What ran, for logs and result files."""
        return {"engine": self.name, "precision": self.precision, "threads": self.threads, "output": self.output}
