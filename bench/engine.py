"""Inference engines against PyTorch eager and against the machine's own arithmetic limit, in one run.

Measures the frozen backbone + global average pooling (what the feature cache computes, batch
--batch, --size px, random or --weights weights) through every engine `cxr.engine` can build here:

- torch eager fp32 (NCHW; the reference every ratio divides by), torch channels_last fp32, torch bf16
  autocast (where the CPU has native bf16), ONNX Runtime fp32, OpenVINO fp32 and bf16 (THROUGHPUT
  hint, the batch split over its streams), OpenVINO int8 (NNCF, calibrated on synthetic images:
  a speed row only, `--engine openvino-int8` checks accuracy on the run's own data), and the engine
  `auto` picks (measured fresh, in a temporary cache; exported engines in fp32, as cxr runs them
  unless --precision bf16 is given). bf16 and int8 rows are speed rows: bf16 changed 2.5-3.3% of a
  trained model's labels on X-rays (cxr.engine.base.engine_precision);
- the machine's fp32 limit: the best of a large fp32 matmul in torch and in numpy (GFLOP/s, all
  threads), beside an estimate from the CPU's flags and clock; and the model's FLOPs per image
  (counted with torch.utils.flop_counter), so each row prints GFLOP/s and its fraction of the limit;
- with --resnet: ResNet-50 (batch --resnet-batch), the best cxr engine against OpenVINO's own best
  (its THROUGHPUT mode on single-image requests, and one synchronous batch), as a ratio.

Every ratio is measured in the same run; the load average is printed at the start and end (a
number taken on a busy machine is not a result). JSON on stdout.

    .venv/bin/python bench/engine.py > engine.json                  # Lite0, 224 px, batch 64
    .venv/bin/python bench/engine.py --resnet --skip int8 > engine_resnet.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

from cxr.config import ModelConfig
from cxr.engine.base import installed
from cxr.engine.parity import synthetic_inputs
from cxr.engine.select import EngineSpec, build_engine, cpu_model, select_engine
from cxr.malloc import reexec_with_malloc_tunables
from cxr.models.build import build_model
from cxr.runtime import cpu_flags, cpu_has_native_bf16, set_threads

TARGET_OVER_EAGER = 2.5
TARGET_FRACTION = 0.5


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="efficientnet_lite0", help="backbone of the main rows")
    p.add_argument("--weights", default="random", help="weights spec (speed does not depend on them)")
    p.add_argument("--size", type=int, default=224, help="input side in pixels")
    p.add_argument("--batch", type=int, default=64, help="batch size")
    p.add_argument("--iters", type=int, default=5, help="timed batches per row")
    p.add_argument("--warmup", type=int, default=1, help="untimed batches first")
    p.add_argument("--threads", type=int, default=0, help="threads (0: one per free core, as cxr chooses)")
    p.add_argument("--matmul", type=int, default=2048, help="side of the square matmul of the fp32 limit")
    p.add_argument("--resnet", action="store_true", help="also ResNet-50: best cxr engine vs OpenVINO's best")
    p.add_argument("--resnet-batch", type=int, default=32, help="ResNet-50 batch size")
    p.add_argument("--skip", default="", help="comma list of rows to skip: torch_bf16,ort,openvino,int8,auto")
    p.add_argument("--no-malloc-tune", action="store_true", help="do not re-execute with cxr's environment")
    return p.parse_args(argv)


def images_per_s(fn: Callable[[], Any], batch: int, iters: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return round(batch * iters / (time.perf_counter() - start), 2)


def _gflops(fn: Callable[[], Any], flops: float, reps: int = 3) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return flops * reps / (time.perf_counter() - start) / 1e9


def fp32_limit(n: int, threads: int) -> dict[str, Any]:
    """Measured fp32 matmul GFLOP/s (torch and numpy) and an estimate from the CPU flags and clock."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    an, bn = a.numpy(), b.numpy()
    torch_gflops = _gflops(lambda: a @ b, 2.0 * n**3)
    numpy_gflops = _gflops(lambda: an @ bn, 2.0 * n**3)
    flags = cpu_flags()
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    mhz = _cpu_mhz()
    estimate = round(threads * 2 * lanes * 2 * mhz / 1e3, 1) if mhz else None  # 2 FMA units, 2 FLOPs per FMA
    limit = max(torch_gflops, numpy_gflops)
    return {"matmul_side": n, "torch_matmul_gflops": round(torch_gflops, 1), "numpy_matmul_gflops": round(numpy_gflops, 1),
            "limit_gflops": round(limit, 1), "estimate_from_flags_gflops": estimate, "cpu_mhz": mhz,
            "estimate_note": "threads x 2 FMA units x vector lanes x 2 FLOPs x clock; some CPUs (e.g. Zen 4) "
                             "run 512-bit FMAs at half rate, so the measured matmul is the limit used"}


