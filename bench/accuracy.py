"""Accuracy benchmark: the seed recipe (frozen base, head only) against the fine-tune recipe.

Both are complete `cxr.study.run_study` runs (audit, split, training, test evaluation with
bootstrap CIs, report) with the EfficientNet-Lite0 backbone and its ImageNet weights (`lite0-imagenet`)
on the same data and the same split:

- frozen: the seed recipe (configs/seed.yaml: Adam 1e-4, batch 32, 20 epochs, seed augmentation, base
  frozen), the head trained on the feature cache;
- finetune: configs/finetune.yaml: the head first (on the feature cache), then the last backbone stages
  unfrozen and fine-tuned on images (AdamW, discriminative learning rates, cosine schedule with warmup,
  label smoothing).

The JSON on stdout gives, per recipe, test accuracy and macro-F1 with their 95% bootstrap CIs,
per-class recall, loss and wall time, and whether the two macro-F1 (and accuracy) CIs overlap
(and that both runs used the same split). With --tta each recipe's best.pt is also scored with
test-time augmentation. A Markdown table for the README goes to stderr at the end.

    .venv/bin/python bench/accuracy.py ../shared/data/cxr4-dev --tta --out /tmp/accuracy > accuracy.json
    .venv/bin/python bench/accuracy.py DATA --subset 600 --epochs-head 5 --epochs-finetune 1   # a quick look

The script re-executes itself once with the glibc malloc tunables that the `cxr` command sets.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import _common  # bench/ is on sys.path when a script runs
from cxr.config import RunConfig, load_config
from cxr.study import evaluate_checkpoint, run_study

REPO = Path(__file__).resolve().parents[1]
SEED_CONFIG = REPO / "configs" / "seed.yaml"
FINETUNE_CONFIG = REPO / "configs" / "finetune.yaml"
RECIPES = ("frozen", "finetune")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="data folder or CSV manifest")
    parser.add_argument("--epochs-head", type=int, metavar="N",
                        help="head epochs of both recipes (default: 20 for the seed recipe, train.epochs of the "
                             "fine-tune config for its head phase)")
    parser.add_argument("--epochs-finetune", type=int, metavar="N",
                        help="fine-tuning epochs (default: train.finetune_epochs of the fine-tune config)")
    parser.add_argument("--subset", type=int, default=0, metavar="N",
                        help="use about N images, the same fraction of every class (0: all)")
    parser.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES), help="which recipes to run")
    parser.add_argument("--backbone", default="efficientnet_lite0", help="backbone of both recipes")
    parser.add_argument("--weights", default="lite0-imagenet", help="weights of both recipes")
    parser.add_argument("--finetune-config", type=Path, default=FINETUNE_CONFIG, help="the fine-tune recipe")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for the fine-tune recipe (repeatable), e.g. data.image_size=160")
    parser.add_argument("--seed", type=int, default=123, help="seed of the split and of training (both recipes)")
    parser.add_argument("--tta", action="store_true",
                        help="also score each recipe's best.pt with test-time augmentation (flip + 4 shifts)")
    parser.add_argument("--out", type=Path, help="folder for the run directories and the feature cache (default: temp)")
    parser.add_argument("--no-malloc-tune", action="store_true", help="do not re-execute with GLIBC_TUNABLES set")
    return parser.parse_args(argv)


def _parse_set(items: list[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def recipe_config(args: argparse.Namespace, recipe: str) -> RunConfig:
    """The resolved config of one recipe (the backbone, weights and seed of the benchmark applied)."""
    common = {"model.backbone": args.backbone, "model.weights": args.weights, "train.seed": args.seed,
              "data.split_seed": args.seed, "name": recipe}
    if recipe == "frozen":
        common.update({"train.epochs": args.epochs_head})
        return load_config(SEED_CONFIG, common)
    common.update({"train.epochs": args.epochs_head, "train.finetune_epochs": args.epochs_finetune})
    common.update(_parse_set(args.overrides))
    return load_config(args.finetune_config, common)


def summarize(run_dir: Path, wall: float, cfg: RunConfig, load: tuple[float, ...]) -> dict[str, Any]:
    """Test figures, per-class recall, phases and timing of a finished run directory."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    test = metrics["test"]
    with open(run_dir / "history.csv", newline="") as fh:
        history = list(csv.DictReader(fh))
    phase_seconds: dict[str, float] = {}
    for row in history:
        key = f"phase{row.get('phase') or 1}"
        phase_seconds[key] = phase_seconds.get(key, 0.0) + float(row["seconds"])
    return {
        "test": {
            "n": test["n"],
            "accuracy": round(test["accuracy"], 4),
            "accuracy_ci": [round(v, 4) for v in test["ci"]["accuracy"]],
            "macro_f1": round(test["macro_f1"], 4),
            "macro_f1_ci": [round(v, 4) for v in test["ci"]["macro_f1"]],
            "loss": round(test["loss"], 4),
            "per_class_recall": {name: round(v["recall"], 4) for name, v in test["per_class"].items()},
        },
        "wall_seconds": round(wall, 1),
        "train_seconds": round(metrics.get("train_seconds", float("nan")), 1),
        "epoch_seconds_by_phase": {k: round(v, 1) for k, v in phase_seconds.items()},
        "epochs_run": len(history),
        "best_epoch": metrics.get("best_epoch"),
        "recipe": {
            "image_size": cfg.data.image_size, "freeze": cfg.model.freeze, "epochs": cfg.train.epochs,
            "optimizer": cfg.train.optimizer, "lr": cfg.train.lr, "schedule": cfg.train.schedule,
            "label_smoothing": cfg.train.label_smoothing, "class_weights": cfg.train.class_weights,
            "feature_cache": metrics.get("feature_cache"), "feature_views": cfg.train.feature_views,
            "finetune_epochs": cfg.train.finetune_epochs, "finetune_freeze": cfg.train.finetune_freeze,
            "finetune_lr": cfg.train.finetune_lr, "backbone_lr_ratio": cfg.train.backbone_lr_ratio,
            "tta": cfg.eval.tta,
        },
        "device": metrics.get("device"),
        "split_counts": {s: sum(c.values()) for s, c in metrics["split_counts"].items()},
        "loadavg_start": [round(v, 2) for v in load],
        "loadavg_end": [round(v, 2) for v in os.getloadavg()],
        "run_dir": str(run_dir),
    }


