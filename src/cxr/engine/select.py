"""Building an engine by name, and `auto`: the fastest engine installed here, measured once per machine.

`select_engine('auto', ...)` looks up `cache_root()/engines.json` under a key made of everything the
ranking depends on: the CPU (model name and the vector/bf16/int8 flags), the cores, the model (its
class and backbone name), what it outputs, the input size, batch size, precision and hint, and the
versions of torch, ONNX Runtime and OpenVINO. Not the thread count: it follows the cores free at start
(`cxr.threads`), and a key holding it missed whenever the load changed, measuring again and again
(the count measured at is kept in the record). On a miss every installed engine is
built (each export checked against PyTorch, `cxr.engine.parity`) and timed on a few batches of the
real batch size (one warm-up, then up to MEASURE_BATCHES or MEASURE_SECONDS), the fastest is kept,
and the numbers are written to the file with the load average they were measured under. A hit
measures nothing. Delete the file (or the entry) to measure again, e.g. after measuring on a busy
machine.

Small jobs (fewer than AUTO_MIN_IMAGES images, when the caller knows the count) run on PyTorch
eager: an export costs more than it could save there. A measurement costs more still (every engine
exported, checked and timed): a job of known size below AUTO_MEASURE_MIN_IMAGES that finds no choice
for its key runs on PyTorch without measuring, so `auto` never costs more than the engine it runs on
plus a look-up; a larger job (or one of unknown size) measures, once. Engines other than torch
run on the CPU only; `auto` on a GPU is torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cxr.engine.base import (
    CONCRETE_ENGINES,
    ENGINE_NAMES,
    HINTS,
    INT8_ENGINE,
    Engine,
    installed,
    require_installed,
)
from cxr.engine.exports import cache_root, onnx_export, openvino_export
from cxr.engine.parity import PARITY_IMAGES, check_parity, synthetic_inputs
from cxr.engine.torch_engine import TorchEngine
from cxr.errors import CxrError
from cxr.rundir import write_json
from cxr.runtime import CPUINFO, cpu_flags

log = logging.getLogger(__name__)

AUTO_MIN_IMAGES = 256
AUTO_MEASURE_MIN_IMAGES = 2000  # a miss measures only for jobs this large (or of unknown size): it repays there
MEASURE_BATCHES = 3
MEASURE_SECONDS = 3.0
AUTO_ORDER = ("openvino", "onnxruntime", "torch")  # measured in this order; ties go to the first
CHOICES_FILE = "engines.json"
CHOICES_FORMAT = "cxr-engines/1"
_KEY_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8")
_VERSIONED = ("torch", "onnxruntime", "openvino")


@dataclass(frozen=True)
class EngineSpec:
    """What an engine is built for; the same spec on the same machine gives the same `auto` choice."""

    output: str  # features | logits (cxr.engine.base.OUTPUTS)
    precision: str = "fp32"  # the torch engine's resolved precision: fp32 | bf16 (autocast)
    export_precision: str = "fp32"  # what exported engines compute in: fp32, or bf16 when asked (base.engine_precision)
    batch_size: int = 32  # the batch the engine will mostly see (auto measures at it)
    threads: int = field(default_factory=torch.get_num_threads)  # intra-op threads
    hint: str = "throughput"  # throughput (batches) | latency (one request at a time)
    device: str = "cpu"  # torch's device; other engines need the CPU
    channels_last: bool = True  # torch engine: NHWC inputs
    compiled: bool = False  # torch engine: torch.compile (features only)

    def __post_init__(self) -> None:
        if self.hint not in HINTS:
            raise CxrError(f"unknown performance hint {self.hint!r}; allowed: {', '.join(HINTS)}")


def build_engine(name: str, model: nn.Module, spec: EngineSpec, sample: torch.Tensor | None = None) -> Engine:
    """Engine `name` (torch, onnxruntime, openvino) for `model`; exports are checked on `sample`.

    A bf16 export that misses its bound is rebuilt in fp32 (with a warning): bf16 only where it
    stays accurate.
    """
    if name == "torch":
        return TorchEngine(model, spec.output, device=torch.device(spec.device), precision=spec.precision,
                           channels_last=spec.channels_last, compiled=spec.compiled, batch_size=spec.batch_size)
    if name not in CONCRETE_ENGINES:
        raise CxrError(f"unknown engine {name!r}; allowed here: {', '.join(CONCRETE_ENGINES)}")
    if torch.device(spec.device).type != "cpu":
        raise CxrError(f"engine {name!r} runs on the CPU, but the device is {spec.device}; "
                       "use --device cpu, or --engine torch (or auto) on a GPU")
    require_installed(name)
    sample = _sample(model, sample)
    engine = _exported_engine(name, model, spec, int(sample.shape[-1]))
    try:
        check_parity(engine, model, sample[:PARITY_IMAGES])
    except CxrError as exc:
        if engine.precision == "fp32":
            raise
        log.warning("engine %s: %s is not accurate enough for this model (%s); using fp32", name,
                    engine.precision, exc)
        fp32 = dataclasses.replace(spec, export_precision="fp32")
        engine = _exported_engine(name, model, fp32, int(sample.shape[-1]))
        check_parity(engine, model, sample[:PARITY_IMAGES])
    return engine


def _exported_engine(name: str, model: nn.Module, spec: EngineSpec, size: int) -> Engine:
    try:
        if name == "onnxruntime":
            from cxr.engine.ort import OrtEngine

            return OrtEngine(onnx_export(model, spec.output, size), spec.output, spec.threads)
        from cxr.engine.openvino import OpenVinoEngine

        return OpenVinoEngine(openvino_export(model, spec.output, size), spec.output, spec.threads,
                              spec.export_precision, spec.hint)
    except CxrError:
        raise
    except Exception as exc:  # noqa: BLE001 - an exporter's or runtime's failure, told as one line
        raise CxrError(f"engine {name!r} could not be built for {type(model).__name__}: "
                       f"{type(exc).__name__}: {exc}") from exc


def select_engine(name: str, model: nn.Module, spec: EngineSpec, *, sample: torch.Tensor | None = None,
                  images: int | None = None) -> Engine:
    """Engine `name`, or for 'auto' the fastest installed one (see the module docstring)."""
    if name == INT8_ENGINE:
        raise CxrError(f"engine {INT8_ENGINE!r} needs calibration and validation images: it is built by "
                       "cxr.engine.int8 (Predictor.use_engine), not here")
    if name != "auto":
        if name not in ENGINE_NAMES:
            raise CxrError(f"unknown engine {name!r}; allowed: {', '.join(ENGINE_NAMES)}")
        return build_engine(name, model, spec, sample)
    if torch.device(spec.device).type != "cpu" or (images is not None and images < AUTO_MIN_IMAGES):
        return build_engine("torch", model, spec)
    sample = _sample(model, sample)
    key = choice_key(model, spec, int(sample.shape[-1]))
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    path = cache_root() / CHOICES_FILE
    cached = read_choices(path).get(digest)
    if cached and cached.get("engine") in CONCRETE_ENGINES and installed(cached["engine"]):
        ran = "fp32" if cached.get("precision") == "fp32" else spec.export_precision
        try:  # at the precision that passed its check when measured (a bf16 miss is not retried)
            engine = build_engine(cached["engine"], model, dataclasses.replace(spec, export_precision=ran), sample)
        except CxrError as exc:
            log.warning("engine auto: the cached choice %s cannot be used (%s); using torch", cached["engine"], exc)
            return build_engine("torch", model, spec)
        log.info("engine auto: %s (measured %s on this machine: %s)", engine.describe(), cached.get("measured_at"),
                 _rates_text(cached.get("images_per_s", {})))
        return engine
    if images is not None and images < AUTO_MEASURE_MIN_IMAGES:
        log.info("engine auto: torch (no engine measured here yet for this model and batch; measuring would cost "
                 "more than it saves on %d images; a job of %d or more measures once)", images, AUTO_MEASURE_MIN_IMAGES)
        return build_engine("torch", model, spec)
    return _measure_and_choose(model, spec, sample, key, digest, path)


def _measure_and_choose(model: nn.Module, spec: EngineSpec, sample: torch.Tensor, key: dict[str, Any],
                        digest: str, path: Path) -> Engine:
    batch = np.resize(sample.numpy(), (spec.batch_size, *sample.shape[1:])).astype(np.float32)
    rates: dict[str, float] = {}
    best: Engine | None = None
    for name in (n for n in AUTO_ORDER if installed(n)):
        try:
            engine = build_engine(name, model, spec, sample)
        except CxrError as exc:
            log.warning("engine auto: skipping %s: %s", name, exc)
            continue
        rates[name] = measure(engine, batch)
        if best is None or rates[name] > rates[best.name]:
            best = engine
    if best is None:  # pragma: no cover - torch is always installed and always builds
        return build_engine("torch", model, spec)
    record = {"key": key, "engine": best.name, "precision": best.precision, "images_per_s": rates, "threads": spec.threads,
              "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"), "loadavg": [round(v, 2) for v in os.getloadavg()]}
    write_choice(path, digest, record)
    log.info("engine auto: %s, the fastest here (%s; cached in %s)", best.describe(), _rates_text(rates), path)
    return best


def measure(engine: Engine, batch: np.ndarray, batches: int = MEASURE_BATCHES, seconds: float = MEASURE_SECONDS) -> float:
    """Images/s of `engine` on `batch`: one warm-up call, then up to `batches` timed calls or `seconds`."""
    engine.run(batch)
    done, start = 0, time.perf_counter()
    while done < batches and (done == 0 or time.perf_counter() - start < seconds):
        engine.run(batch)
        done += 1
    return round(done * len(batch) / max(time.perf_counter() - start, 1e-9), 2)


def choice_key(model: nn.Module, spec: EngineSpec, size: int) -> dict[str, Any]:
    """Everything an `auto` choice depends on (see the module docstring)."""
    versions = {}
    for package in _VERSIONED:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "format": CHOICES_FORMAT, "cpu": cpu_model(), "flags": sorted(cpu_flags() & set(_KEY_FLAGS)),
        "machine": platform.machine(), "cores": os.cpu_count(), "model": type(model).__name__,
        "backbone": getattr(model, "backbone_name", "") or type(getattr(model, "backbone", model)).__name__,
        "size": size, "versions": versions, **{k: v for k, v in asdict(spec).items() if k not in ("device", "threads")},
    }


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else platform.processor()."""
    try:
        for line in CPUINFO.read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def read_choices(path: Path) -> dict[str, Any]:
    """The cached choices by key digest; an unreadable or foreign file counts as empty."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != CHOICES_FORMAT or not isinstance(data.get("choices"), dict):
        return {}
    return data["choices"]


def write_choice(path: Path, digest: str, record: dict[str, Any]) -> None:
    """Add or replace one choice (atomic rewrite of the whole file)."""
    choices = read_choices(path)
    choices[digest] = record
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"format": CHOICES_FORMAT, "choices": choices})


def _sample(model: nn.Module, sample: torch.Tensor | None) -> torch.Tensor:
    if sample is not None and len(sample):
        return sample.detach().to("cpu", torch.float32).contiguous()
    pre = getattr(model, "preprocessing", None)
    if pre is None:
        raise CxrError(f"{type(model).__name__} has no preprocessing record: give sample images to check an engine")
    return synthetic_inputs(pre)


def _rates_text(rates: dict[str, float]) -> str:
    return ", ".join(f"{name} {rate:.1f} images/s" for name, rate in sorted(rates.items(), key=lambda kv: -kv[1]))
