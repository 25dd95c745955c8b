"""`cxr predict` and `cxr evaluate` end to end, timed as a user runs them, and their agreement across engines.

With an EfficientNet-Lite0 checkpoint (--checkpoint, or one trained here in a minute: `cxr train` on
--train-images images of DATA with `--weights lite0-imagenet`, frozen base, --epochs epochs; speed does
not depend on accuracy), on --n other images of DATA (evenly spaced over its sorted list):

- `cxr predict` with `--engine torch --precision fp32` (the reference), `--engine torch` (PyTorch's
  default precision: bf16 on CPUs with native bf16), then `--engine auto` with an empty engine cache
  (cold: the export, its check against PyTorch and the measurement included), then again (warm:
  cached export and choice), each timed from process start to exit in a subprocess: images/s with
  start-up included (target: >= 100 for the warm auto run);
- label agreement of each run with the fp32 reference (target for auto: >= 99.5%) and with torch's default;
- `cxr evaluate` on the same images (a split.csv of them), torch fp32 and auto, timed, and the
  agreement of their predictions.csv.

JSON on stdout (with the load average at start and end: timings on a busy machine are no result).

    .venv/bin/python bench/predict.py ../shared/data/cxr4-dev > predict.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from cxr.data.discover import discover
from cxr.malloc import MALLOC_TUNED_FLAG
from cxr.rundir import write_csv

TARGET_IMAGES_PER_S = 100.0
TARGET_AGREEMENT = 0.995


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path, help="data folder or CSV manifest (e.g. ../shared/data/cxr4-dev)")
    p.add_argument("--n", type=int, default=1000, help="images to predict")
    p.add_argument("--checkpoint", type=Path, help="a Lite0 checkpoint (default: train one here)")
    p.add_argument("--train-images", type=int, default=400, help="images the checkpoint is trained on")
    p.add_argument("--epochs", type=int, default=3, help="epochs of that training (head on cached features)")
    p.add_argument("--weights", default="lite0-imagenet", help="backbone weights of that training")
    p.add_argument("--image-size", type=int, default=224, help="input size the checkpoint is trained for")
    p.add_argument("--batch", type=int, default=64, help="--batch-size of predict and evaluate")
    p.add_argument("--engine", default="auto", help="the engine compared with torch")
    p.add_argument("--no-evaluate", action="store_true", help="skip the cxr evaluate runs")
    p.add_argument("--out", type=Path, help="working folder (default: a new temporary one)")
    p.add_argument("--no-malloc-tune", action="store_true",
                   help="the cxr commands do not re-execute themselves (no malloc tunables, no wait policy)")
    return p.parse_args(argv)


CHILD_ENV: dict[str, str] = {}  # added to every cxr command's environment


def cxr(args: list[str], cache: Path) -> float:
    """Run `python -m cxr ARGS` (its own re-exec included) and return the wall seconds; fail loudly."""
    env = dict(os.environ, CXR_CACHE_DIR=str(cache), PYTHONUNBUFFERED="1", **CHILD_ENV)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "cxr", *args], env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"cxr {' '.join(args)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    sys.stderr.write(out.stderr[-2000:])
    return seconds


def choose(data: Path, n: int, train: int) -> tuple[Path, list[Any], list[Any]]:
    """(image root, the images to predict, the training images): evenly spaced, disjoint."""
    found = discover(data)
    samples = sorted(found.samples, key=lambda s: s.path)
    picked = set(np.linspace(0, len(samples) - 1, min(n, len(samples))).round().astype(int).tolist())
    rest = [s for i, s in enumerate(samples) if i not in picked]
    training = [rest[i] for i in np.linspace(0, len(rest) - 1, min(train, len(rest))).round().astype(int)]
    return Path(found.root).resolve(), [samples[i] for i in sorted(picked)], training  # the manifest is elsewhere


def train_checkpoint(root: Path, samples: list[Any], args: argparse.Namespace, work: Path) -> Path:
    manifest = work / "train.csv"
    write_csv(manifest, ["path", "label", "group"], [[str(root / s.path), s.label, s.group or s.path] for s in samples])
    run = work / "run"
    cxr(["train", "--data", str(manifest), "--backbone", "efficientnet_lite0", "--weights", args.weights,
         "--epochs", str(args.epochs), "--set", "train.feature_views=1",
         "--set", f"data.image_size={args.image_size}", "--out", str(run), "--force"], work / "cache")
    return run / "checkpoints" / "best.pt"


def labels_of(path: Path, column: str) -> list[str]:
    with path.open(newline="") as fh:
        return [row[column] for row in csv.DictReader(fh)]


def agreement(a: list[str], b: list[str]) -> float:
    return round(float(np.mean([x == y for x, y in zip(a, b, strict=True)])), 4)


def predict_runs(ckpt: Path, images: Path, n: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Timed `cxr predict` runs; labels compared with PyTorch fp32 (the reference) and PyTorch's default."""
    runs: dict[str, Any] = {}
    engine_cache = work / "engine-cache"
    plan = (("torch_fp32", ["--engine", "torch", "--precision", "fp32"]), ("torch", ["--engine", "torch"]),
            (f"{args.engine}_cold", ["--engine", args.engine]), (f"{args.engine}_warm", ["--engine", args.engine]))
    for name, options in plan:
        out = work / f"predict-{name}.csv"
        seconds = cxr(["predict", str(ckpt), str(images), *options, "--batch-size", str(args.batch), "--out", str(out)],
                      engine_cache if name.startswith(args.engine) else work / "torch-cache")
        runs[name] = {"seconds": round(seconds, 2), "images_per_s_with_startup": round(n / seconds, 1)}
    labels = {name: labels_of(work / f"predict-{name}.csv", "predicted_label") for name in runs}
    for name in runs:
        runs[name]["label_agreement_with_torch_fp32"] = agreement(labels[name], labels["torch_fp32"])
        runs[name]["label_agreement_with_torch_default"] = agreement(labels[name], labels["torch"])
    return runs


