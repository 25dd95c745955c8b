"""Out-of-distribution inputs: how well a checkpoint's checks tell chest X-rays from other pictures.

Builds the battery of `bench/ood_battery.py` (scikit-image and scikit-learn sample pictures and their
grey versions, Pillow-drawn text and shapes, noise, constant images; the internal test X-rays
inverted, rotated by 90 degrees and heavily cropped), runs every image and the internal test split
through `Predictor.predict` (the path `cxr predict` takes), and prints JSON:

- `auroc`: per group (non-radiographs, transformed X-rays) against the internal test X-rays, for the
  stored feature detector alone (`detector`) and for the full verdict (`combined`: an image check
  that fails counts as the highest score);
- `tpr`: the share of each group (and each kind within it) answered `in_distribution: false`;
- `test_flagged`: the share of internal test X-rays flagged (target <= 5%);
- `compare` (with --compare): the candidate detectors (Mahalanobis with several ranks, kNN, energy)
  fitted on --train-images training images and thresholded on validation, their AUROC and flag rates;
- `overhead` (with --overhead N): `cxr predict`'s loop over N images with and without the checks,
  timed in the same process, alternating, best of --repeats; the ratio is what counts.

    .venv/bin/python bench/ood.py --checkpoint RUN/checkpoints/best.pt --data ../shared/data/cxr4-dev.csv
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

import ood_battery  # bench/ is on sys.path when a script runs
from cxr.data.discover import discover
from cxr.ood.detector import fit_detector
from cxr.ood.guard import OodGuard
from cxr.ood.image_checks import colour_reason, gray_reasons
from cxr.predict import Predictor
from cxr.rundir import RunDir, read_split_csv


def collect(predictor: Predictor, paths: list[Path], batch: int = 32) -> dict[str, Any]:
    """Predictions, pooled features and logits of `paths` (one backbone pass per batch)."""
    preds, feats, logits = [], [], []
    for start in range(0, len(paths), batch):
        chunk = paths[start : start + batch]
        preds.extend(predictor.predict(chunk, batch_size=batch))
        feats.append(predictor.ood.features)
        logits.append(predictor.ood.logits)
    images_flag = np.array([any(not r.startswith("unlike") for r in (p.reason or "").split("; ") if r)
                            and not p.in_distribution for p in preds])
    return {"preds": preds, "features": np.concatenate(feats), "logits": np.concatenate(logits),
            "image_flag": images_flag, "flag": np.array([p.in_distribution is False for p in preds]),
            "names": [Path(p).stem for p in paths]}


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    y = np.r_[np.zeros(len(inside)), np.ones(len(outside))]
    return round(float(roc_auc_score(y, np.r_[inside, outside])), 4)


def kind_of(name: str) -> str:
    group, _, rest = name.partition("-")
    head = rest.split("-")[0]
    return head + ("-grey" if rest.endswith("grey") or "grey-crop" in rest else "")


def evaluate_groups(test: dict[str, Any], groups: dict[str, dict[str, Any]], scores: Any) -> dict[str, Any]:
    """AUROC (detector alone and combined), TPR per group and kind, for score function `scores`."""
    out: dict[str, Any] = {}
    big = 1e12
    t_det = scores(test)
    t_comb = np.where(test["image_flag"], big, t_det)
    for group, res in groups.items():
        det = scores(res)
        comb = np.where(res["image_flag"], big, det)
        kinds: dict[str, list[bool]] = defaultdict(list)
        for name, flag in zip(res["names"], res["flag"], strict=True):
            kinds[kind_of(name)].append(bool(flag))
        out[group] = {"n": len(det), "auroc_detector": auroc(t_det, det), "auroc_combined": auroc(t_comb, comb),
                      "tpr": round(float(res["flag"].mean()), 4),
                      "tpr_image_checks": round(float(res["image_flag"].mean()), 4),
                      "tpr_by_kind": {k: round(float(np.mean(v)), 3) for k, v in sorted(kinds.items())},
                      "missed": [n for n, f in zip(res["names"], res["flag"], strict=True) if not f][:40]}
    return out


def compare(predictor: Predictor, root: Path, rows: list[Any], test: dict[str, Any], groups: dict[str, Any],
            train_images: int, seed: int) -> dict[str, Any]:
    """Candidate detectors fitted on a training subsample, thresholded on validation."""
    rng = np.random.default_rng(seed)
    train = [r for r in rows if r.split == "train"]
    train = [train[i] for i in np.sort(rng.permutation(len(train))[:train_images])]
    fit = collect(predictor, [root / r.path for r in train])
    val = collect(predictor, [root / r.path for r in rows if r.split == "val"])
    out = {}
    for label, method, k in (("mahalanobis-16", "mahalanobis", 16), ("mahalanobis-64", "mahalanobis", 64),
                             ("mahalanobis-256", "mahalanobis", 256), ("knn", "knn", 0), ("energy", "energy", 0)):
        det = fit_detector(fit["features"], fit["logits"], method, components=k or 64, seed=seed)
        det.calibrate(val["features"], val["logits"])

        def scores(res: dict[str, Any], det: Any = det) -> np.ndarray:
            return det.score(res["features"], res["logits"])

        entry = {"test_flagged": round(float((scores(test) > det.threshold).mean()), 4)}
        for group, res in groups.items():
            entry[group] = {"auroc": auroc(scores(test), scores(res)),
                            "tpr_detector": round(float((scores(res) > det.threshold).mean()), 4)}
        out[label] = entry
    return out


def overhead(predictor: Predictor, paths: list[Path], repeats: int, batch: int = 32) -> dict[str, Any]:
    """`cxr predict`'s loop (decode, preprocess, forward, predictions) with the checks and without."""
    from cxr.io import read_image

    stored = predictor.ood

    def loop(checked: bool, images: list[Path] = paths) -> float:
        predictor.ood = stored if checked else OodGuard(None)
        start = time.perf_counter()
        for i in range(0, len(images), batch):
            chunk = images[i : i + batch]
            grays = [read_image(p) for p in chunk]
            x = torch.stack([predictor.preprocess(g) for g in grays])
            probs = predictor.predict_tensor(x)
            preds = [predictor.to_prediction(p) for p in probs]
            if checked:
                reasons = [[*filter(None, [colour_reason(p)]), *gray_reasons(g)] for p, g in zip(chunk, grays, strict=True)]
                predictor.ood.judge(preds, reasons)
        return time.perf_counter() - start

    loop(True, paths[: 2 * batch])  # warm-up
    with_checks, without = [], []
    for _ in range(repeats):
        without.append(loop(False))
        with_checks.append(loop(True))
    predictor.ood = stored
    return {"images": len(paths), "seconds_without": round(min(without), 3), "seconds_with": round(min(with_checks), 3),
            "ratio": round(min(with_checks) / min(without), 4), "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="best.pt of a run (its split.csv beside it)")
    p.add_argument("--data", type=Path, required=True, help="the data the run was trained on (folder or CSV)")
    p.add_argument("--transformed", type=int, default=100, help="test X-rays to invert, rotate and crop")
    p.add_argument("--compare", action="store_true", help="also fit and compare the candidate detectors")
    p.add_argument("--train-images", type=int, default=1000, help="training images for --compare")
    p.add_argument("--overhead", type=int, default=0, metavar="N", help="time the checks on N images")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--battery", type=Path, help="write the battery here (default: a temporary folder)")
    p.add_argument("--overhead-only", action="store_true", help="only the --overhead timing (no battery)")
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "0")) or torch.get_num_threads())
    load_at_start = os.getloadavg()
    predictor = Predictor.from_checkpoint(args.checkpoint, engine="torch")
    root = Path(discover(args.data).root)
    rows = read_split_csv(RunDir.of_checkpoint(args.checkpoint).split)
    if args.overhead_only:
        every = [root / r.path for r in rows]
        timing = overhead(predictor, [every[i % len(every)] for i in range(args.overhead or 1000)], args.repeats)
        print(json.dumps({"checkpoint": str(args.checkpoint), "overhead": timing, "load_average": os.getloadavg()},
                         indent=2))
        return 0
    test_paths = [root / r.path for r in rows if r.split == "test"]
    rng = np.random.default_rng(args.seed)
    picked = [test_paths[i] for i in np.sort(rng.permutation(len(test_paths))[: args.transformed])]
    files = ood_battery.write_battery(args.battery or Path(tempfile.mkdtemp(prefix="cxr-ood-")), picked, args.seed)
    test = collect(predictor, test_paths)
    groups = {g: collect(predictor, paths) for g, paths in files.items()}
    det = predictor.ood.detector
    result: dict[str, Any] = {
        "checkpoint": str(args.checkpoint), "detector": det.describe() if det is not None else None,
        "test_images": len(test_paths), "test_flagged": round(float(test["flag"].mean()), 4),
        "test_flagged_image_checks": round(float(test["image_flag"].mean()), 4),
        "groups": evaluate_groups(test, groups, lambda res: np.array([q.ood_score for q in res["preds"]], dtype=float)),
        "load_average": load_at_start,
    }
    if args.compare:
        result["compare"] = compare(predictor, root, rows, test, groups, args.train_images, args.seed)
    if args.overhead:
        every = [root / r.path for r in rows]
        result["overhead"] = overhead(predictor, [every[i % len(every)] for i in range(args.overhead)], args.repeats)
    result["load_average_end"] = os.getloadavg()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
