"""Input pipeline throughput: per-image decode + augmentation in DataLoader workers vs the decoded uint8
cache with augmentation on the device (`data.decoded_cache`), and, with --train, fine-tuning steps.

    python bench/input_pipeline.py DATA [--device cuda] [--size 192] [--batch 256] [--workers 8] [--train]

Prints JSON: images/s of each input path (loader + transform to network input on the device), and
with --train the images/s of fine-tuning EfficientNet-Lite0 (random weights, bf16 on GPUs) fed by
each path, so "input-bound" is visible as a ratio measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from cxr.config import AugmentConfig, ModelConfig
from cxr.data.dataset import SplitDataset, make_loader
from cxr.data.discover import discover
from cxr.data.image_cache import DecodedImages, build_image_cache
from cxr.device_augment import DeviceAugment
from cxr.models.build import build_model
from cxr.rundir import SplitRow
from cxr.runtime import Compute
from cxr.transforms import Preprocessing, SeedAugment


def _rows(data: Path, limit: int) -> tuple[Path, list[SplitRow], list[str]]:
    found = discover(data)
    samples = found.samples[:: max(1, len(found.samples) // limit)][:limit]
    return found.root, [SplitRow(s.path, s.label, "train", s.path) for s in samples], found.classes


def _timed(loader, compute: Compute, steps: int, step_fn=None) -> float:
    seen, start = 0, None
    for i, (x, y) in enumerate(loader):
        if i == 1:  # the first batch pays for worker start-up
            if compute.device.type == "cuda":
                torch.cuda.synchronize()
            start, seen = time.perf_counter(), 0
        x = compute.to(x)
        if step_fn is not None:
            step_fn(x, y.to(compute.device))
        seen += len(y)
        if i >= steps:
            break
    if compute.device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start) if start else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=-1)
    parser.add_argument("--images", type=int, default=1024, help="images to cache and cycle through")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--train", action="store_true", help="also time fine-tuning steps fed by each path")
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "cxr-bench-images")
    args = parser.parse_args()

    compute = Compute.resolve(args.device, "auto", channels_last=True, progress=False)
    pre = Preprocessing("half", size=args.size)
    root, rows, classes = _rows(args.data, args.images)
    augment = SeedAugment(AugmentConfig())
    labels = [classes.index(r.label) for r in rows]
    started = time.perf_counter()
    images = build_image_cache(root, rows, args.size, args.cache, progress=False)
    cache_seconds = time.perf_counter() - started
    per_image = make_loader(SplitDataset(root, rows, classes, pre, augment), args.batch, True, args.workers, 0)
    decoded = make_loader(DecodedImages(images, labels, augment, 0), args.batch, True, args.workers, 0)
    on_device = Compute(compute.device, compute.precision, True, False, DeviceAugment(pre, "nearest", True))
    result = {
        "device": str(compute.device), "precision": compute.precision, "size": args.size, "batch": args.batch,
        "workers": per_image.num_workers, "images": len(rows), "cache_build_seconds": round(cache_seconds, 2),
        "loadavg": os.getloadavg(),
        "input_images_per_s": {"per_image_workers": _timed(per_image, compute, args.steps),
                               "decoded_cache_device_augment": _timed(decoded, on_device, args.steps)},
    }
    if args.train:
        model = build_model(ModelConfig(backbone="efficientnet_lite0", weights="random", freeze="none"),
                            len(classes)).to(compute.device).to(memory_format=torch.channels_last).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step(x: torch.Tensor, y: torch.Tensor) -> None:
            with compute.autocast():
                loss = torch.nn.functional.cross_entropy(model(x).float(), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        result["train_images_per_s"] = {"per_image_workers": _timed(per_image, compute, args.steps, step),
                                        "decoded_cache_device_augment": _timed(decoded, on_device, args.steps, step)}
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
