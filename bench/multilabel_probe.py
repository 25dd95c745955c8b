"""A multi-label study against a logistic-regression probe on the same frozen features and the same split.

For each split seed (--seeds), a complete `cxr.study.run_study` (the defaults: the multi-label recipe
of `cxr.study.multilabel_recipe`, unless --set says otherwise) on DATA, then the probe on the features
of that very run's feature cache: per finding, sklearn's `LogisticRegression(class_weight='balanced',
C)` on standardised training features (every cached view, as the head sees them), scored on the test
split's features. Both are judged by the test mean AUROC over the findings with a positive and a
negative in the test split (what metrics.json's `mean_auroc` is). With --seed-recipe the seed's
settings (`train.multilabel_recipe=false`) are run too, on the same split and features.

The JSON on stdout gives, per seed, cxr's test mean AUROC with its 95% bootstrap CI, the probe's at
each --C, cxr minus the probe at C = 1 (sklearn's default), the best epoch and wall time, and the load
average at the start and end (a number taken on a busy machine is a timing under load, not a result).

    .venv/bin/python bench/multilabel_probe.py ../shared/data/nih-dev/labels.csv --seeds 123 7 --seed-recipe \\
        --out /tmp/mlprobe > multilabel_probe.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

import _common  # bench/ is on sys.path when a script runs
from cxr.config import RunConfig, load_config
from cxr.study import run_study


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path, help="multi-label CSV manifest (NIH '|' labels or 0/1/-1 columns) or folder")
    p.add_argument("--seeds", type=int, nargs="+", default=[123], help="split (and training) seeds")
    p.add_argument("--backbone", default="efficientnet_lite0", help="backbone (frozen)")
    p.add_argument("--weights", default="lite0-imagenet", help="its weights")
    p.add_argument("--C", type=float, nargs="+", default=[1.0, 0.1, 0.01], help="the probe's inverse L2 strengths")
    p.add_argument("--seed-recipe", action="store_true", help="also run the seed's settings (no multi-label recipe)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides of cxr's run")
    p.add_argument("--out", type=Path, help="folder for the runs and caches (default: a new temp dir)")
    p.add_argument("--subset", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--no-malloc-tune", action="store_true", help="do not re-execute with the malloc tunables")
    return p.parse_args(argv)


def mean_auroc(y: np.ndarray, probs: np.ndarray) -> float:
    """Mean AUROC over the findings with both classes labelled (NaN = unlabelled), as metrics.json has it."""
    from cxr.metrics.multilabel import mean_auroc as cxr_mean_auroc

    return cxr_mean_auroc(np.nan_to_num(y), ~np.isnan(y), probs)


def probe(entry: Path, cs: list[float]) -> dict[str, float]:
    """Test mean AUROC of the class-balanced logistic-regression probe on a cache entry, at each C."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    train = np.load(entry / "train.npy").astype(np.float32)  # (views, images, channels)
    y_train = np.tile(np.load(entry / "train_labels.npy"), (train.shape[0], 1))
    x_train = train.reshape(-1, train.shape[-1])
    x_test, y_test = np.load(entry / "test.npy")[0].astype(np.float32), np.load(entry / "test_labels.npy")
    scaler = StandardScaler().fit(x_train)
    out = {}
    for c in cs:
        probs = np.zeros(y_test.shape, dtype=np.float64)
        for k in range(y_train.shape[1]):
            labelled = ~np.isnan(y_train[:, k])
            target = y_train[labelled, k]
            if target.min() == target.max():  # one class only in training: a constant score
                probs[:, k] = target[0] if target.size else 0.5
                continue
            model = LogisticRegression(class_weight="balanced", C=c, max_iter=5000)
            model.fit(scaler.transform(x_train[labelled]), target)
            probs[:, k] = model.predict_proba(scaler.transform(x_test))[:, 1]
        out[f"C={c:g}"] = round(mean_auroc(y_test, probs), 4)
    return out


def overrides_of(items: list[str]) -> dict[str, Any]:
    """--set KEY=VALUE items as dotted-key overrides (values read as YAML, as `cxr run --set` does)."""
    pairs = [item.partition("=") for item in items]
    return {key.strip(): yaml.safe_load(value) for key, _, value in pairs}


def one_run(data: Path, cfg: RunConfig, run_dir: Path, cache: Path) -> tuple[dict[str, Any], Path]:
    """cxr's study: its test mean AUROC (CI), best epoch, wall time; and its feature-cache entry."""
    started = time.perf_counter()
    result = run_study(cfg, data, run_dir, cache_dir=cache, progress=False)
    test = result.metrics["test"]
    best = max(result.history, key=lambda r: r.get("val_mean_auroc", -1.0))
    entries = sorted(p for p in cache.iterdir() if (p / "manifest.json").is_file())
    ran = load_config(run_dir / "config.yaml").model  # with the multi-label recipe applied
    return {"mean_auroc": round(test["mean_auroc"], 4), "mean_auroc_ci": [round(v, 4) for v in test["mean_auroc_ci"]],
            "best_epoch": int(best["epoch"]), "head": list(ran.head), "head_init": ran.head_init,
            "seconds": round(time.perf_counter() - started, 1)}, entries[-1]


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    out, data = _common.start(__file__, argv, args, "cxr-mlprobe-", 0)
    report: dict[str, Any] = {"data": str(args.data), "loadavg_start": os.getloadavg(), "seeds": {}}
    for seed in args.seeds:
        overrides = {"name": f"probe-{seed}", "data.split_seed": seed, "train.seed": seed,
                     "model.backbone": args.backbone, "model.weights": args.weights, **overrides_of(args.set)}
        cfg = load_config(None, overrides)
        folder = out / f"seed{seed}"
        cxr, entry = one_run(data, cfg, folder / "run", folder / "cache")
        row: dict[str, Any] = {"cxr": cxr, "probe": probe(entry, args.C)}
        row["cxr_minus_probe_C1"] = round(cxr["mean_auroc"] - row["probe"]["C=1"], 4)
        if args.seed_recipe:
            seed_cfg = load_config(None, {**overrides, "train.multilabel_recipe": False})
            row["seed_recipe"], _ = one_run(data, seed_cfg, folder / "seed-recipe", folder / "cache")
        report["seeds"][str(seed)] = row
        print(json.dumps({str(seed): row}), file=sys.stderr)
    report["loadavg_end"] = os.getloadavg()
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
