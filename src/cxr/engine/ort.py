"""ONNX Runtime as an engine: the CPU execution provider, tuned for one model on a (shared) CPU.

Session options: every graph optimisation (constant folding, Conv+BN+activation fusion, layout
transforms), intra-op threads = the threads this process may use, one inter-op thread and sequential
execution (the graph is a chain: parallel branches would only add threads), and no spin-waiting of
idle pool threads unless asked (`spin=True`): on a shared machine spinning threads take the cores that
other work, and our own late thread, need (see `cxr.threads`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxr.engine.base import Engine, as_input
from cxr.engine.exports import INPUT_NAME, OUTPUT_NAME

ORT_LOG_ERRORS = 3  # onnxruntime severity: 0 verbose, 1 info, 2 warning, 3 error
SPIN_KEYS = ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning")


def session_options(threads: int, spin: bool = False) -> Any:
    """The `onnxruntime.SessionOptions` every cxr session uses (see the module docstring)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.log_severity_level = ORT_LOG_ERRORS
    for key in SPIN_KEYS:
        options.add_session_config_entry(key, "1" if spin else "0")
    return options


class OrtEngine(Engine):
    """An ONNX file of `cxr.engine.exports` run by ONNX Runtime on the CPU, in fp32."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, output: str, threads: int, spin: bool = False) -> None:
        import onnxruntime as ort

        super().__init__(output, "fp32", threads)
        self.path = Path(path)
        self.spin = spin
        self.session = ort.InferenceSession(str(path), sess_options=session_options(threads, spin),
                                            providers=["CPUExecutionProvider"])

    def run(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: as_input(x)})[0]
