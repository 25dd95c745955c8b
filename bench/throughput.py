"""Backbone throughput on this machine, in one run: PyTorch configurations against OpenVINO.

Measures the frozen backbone plus global average pooling (what the feature cache computes), with
random weights, on a random batch:

- images/s at --batch for fp32 eager, fp32 channels_last, bf16 autocast + channels_last,
  torch.compile (bf16 and, where bf16 is emulated, fp32) and OpenVINO (bf16 requested; the
  precision it actually ran is recorded). OpenVINO is the anchor: `ratio_to_openvino` = ours / best OV;
- batch-1 latency in ms (median) for the best PyTorch configuration;
- the head's training samples/s on cached features (batch --batch, Adam, cross-entropy);
- the malloc row: fp32 channels_last measured in child processes with GLIBC_TUNABLES unset and set.

With --device cuda the rows are fp32, fp32 channels_last, bf16 autocast + channels_last and bf16 with
torch.compile on the GPU (timed with CUDA synchronisation), plus batch-1 latency of the eager bf16
model and of the compiled one with CUDA graphs (mode="reduce-overhead"); OpenVINO, head and malloc
rows are CPU rows and are skipped.

The script re-executes itself once with the same GLIBC_TUNABLES that the `cxr` command sets (see
cxr.cli), so its main rows are what `cxr` gets; --no-malloc-tune skips that. JSON goes to stdout.

    .venv/bin/python bench/throughput.py --iters 10 --warmup 2 > throughput.json
    python bench/throughput.py --device cuda --batch 256 --iters 20 --warmup 5 > throughput_gpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from cxr.config import ModelConfig
from cxr.malloc import MALLOC_TUNABLES, MALLOC_TUNED_FLAG, reexec_with_malloc_tunables
from cxr.models.build import build_model
from cxr.runtime import available_cores, cpu_flags, cpu_has_native_bf16, set_threads

_CHILD_FLAG = "CXR_BENCH_CHILD"
NUM_CLASSES = 4


class PooledBackbone(nn.Module):
    """forward_features + global average pooling: exactly what the feature cache stores."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x).float().mean((2, 3))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet50", help="backbone name of cxr.models (resnet50, efficientnet_lite0)")
    parser.add_argument("--batch", type=int, default=32, help="batch size of the throughput rows")
    parser.add_argument("--size", type=int, default=224, help="input side in pixels")
    parser.add_argument("--iters", type=int, default=10, help="timed batches per configuration")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches first (compile: also the compile)")
    parser.add_argument("--latency-runs", type=int, default=30, help="batch-1 runs for the latency median")
    parser.add_argument("--head-steps", type=int, default=200, help="optimizer steps of the head measurement")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: one per available core)")
    parser.add_argument("--skip", default="", help="comma list of rows to skip: eager,channels_last,bf16,compile,openvino,latency,head,malloc")
    parser.add_argument("--no-malloc-tune", action="store_true", help="do not re-execute with GLIBC_TUNABLES set")
    parser.add_argument("--only", default="", help=argparse.SUPPRESS)  # child mode: one row, JSON out
    return parser.parse_args(argv)


def _sync() -> None:
    """Wait for queued GPU work, so that wall-clock timing covers it (a no-op without CUDA)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def time_batches(fn: Callable[[], Any], iters: int, warmup: int) -> dict[str, float]:
    """Seconds per call: warmup untimed calls, then `iters` timed ones."""
    for _ in range(warmup):
        fn()
    _sync()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "mean_s": statistics.fmean(times), "total_s": sum(times)}


def _autocast(x: torch.Tensor, precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(x.device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def torch_row(net: nn.Module, x: torch.Tensor, *, channels_last: bool, precision: str, compile_: bool,
              iters: int, warmup: int, mode: str | None = None) -> dict[str, Any]:
    """images/s of `net` on batch `x` for one configuration."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt)
    x = x.contiguous(memory_format=fmt)
    # freezing: the backbone is frozen, so inductor may fold its weights (as the feature cache does)
    if not compile_:
        fn_net: Callable = net
    elif mode is not None:
        fn_net = torch.compile(net, dynamic=False, mode=mode)
    else:
        fn_net = torch.compile(net, dynamic=False, options={"freezing": True})

    def step() -> None:
        with torch.inference_mode(), _autocast(x, precision):
            fn_net(x)

    compile_s = None
    if compile_:
        start = time.perf_counter()
        step()
        _sync()
        compile_s = round(time.perf_counter() - start, 1)
    t = time_batches(step, iters, warmup)
    row = {
        "channels_last": channels_last, "precision": precision, "compile": compile_,
        "images_per_s": round(x.shape[0] * iters / t["total_s"], 2),
        "batch_median_ms": round(1000 * t["median_s"], 1),
    }
    if compile_s is not None:
        row["first_call_s"] = compile_s
    return row


