"""Where and how cxr computes, for training and prediction alike: device choice, precision policy and
autocast, threads and DataLoader workers, seeding and RNG state, and the collective helpers that
need torch (which rank is which lives in the torch-free `cxr.rank`).

Everything here is explicit: nothing is set at import time. A study calls `set_threads` and
`seed_everything` once at its start, then `resolve_device` / `resolve_precision` to decide how the
loop runs; `Predictor` uses the same device and precision policy. Precision policy:

- CPU: bf16 autocast only where the CPU has native bf16 (AVX512-BF16 or AMX); otherwise fp32,
  because emulated bf16 is slower than fp32.
- CUDA: bf16 autocast where the GPU supports it, else fp16 with a gradient scaler.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxr import threads
from cxr.config import DEVICES, PRECISIONS
from cxr.errors import CxrError
from cxr.rank import is_main_process, local_world_size, world_size
from cxr.suggest import did_you_mean

log = logging.getLogger(__name__)

CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
CPUINFO = Path("/proc/cpuinfo")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
MAX_AUTO_WORKERS = 32  # data.num_workers=-1 never starts more DataLoader workers than this


def resolve_device(spec: str = "auto") -> torch.device:
    """'auto' -> the first CUDA device when one is visible, else the CPU; 'cuda[:N]' must exist."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise CxrError(f"device {spec!r} asked for, but no CUDA device is visible; use --device cpu or auto")
        index_text = spec.partition(":")[2]
        if index_text:
            if not index_text.isdigit():
                raise CxrError(f"bad device {spec!r}; allowed: {', '.join(DEVICES)}{did_you_mean(spec, DEVICES)}")
            count = torch.cuda.device_count()
            if int(index_text) >= count:
                raise CxrError(f"device {spec!r} does not exist; this machine has cuda:0..cuda:{count - 1}")
        return torch.device(spec)
    raise CxrError(f"unknown device {spec!r}; allowed: {', '.join(DEVICES)}{did_you_mean(spec, DEVICES)}")


def cpu_flags() -> set[str]:
    """The CPU feature flags from /proc/cpuinfo (empty where that file does not exist)."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.partition(":")[2].split())
    return set()


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX), so bf16 autocast is a speed-up."""
    if cpu_flags() & CPU_BF16_FLAGS:
        return True
    capability = str(torch.backends.cpu.get_cpu_capability()).upper()
    return "AMX" in capability or "BF16" in capability


def resolve_precision(spec: str, device: torch.device) -> str:
    """Map 'auto' | 'fp32' | 'bf16' | 'fp16' to the precision the loop runs with on `device`."""
    spec = (spec or "auto").strip().lower()
    if spec not in PRECISIONS:
        raise CxrError(f"unknown precision {spec!r}; allowed: {', '.join(PRECISIONS)}{did_you_mean(spec, PRECISIONS)}")
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        if spec == "auto":
            return "bf16" if bf16_ok else "fp16"
        if spec == "bf16" and not bf16_ok:
            raise CxrError(f"precision 'bf16' is not supported by {torch.cuda.get_device_name(device)}; use fp16 or fp32")
        return spec
    if spec == "auto":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if spec == "fp16":
        raise CxrError("precision 'fp16' needs a CUDA device; on the CPU use bf16 or fp32")
    if spec == "bf16" and not cpu_has_native_bf16():
        log.warning("this CPU has no native bf16 (avx512_bf16/amx_bf16): bf16 will be emulated and slow")
    return spec


def scoring_precision(spec: str, device: torch.device) -> str:
    """The precision a trained model scores images in (predict, serve, explain, `cxr evaluate`): as
    `resolve_precision`, but 'auto' on a CPU is fp32. On a trained Lite0 and cxr4-dev X-rays bf16 changed
    1.6-3.3% of the labels against fp32 (`cxr.engine.base.engine_precision`), so the same checkpoint would
    label images differently by engine; bf16 is there when asked for by name. GPUs keep their 'auto'."""
    if (spec or "auto").strip().lower() == "auto" and device.type != "cuda":
        return "fp32"
    return resolve_precision(spec, device)


