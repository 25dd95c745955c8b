"""OpenVINO as an engine: the CPU plugin with a performance hint, a thread count and a precision.

- hint 'throughput' (feature extraction, batch prediction): OpenVINO runs several streams, each on
  its share of the threads; a batch is split into one part per stream and the parts run at once;
- hint 'latency' (serving): one stream, every thread on one request;
- `INFERENCE_NUM_THREADS` = the threads this process may use (`cxr.threads`); threads are not pinned
  to cores (a pinned thread cannot move off a core that another process is using);
- precision 'bf16' runs bf16 where the CPU has it (avx512_bf16/AMX), else f32; fp32 asks for f32
  (OpenVINO would otherwise pick bf16 on AMX machines by itself). Int8 models run their quantised
  layers in int8 (VNNI) and the rest in f32.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxr.engine.base import HINTS, Engine, as_input
from cxr.errors import CxrError


class _SignalStack(ctypes.Structure):
    """`stack_t` of sigaltstack(2)."""

    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@contextlib.contextmanager
def kept_signal_stack() -> Iterator[None]:
    """Keep this thread's alternate signal stack as it is around OpenVINO calls that compile models.

    OpenVINO's CPU plugin (seen with 2024-2026 releases) registers a signal stack of its own when it
    compiles a model and registers "the previous one" again when that model is destroyed. Models
    of different `ov.Core`s destroyed in another order than they were made leave a freed stack
    registered, and the next signal handled on it (Python's handlers use SA_ONSTACK: SIGINT, the
    SIGCHLD handler of PyTorch's DataLoader) kills the process with SIGSEGV. With the caller's stack
    put back after each compile, every model also puts back that one when it goes.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        saved = _SignalStack()
        ok = libc.sigaltstack(None, ctypes.byref(saved)) == 0
    except (OSError, AttributeError):  # pragma: no cover - no sigaltstack (not POSIX)
        ok = False
    try:
        yield
    finally:
        if ok:
            gc.collect()  # models dropped inside the block restore their stacks now, not later
            libc.sigaltstack(ctypes.byref(saved), None)


def compile_config(threads: int, precision: str, hint: str, pinning: bool = False) -> dict[str, Any]:
    """The CPU plugin properties cxr compiles every model with (see the module docstring)."""
    if hint not in HINTS:
        raise CxrError(f"unknown performance hint {hint!r}; allowed: {', '.join(HINTS)}")
    return {
        "PERFORMANCE_HINT": hint.upper(),
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        "INFERENCE_NUM_THREADS": int(threads),
        "ENABLE_CPU_PINNING": bool(pinning),
    }


class OpenVinoEngine(Engine):
    """An OpenVINO IR (or ONNX) file compiled for the CPU; batches split over the infer requests."""

    name = "openvino"

    def __init__(self, path: str | Path, output: str, threads: int, precision: str = "fp32",
                 hint: str = "throughput", name: str | None = None) -> None:
        import openvino as ov

        self.path = Path(path)
        self.hint = hint
        self.config = compile_config(threads, precision, hint)
        with kept_signal_stack():
            core = ov.Core()
            self.compiled = core.compile_model(core.read_model(str(path)), "CPU", self.config)
        ran = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        ran_bf16 = "bf16" in str(getattr(ran, "get_type_name", lambda: ran)())
        super().__init__(output, precision if precision == "int8" else ("bf16" if ran_bf16 else "fp32"), threads)
        if name:
            self.name = name
        count = max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self.requests = [self.compiled.create_infer_request() for _ in range(count)]

    def run(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        data = as_input(x)
        parts = min(len(self.requests), len(data))
        if parts <= 1:
            return np.array(self.requests[0].infer({0: data})[0], dtype=np.float32)
        chunks = np.array_split(data, parts)
        for request, chunk in zip(self.requests, chunks, strict=False):
            request.start_async({0: chunk})
        outputs = []
        for request in self.requests[:parts]:
            request.wait()
            outputs.append(np.array(request.get_output_tensor(0).data, dtype=np.float32))
        return np.concatenate(outputs)

    def describe(self) -> str:
        return f"{self.name} ({self.precision}, {self.hint}, {self.threads} threads, {len(self.requests)} streams)"

    def info(self) -> dict[str, Any]:
        return {**super().info(), "hint": self.hint, "streams": len(self.requests)}
