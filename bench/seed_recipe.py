"""End-to-end wall time and test quality of the seed recipe: cached path (K views) vs direct path.

Each run is a complete `cxr.study.run_study` (audit, split, figures, training, test evaluation
with bootstrap CIs, report), timed from start to finish:

- cached: the head trains on backbone features computed once (K augmented views per training image,
  `train.feature_views`), one run per --views value. The cache starts empty (a fresh folder under
  --out), so the time includes the extraction; with --warm each K is run a second time (cache hit);
- direct: every epoch runs the backbone on augmented images. With --direct-epochs E smaller than
  --epochs, E epochs are run and the time is scaled: wall(E) + (epochs - E) x mean epoch time, and the
  JSON says so (its test metrics are then those of the E-epoch run, not comparable in quality);
- Keras: with --keras-json FILE (output of bench/keras_reference.py) the reference time is scaled to
  this run's image counts per image (its epochs x train+val images, its test evaluation x test
  images) and the speed ratio is reported.

The script re-executes itself with the malloc tunables that `cxr` sets. JSON goes to stdout.

    .venv/bin/python bench/seed_recipe.py ../shared/data/cxr4-dev --views 4 --direct-epochs 1 \\
        --keras-json keras.json > seed_recipe.json
    .venv/bin/python bench/seed_recipe.py ../shared/data/cxr4-dev --backbone efficientnet_lite0 \\
        --weights lite0-imagenet --views 1 2 4 8 --direct-epochs 20 > quality.json
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import _common  # bench/ is on sys.path when a script runs
from cxr.config import RunConfig, load_config
from cxr.data.discover import discover
from cxr.study import run_study


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="data folder or CSV manifest")
    parser.add_argument("--epochs", type=int, default=20, help="epochs of the recipe (seed: 20)")
    parser.add_argument("--backbone", default="resnet50", help="resnet50 | resnet50-keras | efficientnet_lite0")
    parser.add_argument("--weights", default="random", help="weights spec (random, lite0-imagenet, ...)")
    parser.add_argument("--views", type=int, nargs="*", default=[4], metavar="K",
                        help="feature_views values of the cached runs, one run each (none: direct path only)")
    parser.add_argument("--direct-epochs", type=int, default=1,
                        help="epochs actually run on the direct path (scaled to --epochs); 0 skips it")
    parser.add_argument("--subset", type=int, default=0, help="use this many images, stratified by class (0: all)")
    parser.add_argument("--image-size", type=int, default=224, help="network input side")
    parser.add_argument("--config", type=Path, help="a cxr config YAML to start from (flags override it)")
    parser.add_argument("--keras-json", type=Path, help="output of bench/keras_reference.py, for the speed ratio")
    parser.add_argument("--warm", action="store_true", help="also time each cached run again with a warm cache")
    parser.add_argument("--numerics", type=int, default=0, metavar="N",
                        help="compare bf16 vs fp32 features and predictions of the first cached model on N test images")
    parser.add_argument("--out", type=Path, help="folder for the run directories and the cache (default: a temp dir)")
    parser.add_argument("--no-malloc-tune", action="store_true", help="do not re-execute with GLIBC_TUNABLES set")
    return parser.parse_args(argv)


def recipe_config(args: argparse.Namespace, name: str, **overrides: Any) -> RunConfig:
    base = {
        "model.backbone": args.backbone, "model.weights": args.weights, "model.freeze": "base",
        "train.epochs": args.epochs, "data.image_size": args.image_size,
    }
    base.update(overrides)
    cfg = load_config(args.config, base)
    cfg.name = name
    return cfg


def timed_study(cfg: RunConfig, data: Path, out: Path, cache: Path, cached: bool) -> dict[str, Any]:
    """Run one study; wall time, test metrics and per-epoch times from its run directory."""
    load = os.getloadavg()
    start = time.perf_counter()
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, feature_cache=cached))
    run_study(cfg, data, out, cache_dir=cache, progress=True)
    wall = time.perf_counter() - start
    metrics = json.loads((out / "metrics.json").read_text())
    test = metrics["test"]
    with open(out / "history.csv", newline="") as fh:
        epoch_seconds = [float(row["seconds"]) for row in csv.DictReader(fh)]
    return {
        "wall_seconds": round(wall, 1),
        "train_seconds": round(metrics.get("train_seconds", float("nan")), 1),
        "epochs_run": len(epoch_seconds),
        "epoch_seconds_mean": round(float(np.mean(epoch_seconds)), 2),
        "feature_cache": metrics.get("feature_cache"),
        "precision": metrics.get("precision"),
        "test": {
            "n": test["n"], "accuracy": round(test["accuracy"], 4), "macro_f1": round(test["macro_f1"], 4),
            "accuracy_ci": [round(v, 4) for v in test["ci"]["accuracy"]],
            "macro_f1_ci": [round(v, 4) for v in test["ci"]["macro_f1"]],
            "loss": round(test["loss"], 4), "precision": round(test["precision"], 4), "recall": round(test["recall"], 4),
        },
        "split_counts": {s: sum(c.values()) for s, c in metrics["split_counts"].items()},
        "loadavg_start": [round(v, 2) for v in load], "loadavg_end": [round(v, 2) for v in os.getloadavg()],
        "run_dir": str(out),
    }


def cache_extraction(cache: Path, views: int) -> dict[str, Any] | None:
    """Extraction time and rate from the cache entry of `views` views (the newest if several)."""
    manifests = sorted(cache.glob("*/manifest.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in manifests:
        manifest = json.loads(path.read_text())
        if manifest.get("views") == views:
            size = sum(f.stat().st_size for f in path.parent.iterdir())
            return {"extract_seconds": manifest["extract_seconds"], "images_per_second": manifest["images_per_second"],
                    "megabytes": round(size / 1e6, 1)}
    return None


def keras_estimate(keras: dict[str, Any], counts: dict[str, int], epochs: int) -> dict[str, Any]:
    """The Keras reference time scaled to this run's image counts (per image, per epoch)."""
    k_counts = keras["images"]
    times = keras["epoch_seconds"]
    later = times[1:] or times
    per_epoch = float(np.mean(later))
    per_image_epoch = per_epoch / (k_counts["train"] + k_counts["val"])
    first_overhead = times[0] - per_epoch
    per_test_image = keras["test_eval_seconds"] / max(k_counts["test"], 1)
    seconds = first_overhead + epochs * per_image_epoch * (counts["train"] + counts["val"]) + per_test_image * counts["test"]
    return {
        "estimated_seconds": round(seconds, 1),
        "note": (
            f"Keras measured {len(times)} epoch(s) on {k_counts['train']}+{k_counts['val']} train+val images "
            f"({per_image_epoch * 1000:.1f} ms per image-epoch, first-epoch overhead {first_overhead:.1f} s); "
            f"scaled to {epochs} epochs on {counts['train']}+{counts['val']} images plus test evaluation of "
            f"{counts['test']} images"
        ),
        "loadavg": [keras.get("loadavg_start"), keras.get("loadavg_end")],
    }