@dataclass(frozen=True)
class Compute:
    """How a loop computes: where, in which precision and memory format, and whether it shows progress."""

    device: torch.device  # from resolve_device (or the DistributedContext under torchrun)
    precision: str = "fp32"  # resolved: fp32 | bf16 | fp16 (see resolve_precision)
    channels_last: bool = False  # NHWC inputs and weights for convolutions
    progress: bool = True  # progress bars on a terminal, periodic log lines elsewhere
    # what turns a loader's batch into network input once on the device (e.g. DeviceAugment for
    # {"image": uint8, "params": ...} batches); None: batches are network input already
    input_transform: Callable[[Any], torch.Tensor] | None = None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return autocast(self.device, self.precision)

    def to(self, x: Any) -> torch.Tensor:
        """An input batch on this device as network input, NHWC when asked."""
        if isinstance(x, dict):
            x = {key: value.to(self.device, non_blocking=True) for key, value in x.items()}
        else:
            x = batch_to(x, self.device, self.channels_last)
        return self.input_transform(x) if self.input_transform is not None else x

    @classmethod
    def resolve(cls, device: str = "auto", precision: str = "auto", scoring: bool = False, **kwargs: Any) -> Compute:
        """From the config's strings ('auto', 'cpu', 'cuda:1', ...), with the precision policy above
        (`scoring`: a trained model's, `scoring_precision`)."""
        dev = resolve_device(device)
        return cls(dev, (scoring_precision if scoring else resolve_precision)(precision, dev), **kwargs)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """Mixed-precision context for `precision` on `device`; fp32 is a no-op context."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in _DTYPES:
        raise CxrError(f"unknown precision {precision!r}; allowed: fp32, bf16, fp16")
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def make_grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16 on CUDA (fp16 gradients underflow without one); None otherwise."""
    if device.type == "cuda" and precision == "fp16":
        return torch.amp.GradScaler("cuda")
    return None


def to_channels_last(module: torch.nn.Module, enabled: bool = True) -> torch.nn.Module:
    """Convert 4-D weights to NHWC (faster convolutions on CPU oneDNN and CUDA tensor cores)."""
    if enabled:
        module.to(memory_format=torch.channels_last)
    return module


def batch_to(x: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """Move an input batch to `device` (non-blocking from pinned memory), NHWC when asked and 4-D."""
    if channels_last and x.dim() == 4:
        return x.to(device, non_blocking=True, memory_format=torch.channels_last)
    return x.to(device, non_blocking=True)


def available_cores() -> int:
    """CPU cores this process may run on (respects affinity masks and container limits)."""
    return threads.available_cores()


def set_threads(n: int | None = None) -> int:
    """Use `n` intra-op threads; returns the number set.

    n >= 1: that many. n None: $OMP_NUM_THREADS when the user set it, else every available core.
    n 0 (the config's `train.threads` default): $OMP_NUM_THREADS when set, else one thread per core
    that is free now (`cxr.threads.plan_threads`), so that a busy machine is not oversubscribed.
    """
    plan = threads.plan_threads(n, measure=n is not None)
    torch.set_num_threads(plan.threads)
    if plan.worth_telling:  # an idle machine's "every core" is no news
        log.info("threads: %s", plan.describe())
    return plan.threads


def resolve_workers(num_workers: int, cap: int = MAX_AUTO_WORKERS) -> int:
    """DataLoader workers: -1 means one per available core, capped at `cap`; other values are taken as given.

    Under torchrun the cores are shared by the processes of this node (LOCAL_WORLD_SIZE), so -1 gives
    each process its share rather than every core to every process.
    """
    if num_workers < -1:
        raise CxrError(f"data.num_workers must be -1 (one per core) or >= 0, got {num_workers}")
    if num_workers >= 0:
        return num_workers
    return max(1, min(available_cores() // local_world_size(), cap))


@dataclass
class Generators:
    """Explicit random generators of a run, all derived from one seed."""

    seed: int
    numpy: np.random.Generator
    torch: torch.Generator


def seed_everything(seed: int, *, deterministic: bool = True) -> Generators:
    """Seed Python, NumPy and torch (CPU and CUDA) and return explicit generators.

    Model initialisation and dropout use torch's global generator, so it is seeded here too; every
    other random choice in cxr takes one of the returned generators. `deterministic` turns off cuDNN
    autotuning so GPU runs repeat as closely as CUDA allows (CPU runs are deterministic anyway).
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.benchmark = False
    gen = torch.Generator()
    gen.manual_seed(seed)
    return Generators(seed=seed, numpy=np.random.default_rng(seed), torch=gen)


def rng_state() -> dict[str, Any]:
    """Global RNG states (Python, NumPy, torch CPU and CUDA), for checkpoints that resume exactly."""
    state: dict[str, Any] = {
        "python": _python_state_to_list(random.getstate()),
        "numpy": _numpy_state_to_dict(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        s = state["numpy"]
        np.random.set_state((s["kind"], np.asarray(s["keys"], dtype=np.uint32), s["pos"], s["has_gauss"], s["cached"]))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state_to_list(state: tuple) -> list:
    # Plain lists/ints survive torch.load(weights_only=True); tuples of ints would too, but keep it simple.
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _numpy_state_to_dict(state: tuple) -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = state
    return {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Let rank 0 run the block first (e.g. to build a cache), the other ranks after it."""
    world, main = world_size(), is_main_process()
    if world > 1 and not main:
        torch.distributed.barrier()
    yield
    if world > 1 and main:
        torch.distributed.barrier()


def gather_arrays(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Concatenate each array over all ranks (rank order); identity in a single process."""
    world = world_size()
    if world == 1:
        return arrays
    gathered: list[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, arrays)
    return tuple(np.concatenate([part[i] for part in gathered]) for i in range(len(arrays)))


def describe(device: torch.device, precision: str) -> str:
    """One line for the log: device name, precision and threads."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)}), {precision}"
    return f"CPU ({torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads), {precision}"
