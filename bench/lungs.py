"""Lung segmenter benchmark (JSON on stdout): across hospitals, a random hold-out, speed, QC.

    python bench/lungs.py ../shared/data/lungseg --models DIR [--engine auto] [--threads 2]

- `cross_site`: a model trained on Shenzhen only (CHNCXR) scored on Montgomery (MCUCXR), and the
  reverse (targets: Dice >= 0.95 Shenzhen -> Montgomery);
- `random_holdout`: trained on a random 80% (seed 0), scored on the other 20% (target Dice >= 0.96);
- `speed`: 256 px X-rays through `LungSegmenter.segment` (resize, engine, mask back at 256 px, QC)
  with start-up (load, export, compile) timed apart (target >= 150 images/s on 2 cores);
- `qc`: the share of non-X-ray pictures (scikit-image's sample photos) flagged `suspect` (target
  >= 95%) and of the held-out X-rays (target < 2%).

Models are reused from `--models DIR/{random,shenzhen,montgomery}/model.safetensors` when present,
else trained there (`--epochs`, `--site-epochs`); `--default` scores the packaged model on the
random hold-out instead of DIR/random (it was trained on that split). Timings depend on the machine's
load: the JSON records the load average at start and end.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from cxr.lungs.evaluate import evaluate
from cxr.lungs.model import LungModelSpec, TrainSettings
from cxr.lungs.pairs import find_pairs, split_pairs
from cxr.lungs.segmenter import LungSegmenter, resize_gray
from cxr.lungs.store import default_model_path, save_model
from cxr.lungs.train import fit
from cxr.malloc import reexec_with_malloc_tunables

RUNS = {"random": {}, "shenzhen": {"holdout_site": "MCUCXR"}, "montgomery": {"holdout_site": "CHNCXR"}}


def non_xray_pictures() -> dict[str, np.ndarray]:
    """scikit-image's sample pictures that load offline, as uint8 grayscale."""
    import skimage.data as d
    from PIL import Image

    out = {}
    for name in d.__all__:
        try:
            data = getattr(d, name)()
        except KeyboardInterrupt:
            raise
        except BaseException:  # noqa: BLE001 - needs a download or a package (under pytest: its Skipped)
            continue
        if isinstance(data, tuple):
            data = data[0]
        if not hasattr(data, "ndim") or data.ndim < 2:
            continue
        a = np.asarray(data)
        if a.ndim == 3 and a.shape[2] not in (3, 4):
            a = a[0]  # a stack (lfw_subset): its first picture
        if a.dtype != np.uint8:
            a = a.astype(np.float64)
            a = ((a - a.min()) / max(a.max() - a.min(), 1e-9) * 255).astype(np.uint8)
        if a.ndim == 3:
            a = np.asarray(Image.fromarray(a[..., :3]).convert("L"))
        out[name] = a
    return out


def model_for(name: str, args: argparse.Namespace, pairs: list) -> Path:
    path = args.models / name / "model.safetensors"
    if path.is_file():
        return path
    train, _ = split_pairs(pairs, seed=0, **RUNS[name])
    epochs = args.epochs if name == "random" else args.site_epochs * (2 if name == "montgomery" else 1)
    model, history = fit(train, LungModelSpec(size=args.size), TrainSettings(epochs=epochs, batch_size=8))
    return save_model(model, LungModelSpec(size=args.size), path, info={"history": history, "split": RUNS[name]})


def scores(path: Path, test: list, args: argparse.Namespace) -> dict:
    seg = LungSegmenter.from_file(path, engine=args.engine, threads=args.threads)
    evaluation, _ = evaluate(seg, test, progress=False)
    return {"model": str(path), **evaluation.summary}