def evaluate_runs(ckpt: Path, root: Path, samples: list[Any], args: argparse.Namespace, work: Path) -> dict[str, Any]:
    split = work / "evaluate-split.csv"
    write_csv(split, ["path", "label", "split", "group"], [[s.path, s.label, "test", s.group or s.path] for s in samples])
    runs: dict[str, Any] = {}
    for engine in ("torch", args.engine):
        out = work / f"evaluate-{engine}"
        reference = ["--precision", "fp32"] if engine == "torch" else []  # PyTorch fp32: the reference
        seconds = cxr(["evaluate", "--checkpoint", str(ckpt), "--data", str(root), "--split-csv", str(split),
                       "--engine", engine, *reference, "--batch-size", str(args.batch), "--out", str(out)],
                      work / "engine-cache")
        metrics = json.loads((out / "metrics.json").read_text())
        runs[engine] = {"seconds": round(seconds, 2), "images_per_s_with_startup": round(len(samples) / seconds, 1),
                        "engine": metrics.get("engine"), "accuracy": metrics["test"]["accuracy"],
                        "macro_f1": metrics["test"]["macro_f1"]}
    preds = {e: labels_of(work / f"evaluate-{e}" / "predictions.csv", "predicted_label") for e in runs}
    runs["pred_agreement"] = agreement(preds[args.engine], preds["torch"])
    return runs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.no_malloc_tune:
        CHILD_ENV[MALLOC_TUNED_FLAG] = "1"
    result: dict[str, Any] = {"n": args.n, "batch": args.batch, "engine": args.engine,
                              "loadavg_start": [round(v, 2) for v in os.getloadavg()]}
    work = args.out or Path(tempfile.mkdtemp(prefix="cxr-bench-predict-"))
    work.mkdir(parents=True, exist_ok=True)
    root, samples, training = choose(args.data, args.n, args.train_images)
    ckpt = args.checkpoint or train_checkpoint(root, training, args, work)
    images = work / "images"
    images.mkdir(exist_ok=True)
    for i, sample in enumerate(samples):
        link = images / f"{i:05d}_{Path(sample.path).name}"
        if not link.exists():
            link.symlink_to((root / sample.path).resolve())
    result.update(checkpoint=str(ckpt), images=len(samples), predict=predict_runs(ckpt, images, len(samples), args, work))
    warm = result["predict"][f"{args.engine}_warm"]
    result["targets"] = {
        f"warm {args.engine} >= {TARGET_IMAGES_PER_S:g} images/s with start-up":
            warm["images_per_s_with_startup"] >= TARGET_IMAGES_PER_S,
        f"label agreement with torch fp32 >= {TARGET_AGREEMENT:.1%}":
            warm["label_agreement_with_torch_fp32"] >= TARGET_AGREEMENT,
    }
    if not args.no_evaluate:
        result["evaluate"] = evaluate_runs(ckpt, root, samples, args, work)
        result["targets"][f"evaluate agreement >= {TARGET_AGREEMENT:.1%}"] = (
            result["evaluate"]["pred_agreement"] >= TARGET_AGREEMENT)
    result["work"] = str(work)
    result["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