def openvino_rows(net: nn.Module, x: torch.Tensor, iters: int, warmup: int, threads: int,
                  latency_runs: int) -> dict[str, dict[str, Any]]:
    """OpenVINO with bf16 requested (f32 where the CPU lacks bf16; the precision that ran is recorded).

    Three rows: one synchronous batch (LATENCY hint), single images over parallel streams (THROUGHPUT
    hint, OpenVINO's own throughput mode), and batch-1 latency.
    """
    import openvino as ov

    core = ov.Core()
    bf16 = "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    with torch.no_grad():
        traced = torch.jit.trace(net.to(memory_format=torch.contiguous_format), x[:1])
    model_1 = ov.convert_model(traced, example_input=x[:1])
    model_n = ov.convert_model(traced, example_input=x[:1])
    model_n.reshape([x.shape[0], *x.shape[1:]])
    data, single = x.numpy(), x[:1].numpy()

    def compile_(model: Any, hint: str) -> Any:
        config = {"INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32", "PERFORMANCE_HINT": hint,
                  "INFERENCE_NUM_THREADS": threads}
        return core.compile_model(model, "CPU", config)

    def row(compiled: Any, **extra: Any) -> dict[str, Any]:
        return {"engine": "openvino", "precision_requested": "bf16", "bf16_supported": bf16,
                "precision_ran": str(compiled.get_property("INFERENCE_PRECISION_HINT")), **extra}

    rows = {}
    sync = compile_(model_n, "LATENCY")
    request = sync.create_infer_request()
    t = time_batches(lambda: request.infer({0: data}), iters, warmup)
    rows["openvino_batch"] = row(sync, hint="LATENCY", images_per_s=round(x.shape[0] * iters / t["total_s"], 2))

    streams = compile_(model_1, "THROUGHPUT")
    nreq = int(streams.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    queue = ov.AsyncInferQueue(streams, nreq)

    def stream_batch() -> None:
        for _ in range(x.shape[0]):
            queue.start_async({0: single})
        queue.wait_all()

    t = time_batches(stream_batch, iters, warmup)
    rows["openvino_streams"] = row(streams, hint="THROUGHPUT", infer_requests=nreq,
                                   images_per_s=round(x.shape[0] * iters / t["total_s"], 2))

    one = compile_(model_1, "LATENCY").create_infer_request()
    t1 = [time_batches(lambda: one.infer({0: single}), 1, 0)["total_s"] * 1000 for _ in range(latency_runs + 5)][5:]
    rows["openvino_latency_batch1"] = row(sync, hint="LATENCY", median_ms=round(statistics.median(t1), 2))
    return rows


def latency_ms(net: nn.Module, x1: torch.Tensor, *, channels_last: bool, precision: str, runs: int) -> dict[str, Any]:
    """Median and p90 wall time of one single-image forward pass."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt)
    x1 = x1.contiguous(memory_format=fmt)
    times = []
    with torch.inference_mode(), _autocast(x1, precision):
        for _ in range(5):
            net(x1)
        _sync()
        for _ in range(runs):
            start = time.perf_counter()
            net(x1)
            _sync()
            times.append(1000 * (time.perf_counter() - start))
    return {"channels_last": channels_last, "precision": precision, "runs": runs,
            "median_ms": round(statistics.median(times), 2), "p90_ms": round(float(np.percentile(times, 90)), 2)}


def head_row(head: nn.Module, channels: int, batch: int, steps: int) -> dict[str, Any]:
    """Training samples/s of the head on cached features, loader included (as `cxr` trains it)."""
    from cxr.config import TrainConfig
    from cxr.data.dataset import make_loader
    from cxr.training.features import CachedFeatureDataset
    from cxr.training.optim import build_optimizer

    n = batch * steps
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((1, n, channels)).astype(np.float16)
    labels = rng.integers(0, NUM_CLASSES, n)
    loader = make_loader(CachedFeatureDataset(feats, labels, seed=0), batch, shuffle=True, num_workers=0, seed=0)
    head.train()
    opt = build_optimizer(head, TrainConfig(optimizer="adam", lr=1e-4))  # cxr's optimizer (fused Adam)
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for fx, fy in loader:
        opt.zero_grad(set_to_none=True)
        loss_fn(head(fx), fy).backward()
        opt.step()
    seconds = time.perf_counter() - start
    return {"batch": batch, "steps": steps, "samples_per_s": round(n / seconds, 1),
            "trainable_params": sum(p.numel() for p in head.parameters() if p.requires_grad)}


def malloc_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """fp32 channels_last in two child processes: GLIBC_TUNABLES unset, then set."""
    rows = []
    base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", MALLOC_TUNED_FLAG)}
    for tuned in (False, True):
        env = dict(base, **{_CHILD_FLAG: "1"})
        if tuned:
            env["GLIBC_TUNABLES"] = MALLOC_TUNABLES
        cmd = [sys.executable, os.path.abspath(__file__), "--only", "channels_last", "--no-malloc-tune",
               "--backbone", args.backbone, "--batch", str(args.batch), "--size", str(args.size),
               "--iters", str(args.iters), "--warmup", str(args.warmup), "--threads", str(args.threads)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        row = json.loads(out)
        row["glibc_tunables"] = env.get("GLIBC_TUNABLES")
        rows.append(row)
    return rows


def gpu_result(net: nn.Module, x: torch.Tensor, args: argparse.Namespace) -> dict[str, Any]:
    """The GPU rows: fp32, channels_last, bf16 autocast, bf16 + compile, and batch-1 latency."""
    timing = {"iters": args.iters, "warmup": args.warmup}
    skip = set(filter(None, args.skip.split(",")))
    rows: dict[str, Any] = {}
    if "eager" not in skip:
        rows["fp32_eager"] = torch_row(net, x, channels_last=False, precision="fp32", compile_=False, **timing)
    if "channels_last" not in skip:
        rows["fp32_channels_last"] = torch_row(net, x, channels_last=True, precision="fp32", compile_=False, **timing)
    if "bf16" not in skip:
        rows["bf16_channels_last"] = torch_row(net, x, channels_last=True, precision="bf16", compile_=False, **timing)
    if "compile" not in skip:
        rows["bf16_compile"] = torch_row(net, x, channels_last=True, precision="bf16", compile_=True, **timing)
    result: dict[str, Any] = {"rows": rows}
    if rows:
        result["best_pytorch"] = max(rows, key=lambda k: rows[k]["images_per_s"])
    if "latency" not in skip:
        result["latency_batch1"] = latency_ms(net, x[:1], channels_last=True, precision="bf16", runs=args.latency_runs)
        result["latency_batch1"]["config"] = "bf16_channels_last, eager"
        if "compile" not in skip:
            try:
                graphed = torch_row(net, x[:1], channels_last=True, precision="bf16", compile_=True,
                                    iters=args.latency_runs, warmup=5, mode="reduce-overhead")
            except Exception as exc:  # a compiler failure is a result of this row, not of the benchmark
                result["latency_batch1_cuda_graphs"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            else:
                result["latency_batch1_cuda_graphs"] = {"median_ms": graphed["batch_median_ms"],
                                                        "first_call_s": graphed["first_call_s"],
                                                        "config": "bf16 channels_last, torch.compile reduce-overhead"}
    return result


def build(args: argparse.Namespace) -> nn.Module:
    model = build_model(ModelConfig(backbone=args.backbone, weights="random"), NUM_CLASSES, load_weights=False)
    return model.eval()


def environment(threads: int) -> dict[str, Any]:
    flags = cpu_flags()
    info = {
        "torch": torch.__version__, "python": platform.python_version(), "threads": threads,
        "cores": available_cores(), "cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
        "bf16_native": cpu_has_native_bf16(),
        "cpu_flags": sorted(flags & {"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni", "avx_vnni"}),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"), "loadavg_start": [round(v, 2) for v in os.getloadavg()],
    }
    with contextlib.suppress(ImportError):
        import openvino

        info["openvino"] = openvino.__version__
    return info


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if not args.no_malloc_tune and not os.environ.get(_CHILD_FLAG):
        reexec_with_malloc_tunables([sys.executable, os.path.abspath(__file__), *argv])
    threads = set_threads(args.threads or None)
    torch.manual_seed(0)
    model = build(args)
    net = PooledBackbone(model).eval()
    x = torch.randn(args.batch, 3, args.size, args.size)
    if args.device != "cpu":
        device = torch.device(args.device)
        gpu = gpu_result(net.to(device), x.to(device), args)
        info = {"torch": torch.__version__, "device": torch.cuda.get_device_name(device)}
        print(json.dumps({"backbone": args.backbone, "batch": args.batch, "size": args.size, "iters": args.iters,
                          "warmup": args.warmup, "environment": info, **gpu}, indent=2))
        return 0
    bf16_native = cpu_has_native_bf16()
    skip = set(filter(None, args.skip.split(",")))
    timing = {"iters": args.iters, "warmup": args.warmup}

    if args.only:  # child process of the malloc row
        row = torch_row(net, x, channels_last=True, precision="fp32", compile_=False, **timing)
        print(json.dumps(row))
        return 0

    result: dict[str, Any] = {"backbone": args.backbone, "batch": args.batch, "size": args.size, **timing,
                              "environment": environment(threads), "rows": {}}
    rows = result["rows"]
    if "eager" not in skip:
        rows["fp32_eager"] = torch_row(net, x, channels_last=False, precision="fp32", compile_=False, **timing)
    if "channels_last" not in skip:
        rows["fp32_channels_last"] = torch_row(net, x, channels_last=True, precision="fp32", compile_=False, **timing)
    # Emulated bf16 (no avx512_bf16/amx) is several times slower than fp32: time fewer batches of it.
    bf16_timing = timing if bf16_native else {"iters": min(args.iters, 3), "warmup": min(args.warmup, 1)}
    if "bf16" not in skip:
        rows["bf16_channels_last"] = torch_row(net, x, channels_last=True, precision="bf16", compile_=False, **bf16_timing)
        rows["bf16_channels_last"].update(bf16_native=bf16_native, **bf16_timing)
    if "compile" not in skip:
        rows["bf16_compile"] = torch_row(net, x, channels_last=True, precision="bf16", compile_=True, **bf16_timing)
        rows["bf16_compile"].update(bf16_native=bf16_native, **bf16_timing)
        if not bf16_native:  # emulated bf16 is slow: also show what compile does for the precision cxr uses
            rows["fp32_compile"] = torch_row(net, x, channels_last=True, precision="fp32", compile_=True, **timing)
    if "openvino" not in skip:
        try:
            rows.update(openvino_rows(net, x, args.iters, args.warmup, threads, args.latency_runs))
        except ImportError:
            result["openvino_missing"] = True

    ours = {k: v for k, v in rows.items() if not k.startswith("openvino")}
    ov_rows = {k: v for k, v in rows.items() if k in ("openvino_batch", "openvino_streams")}
    if ours:
        best_key = max(ours, key=lambda k: ours[k]["images_per_s"])
        result["best_pytorch"] = best_key
        if ov_rows:
            best_ov = max(ov_rows, key=lambda k: ov_rows[k]["images_per_s"])
            result["best_openvino"] = best_ov
            result["ratio_to_openvino"] = round(ours[best_key]["images_per_s"] / ov_rows[best_ov]["images_per_s"], 3)
        best = ours[best_key]
        if "latency" not in skip:
            result["latency_batch1"] = latency_ms(
                net, x[:1], channels_last=best["channels_last"],
                precision=best["precision"], runs=args.latency_runs,
            )
            result["latency_batch1"]["config"] = best_key + (" (without compile)" if best["compile"] else "")
    if "head" not in skip:
        channels = int(net(x[:1]).shape[1])
        result["head_training"] = head_row(model.head, channels, args.batch, args.head_steps)
    if "malloc" not in skip:
        result["malloc"] = malloc_rows(args)
    result["environment"]["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