def _cpu_mhz() -> float | None:
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("cpu MHz"):
                return float(line.partition(":")[2])
    return None


def model_gflops(model: torch.nn.Module, size: int) -> float:
    """GFLOP of one image through forward_features + GAP (FlopCounterMode: 2 FLOPs per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.forward_features(torch.zeros(1, 3, size, size)).mean((2, 3))
    return counter.get_total_flops() / 1e9


def build(backbone: str, weights: str, size: int) -> torch.nn.Module:
    model = build_model(ModelConfig(backbone=backbone, weights=weights), 4, load_weights=weights != "random")
    model.preprocessing = type(model.preprocessing)(model.preprocessing.mode, size)
    return model.eval()


def engine_rows(model: torch.nn.Module, args: argparse.Namespace, batch: int, threads: int,
                skip: set[str]) -> dict[str, dict[str, Any]]:
    """images/s of every engine configuration on one random batch."""
    x = torch.randn(batch, 3, model.preprocessing.size, model.preprocessing.size)
    x_np = x.numpy()
    sample = synthetic_inputs(model.preprocessing, 8)
    timing = (batch, args.iters, args.warmup)
    configs = [("torch_eager_fp32", "torch", "fp32", False), ("torch_channels_last_fp32", "torch", "fp32", True)]
    if cpu_has_native_bf16() and "torch_bf16" not in skip:
        configs.append(("torch_channels_last_bf16", "torch", "bf16", True))
    if installed("onnxruntime") and "ort" not in skip:
        configs.append(("onnxruntime_fp32", "onnxruntime", "fp32", False))
    if installed("openvino") and "openvino" not in skip:
        configs += [("openvino_fp32", "openvino", "fp32", False), ("openvino_bf16", "openvino", "bf16", False)]
    rows: dict[str, dict[str, Any]] = {}
    for key, name, precision, channels_last in configs:
        spec = EngineSpec("features", precision=precision, export_precision=precision, batch_size=batch,
                          threads=threads, channels_last=channels_last)
        engine = build_engine(name, model, spec, sample)
        data = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        run = (lambda e=engine, d=data: e(d)) if name == "torch" else (lambda e=engine: e.run(x_np))
        rows[key] = {"engine": name, "precision_ran": engine.precision, "images_per_s": images_per_s(run, *timing),
                     "describe": engine.describe()}
        if name == "torch":
            model.to(memory_format=torch.contiguous_format)
    if installed("openvino-int8") and "int8" not in skip:
        rows["openvino_int8"] = int8_row(model, sample, x, threads, timing)
    if "auto" not in skip:  # the cache is this run's temporary one: a fresh measurement, not an old choice
        engine = select_engine("auto", model, EngineSpec("features", batch_size=batch, threads=threads,
                                                         precision="bf16" if cpu_has_native_bf16() else "fp32"),
                               sample=sample)
        rows["auto"] = {"engine": engine.name, "precision_ran": engine.precision, "describe": engine.describe(),
                        "images_per_s": images_per_s(lambda: engine.run(x.numpy()), *timing)}
    return rows


def int8_row(model: torch.nn.Module, sample: torch.Tensor, x: torch.Tensor, threads: int,
             timing: tuple[int, int, int]) -> dict[str, Any]:
    from cxr.engine.exports import openvino_export
    from cxr.engine.int8 import quantize
    from cxr.engine.openvino import OpenVinoEngine

    fp32 = openvino_export(model, "features", model.preprocessing.size)
    out = quantize(fp32, synthetic_inputs(model.preprocessing, 32), fp32.with_name(fp32.stem + "-bench-int8.xml"))
    engine = OpenVinoEngine(out, "features", threads, "int8", "throughput", name="openvino-int8")
    return {"engine": "openvino-int8", "precision_ran": "int8", "describe": engine.describe(),
            "images_per_s": images_per_s(lambda: engine.run(x.numpy()), *timing),
            "note": "speed only: calibrated on synthetic images; accuracy is checked per run by --engine openvino-int8"}


def summarise(rows: dict[str, dict[str, Any]], gflop: float, limit: float) -> dict[str, Any]:
    eager = rows["torch_eager_fp32"]["images_per_s"]
    for row in rows.values():
        row["gflops"] = round(row["images_per_s"] * gflop, 1)
        row["fraction_of_fp32_limit"] = round(row["gflops"] / limit, 3)
        row["ratio_to_eager_fp32"] = round(row["images_per_s"] / eager, 2)
    best = max((k for k in rows if k != "auto"), key=lambda k: rows[k]["images_per_s"])
    out = {"best": best, "best_ratio_to_eager_fp32": rows[best]["ratio_to_eager_fp32"],
           "best_fraction_of_fp32_limit": rows[best]["fraction_of_fp32_limit"],
           "targets": {f"best >= {TARGET_OVER_EAGER}x eager": rows[best]["ratio_to_eager_fp32"] >= TARGET_OVER_EAGER,
                       f"best >= {TARGET_FRACTION:.0%} of the fp32 limit":
                           rows[best]["fraction_of_fp32_limit"] >= TARGET_FRACTION}}
    fp32 = [k for k in rows if k != "auto" and rows[k]["precision_ran"] == "fp32"]
    best_fp32 = max(fp32, key=lambda k: rows[k]["images_per_s"])
    out.update(best_fp32=best_fp32, best_fp32_ratio_to_eager_fp32=rows[best_fp32]["ratio_to_eager_fp32"],
               best_fp32_fraction_of_fp32_limit=rows[best_fp32]["fraction_of_fp32_limit"])
    if "auto" in rows:
        out["auto_ratio_to_best"] = round(rows["auto"]["images_per_s"] / rows[best]["images_per_s"], 3)
    return out


def resnet_section(args: argparse.Namespace, threads: int, limit: float) -> dict[str, Any]:
    """ResNet-50: every cxr engine vs OpenVINO's own best way to run it (streams of single images)."""
    import openvino as ov

    model = build("resnet50", "random", args.size)
    skip = {"int8", "auto", *filter(None, args.skip.split(","))}
    rows = engine_rows(model, args, args.resnet_batch, threads, skip)
    from cxr.engine.exports import openvino_export
    from cxr.engine.openvino import kept_signal_stack

    core, xml = ov.Core(), openvino_export(model, "features", args.size)
    single = torch.randn(1, 3, args.size, args.size).numpy()
    native = {}
    for precision in ("f32", "bf16"):
        with kept_signal_stack():
            compiled = core.compile_model(core.read_model(str(xml)), "CPU", {
                "PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_PRECISION_HINT": precision,
                "INFERENCE_NUM_THREADS": threads})
        queue = ov.AsyncInferQueue(compiled, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))

        def streams(q: Any = queue) -> None:
            for _ in range(args.resnet_batch):
                q.start_async({0: single})
            q.wait_all()

        native[f"openvino_native_streams_{precision}"] = images_per_s(streams, args.resnet_batch, args.iters,
                                                                      args.warmup)
    best_ours = max(rows, key=lambda k: rows[k]["images_per_s"])
    best_native = max(native, key=native.get)
    summary = summarise(rows, model_gflops(model, args.size), limit)
    return {"batch": args.resnet_batch, "rows": rows, "summary": summary, "openvino_native": native,
            "best_cxr": best_ours,
            "best_openvino_native": best_native,
            "ratio_best_cxr_to_openvino_best": round(rows[best_ours]["images_per_s"] / native[best_native], 3),
            "target": "ratio >= 1.0"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if not args.no_malloc_tune:
        reexec_with_malloc_tunables([sys.executable, os.path.abspath(__file__), *argv])
    start_load = [round(v, 2) for v in os.getloadavg()]
    os.environ["CXR_CACHE_DIR"] = tempfile.mkdtemp(prefix="cxr-bench-engine-")  # exports and choices of this run only
    threads = set_threads(args.threads)
    torch.manual_seed(0)
    model = build(args.backbone, args.weights, args.size)
    gflop = model_gflops(model, args.size)
    limit = fp32_limit(args.matmul, threads)
    rows = engine_rows(model, args, args.batch, threads, set(filter(None, args.skip.split(","))))
    result: dict[str, Any] = {
        "backbone": args.backbone, "weights": args.weights, "size": args.size, "batch": args.batch,
        "iters": args.iters, "warmup": args.warmup,
        "environment": {"cpu": cpu_model(), "threads": threads, "torch": torch.__version__,
                        "flags": sorted(cpu_flags() & {"avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16"}),
                        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "loadavg_start": start_load},
        "gflop_per_image": round(gflop, 3), "machine_fp32_limit": limit, "rows": rows,
        **summarise(rows, gflop, limit["limit_gflops"]),
    }
    if args.resnet and installed("openvino"):
        result["resnet50"] = resnet_section(args, threads, limit["limit_gflops"])
    result["environment"]["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