def numerics(run_dir: Path, n: int) -> dict[str, Any]:
    """bf16 vs fp32 on n test images of a finished run (its best.pt and split.csv)."""
    import torch

    from cxr.checkpoint import load_checkpoint, model_from_checkpoint
    from cxr.data.dataset import SplitDataset
    from cxr.rundir import read_split_csv
    from cxr.training.extract import compare_precision

    ckpt = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    model = model_from_checkpoint(ckpt)
    rows = [r for r in read_split_csv(run_dir / "split.csv") if r.split == "test"][:n]
    root = discover(load_config(run_dir / "config.yaml").data.root).root  # the folder the split paths are in
    dataset = SplitDataset(root, rows, ckpt["classes"], model.preprocessing, None, 0)
    x = torch.stack([dataset[i][0] for i in range(len(dataset))]).contiguous(memory_format=torch.channels_last)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # where cxr would run it
    model.to(device, memory_format=torch.channels_last)
    return {**compare_precision(model, x, "bf16", device=device), "device": str(device)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    out, data = _common.start(__file__, argv, args, "cxr-seed-recipe-", subset_seed=0)
    cache = out / "feature-cache"
    result: dict[str, Any] = {
        "data": str(args.data), "subset": args.subset or None, "backbone": args.backbone, "weights": args.weights,
        "epochs": args.epochs, "image_size": args.image_size, "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
        "threads": os.cpu_count(), "cached": {}, "out": str(out),
    }
    for k in args.views:
        name = f"cached_k{k}"
        cfg = recipe_config(args, name, **{"train.feature_views": k})
        row = timed_study(cfg, data, out / name, cache, cached=True)
        row["extraction"] = cache_extraction(cache, k)
        if args.warm:
            warm = timed_study(recipe_config(args, name + "_warm", **{"train.feature_views": k}), data,
                               out / (name + "_warm"), cache, cached=True)
            row["warm_wall_seconds"] = warm["wall_seconds"]
        result["cached"][str(k)] = row
        print(json.dumps({name: row}), file=sys.stderr)
    counts = next(iter(result["cached"].values()))["split_counts"] if result["cached"] else None

    if args.direct_epochs:
        e = min(args.direct_epochs, args.epochs)
        cfg = recipe_config(args, "direct", **{"train.epochs": e})
        row = timed_study(cfg, data, out / "direct", cache, cached=False)
        scaled = row["wall_seconds"] + (args.epochs - e) * row["epoch_seconds_mean"]
        row["estimated_seconds"] = round(scaled, 1)
        row["estimate_note"] = ("measured" if e == args.epochs else
                                f"{e} epoch(s) run; estimate = wall + {args.epochs - e} x mean epoch time; "
                                f"its test metrics are those of the {e}-epoch run")
        result["direct"] = row
        counts = counts or row["split_counts"]

    if args.keras_json and counts:
        result["keras"] = keras_estimate(json.loads(args.keras_json.read_text()), counts, args.epochs)

    speed: dict[str, Any] = {}
    for k, row in result["cached"].items():
        entry = {}
        if "direct" in result:
            entry["direct_over_cached"] = round(result["direct"]["estimated_seconds"] / row["wall_seconds"], 2)
        if "keras" in result:
            entry["keras_over_cached"] = round(result["keras"]["estimated_seconds"] / row["wall_seconds"], 2)
        speed[f"k{k}"] = entry
    if "direct" in result and "keras" in result:
        speed["keras_over_direct"] = round(result["keras"]["estimated_seconds"] / result["direct"]["estimated_seconds"], 2)
    result["speed_ratios"] = speed
    if args.numerics and result["cached"]:
        first = next(iter(result["cached"].values()))
        result["numerics_bf16_vs_fp32"] = numerics(Path(first["run_dir"]), args.numerics)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