def speed(path: Path, images: list[np.ndarray], args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    seg = LungSegmenter.from_file(path, engine=args.engine, threads=args.threads, batch_size=args.batch).prepare()
    startup = time.perf_counter() - start
    seg.segment(images[: args.batch])  # warm-up
    start = time.perf_counter()
    seg.segment(images)
    elapsed = time.perf_counter() - start
    x = np.stack([resize_gray(im, seg.size) for im in images[: args.batch]])[:, None].astype(np.float32) / 127.5 - 1
    start, runs = time.perf_counter(), 0
    while time.perf_counter() - start < 3:
        seg._engine.run(x)
        runs += 1
    engine_rate = runs * len(x) / (time.perf_counter() - start)  # the engine alone, on model-size input
    return {"engine": seg.describe(), "threads": seg._engine.threads, "image_px": int(images[0].shape[0]),
            "model_px": seg.size, "images": len(images), "startup_s": round(startup, 2),
            "images_per_s": round(len(images) / elapsed, 1), "engine_only_images_per_s": round(engine_rate, 1)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path, help="lungseg folder (images/, masks/)")
    p.add_argument("--models", type=Path, required=True, help="folder of saved models (reused, or trained there)")
    p.add_argument("--default", action="store_true", help="score the packaged model on the random hold-out")
    p.add_argument("--epochs", type=int, default=8, help="epochs of the random-split model, when trained")
    p.add_argument("--site-epochs", type=int, default=4, help="epochs of the Shenzhen-only model (Montgomery: 2x)")
    p.add_argument("--size", type=int, default=LungModelSpec().size, help="model input size, when trained")
    p.add_argument("--engine", default="auto", help="lung engine: auto | torch | onnxruntime | openvino")
    p.add_argument("--threads", type=int, default=2, help="engine threads")
    p.add_argument("--batch", type=int, default=32, help="images per engine call")
    p.add_argument("--speed-images", type=int, default=512, help="256 px images timed")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: cross_site,random,speed,qc")
    p.add_argument("--no-malloc-tune", action="store_true", help="do not re-execute with cxr's malloc tunables")
    args = p.parse_args(argv)
    if not args.no_malloc_tune and argv is None:
        reexec_with_malloc_tunables([sys.executable, os.path.abspath(__file__), *sys.argv[1:]])
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    skip = set(filter(None, args.skip.split(",")))
    result: dict = {"load_start": os.getloadavg(), "cpus": os.cpu_count()}
    pairs = find_pairs(args.data / "images", args.data / "masks")
    if "cross_site" not in skip:
        result["cross_site"] = {
            "shenzhen_to_montgomery": scores(model_for("shenzhen", args, pairs), split_pairs(pairs, holdout_site="MCUCXR")[1], args),
            "montgomery_to_shenzhen": scores(model_for("montgomery", args, pairs), split_pairs(pairs, holdout_site="CHNCXR")[1], args)}
    held = split_pairs(pairs, seed=0)[1]
    random_model = default_model_path() if args.default else model_for("random", args, pairs)
    if "random" not in skip:
        result["random_holdout"] = scores(random_model, held, args)
    if "speed" not in skip:
        from cxr.io import read_image
        base = [read_image(pr.image) for pr in held[:64]]
        images = [base[i % len(base)] for i in range(args.speed_images)]
        result["speed"] = speed(random_model, images, args)
    if "qc" not in skip:
        seg = LungSegmenter.from_file(random_model, engine=args.engine, threads=args.threads)
        pics = non_xray_pictures()
        flags = {n: r.qc for n, r in zip(pics, seg.segment(list(pics.values())), strict=True)}
        missed = {n: q.to_dict() for n, q in flags.items() if q.ok}
        xray = [r.qc for r in seg.segment_paths([pr.image for pr in held])]
        result["qc"] = {"non_xray": {"n": len(flags), "suspect": len(flags) - len(missed),
                                     "share": (len(flags) - len(missed)) / len(flags), "not_flagged": missed},
                        "heldout_xray": {"n": len(xray), "suspect": sum(not q.ok for q in xray),
                                         "share": sum(not q.ok for q in xray) / len(xray),
                                         "reasons": [q.reason for q in xray if not q.ok]}}
    result["load_end"] = os.getloadavg()
    print(json.dumps(result, indent=2, default=float))
    return result


if __name__ == "__main__":
    main()