def tta_summary(run_dir: Path, data: Path) -> dict[str, Any]:
    """Test figures of the run's best.pt with test-time augmentation, on the run's own test split."""
    start = time.perf_counter()
    test = evaluate_checkpoint(run_dir / "checkpoints" / "best.pt", data, "test", tta=True,
                               out_dir=run_dir / "tta", progress=True)
    return {
        "n": test["n"],
        "accuracy": round(test["accuracy"], 4),
        "accuracy_ci": [round(v, 4) for v in test["ci"]["accuracy"]],
        "macro_f1": round(test["macro_f1"], 4),
        "macro_f1_ci": [round(v, 4) for v in test["ci"]["macro_f1"]],
        "per_class_recall": {name: round(v["recall"], 4) for name, v in test["per_class"].items()},
        "seconds": round(time.perf_counter() - start, 1),
    }


def overlap(a: list[float], b: list[float]) -> bool:
    """True when the intervals [a0, a1] and [b0, b1] share a point."""
    return a[0] <= b[1] and b[0] <= a[1]


def compare(frozen: dict[str, Any], finetune: dict[str, Any]) -> dict[str, Any]:
    f, t = frozen["test"], finetune["test"]
    f1_overlap = overlap(f["macro_f1_ci"], t["macro_f1_ci"])
    return {
        "macro_f1_gain": round(t["macro_f1"] - f["macro_f1"], 4),
        "accuracy_gain": round(t["accuracy"] - f["accuracy"], 4),
        "macro_f1_cis_overlap": f1_overlap,
        "accuracy_cis_overlap": overlap(f["accuracy_ci"], t["accuracy_ci"]),
        "finetune_better_beyond_ci": t["macro_f1"] > f["macro_f1"] and not f1_overlap,
    }


def markdown_table(result: dict[str, Any]) -> str:
    """The README table: one row per recipe."""
    classes = next(iter(result["recipes"].values()))["test"]["per_class_recall"]
    head = ["recipe", "test accuracy [95% CI]", "macro-F1 [95% CI]",
            *(f"recall {c}" for c in classes), "wall time"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in result["recipes"].items():
        entries = [(name, row["test"], row["wall_seconds"])]
        if "test_tta" in row:
            entries.append((f"{name} + TTA", row["test_tta"], row["wall_seconds"] + row["test_tta"]["seconds"]))
        for label, t, seconds in entries:
            cells = [
                label,
                f"{t['accuracy']:.3f} [{t['accuracy_ci'][0]:.3f}, {t['accuracy_ci'][1]:.3f}]",
                f"{t['macro_f1']:.3f} [{t['macro_f1_ci'][0]:.3f}, {t['macro_f1_ci'][1]:.3f}]",
                *(f"{v:.3f}" for v in t["per_class_recall"].values()),
                f"{seconds / 60:.1f} min",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    out, data = _common.start(__file__, argv, args, "cxr-accuracy-", subset_seed=args.seed)
    result: dict[str, Any] = {
        "data": str(args.data), "subset": args.subset or None, "backbone": args.backbone, "weights": args.weights,
        "seed": args.seed, "cores": os.cpu_count(), "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
        "out": str(out), "recipes": {},
    }
    for recipe in args.recipes:
        cfg = recipe_config(args, recipe)
        run_dir = out / recipe
        load = os.getloadavg()
        start = time.perf_counter()
        run_study(cfg, data, run_dir, cache_dir=out / "feature-cache", progress=True)
        row = summarize(run_dir, time.perf_counter() - start, cfg, load)
        if args.tta:
            row["test_tta"] = tta_summary(run_dir, data)
        result["recipes"][recipe] = row
        print(json.dumps({recipe: row}), file=sys.stderr)
    if all(r in result["recipes"] for r in RECIPES):
        result["comparison"] = compare(result["recipes"]["frozen"], result["recipes"]["finetune"])
        splits = [(out / r / "split.csv").read_bytes() for r in RECIPES]
        result["comparison"]["same_split"] = splits[0] == splits[1]
    print(json.dumps(result, indent=2))
    print(markdown_table(result), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
