"""Throughput on a shared machine: EfficientNet-Lite0 idle vs with one busy process pinned to one core.

Each configuration runs in a child process twice: on the idle machine, and while a busy loop
(`taskset -c CORE python -c 'while True: pass'`, or sched_setaffinity where taskset is missing) holds
one core. The ratio busy / idle shows how throughput degrades; in proportion to the cores taken
(one of two: 0.5) is the goal, at least 0.4 the target. Configurations:

- `naive_torch`: PyTorch eager as before cxr chose threads: one thread per core, OpenMP's default
  spinning waits (OMP_WAIT_POLICY unset);
- `cxr_torch`: PyTorch with cxr's policy: threads = the cores free at start (`cxr.threads`) and
  passive OpenMP waits (the environment the `cxr` command re-executes itself with);
- `cxr_engine`: the same policy with --engine (default auto: the fastest engine installed here).

Every child gets the malloc tunables of `cxr`. JSON on stdout with the load average at start and end.

    .venv/bin/python bench/busy.py > busy.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

CONFIGS = {  # name: (engine, threads: 0 = cxr's choice / -1 = every core, passive waits)
    "naive_torch": ("torch", -1, False),
    "cxr_torch": ("torch", 0, True),
    "cxr_engine": (None, 0, True),
}
TARGET_RATIO = 0.4


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", default="auto", help="engine of the cxr_engine configuration")
    p.add_argument("--size", type=int, default=224, help="input side in pixels")
    p.add_argument("--batch", type=int, default=64, help="batch size")
    p.add_argument("--seconds", type=float, default=15.0, help="timed seconds per measurement (at least 2 batches)")
    p.add_argument("--busy-core", type=int, default=1, help="the core the busy process is pinned to")
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma list of configurations to run")
    p.add_argument("--no-malloc-tune", action="store_true", help="do not re-execute with cxr's environment")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One measurement: threads chosen now (so the busy core is seen), engine built, batches timed."""
    import torch

    from cxr.config import ModelConfig
    from cxr.engine.parity import synthetic_inputs
    from cxr.engine.select import EngineSpec, select_engine
    from cxr.models.build import build_model
    from cxr.runtime import available_cores, set_threads
    from cxr.threads import free_cores

    free = free_cores()
    threads = set_threads(available_cores() if args.threads < 0 else args.threads)
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="efficientnet_lite0", weights="random"), 4, load_weights=False).eval()
    model.preprocessing = type(model.preprocessing)(model.preprocessing.mode, args.size)
    spec = EngineSpec("features", batch_size=args.batch, threads=threads, channels_last=True)
    engine = select_engine(args.engine, model, spec, sample=synthetic_inputs(model.preprocessing, 8))
    x = torch.randn(args.batch, 3, args.size, args.size)
    data = x.contiguous(memory_format=torch.channels_last) if engine.name == "torch" else x.numpy()
    run = (lambda: engine(data)) if engine.name == "torch" else (lambda: engine.run(data))
    run()
    done, start = 0, time.perf_counter()
    while done < 2 or time.perf_counter() - start < args.seconds:
        run()
        done += 1
    return {"images_per_s": round(done * args.batch / (time.perf_counter() - start), 2), "threads": threads,
            "free_cores_at_start": None if free is None else round(free, 2), "engine": engine.describe(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}


def busy_process(core: int) -> subprocess.Popen:
    loop = [sys.executable, "-c", "while True: pass"]
    if shutil.which("taskset"):
        return subprocess.Popen(["taskset", "-c", str(core), *loop])
    pin = f"import os; os.sched_setaffinity(0, {{{core}}})\nwhile True: pass"
    return subprocess.Popen([sys.executable, "-c", pin])


def measure(args: argparse.Namespace, name: str, busy: bool, cache: str) -> dict[str, Any]:
    engine, threads, passive = CONFIGS[name]
    env = dict(os.environ, CXR_CACHE_DIR=cache)
    if not passive:
        env.pop("OMP_WAIT_POLICY", None)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--engine", engine or args.engine,
           "--threads", str(threads), "--size", str(args.size), "--batch", str(args.batch),
           "--seconds", str(args.seconds), "--no-malloc-tune"]
    hog = busy_process(args.busy_core) if busy else None
    try:
        if hog is not None:
            time.sleep(1.0)  # let the busy loop show in /proc/stat before the child samples it
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    if out.returncode != 0:
        raise SystemExit(f"{name} ({'busy' if busy else 'idle'}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    if not args.no_malloc_tune:
        from cxr.malloc import reexec_with_malloc_tunables

        reexec_with_malloc_tunables([sys.executable, os.path.abspath(__file__), *argv])
    result: dict[str, Any] = {"size": args.size, "batch": args.batch, "seconds": args.seconds,
                              "busy_core": args.busy_core, "cores": len(os.sched_getaffinity(0)),
                              "loadavg_start": [round(v, 2) for v in os.getloadavg()], "configs": {}}
    with tempfile.TemporaryDirectory(prefix="cxr-bench-busy-") as cache:
        for name in filter(None, args.configs.split(",")):
            idle = measure(args, name, False, cache)
            busy = measure(args, name, True, cache)
            result["configs"][name] = {"idle": idle, "busy": busy,
                                       "ratio_busy_to_idle": round(busy["images_per_s"] / idle["images_per_s"], 3)}
    configs = result["configs"]
    if "cxr_engine" in configs:
        result["target"] = f"cxr_engine ratio >= {TARGET_RATIO}"
        result["target_met"] = configs["cxr_engine"]["ratio_busy_to_idle"] >= TARGET_RATIO
    result["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
