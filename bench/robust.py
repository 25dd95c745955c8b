"""Does a recipe hold up at other hospitals? The seed, fine-tune and robust recipes on one split, each
scored on the internal test and on the lungseg hospitals (Montgomery, Shenzhen; never trained on).

Each recipe is a complete `cxr.study.run_study` run with EfficientNet-Lite0 (ImageNet) on the same
data and split (configs/seed.yaml with Lite0, configs/finetune.yaml, configs/robust.yaml), with the
lungseg sets as external sets (manifests from `bench/lungseg_manifest.py`, label map
`bench/lungseg_labels.yaml`: TB is abnormal, none of the model's classes). One JSON table on stdout,
per recipe:
- internal test: macro-F1 (bootstrap CI) and Normal recall (Wilson);
- per foreign set: normal X-rays called Normal (Wilson) and what the others were called, TB against
  normal, AUROC of 1 - p(Normal) (bootstrap CI), TB called abnormal (Wilson), and the Grad-CAM
  energy share inside the lungs of the normal X-rays (the hand-drawn masks of lungseg; the interval
  is that of the share minus the lung area, `cxr.metrics.attention`) with the shortcut audit's verdict;
- the Grad-CAM share on the internal test too when its images have lung masks (automatic lungs:
  `--set data.lungs=auto` where this cxr has it).

    python bench/robust.py ../shared/data/cxr4-dev ../shared/data/lungseg --out /tmp/robust > robust.json
    python bench/robust.py DATA LUNGSEG --subset 600 --epochs-head 3 --epochs-finetune 1 --recipes seed robust

The script re-executes itself once with the glibc malloc tunables that the `cxr` command sets.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import _common  # bench/ is on sys.path when a script runs
from accuracy import _parse_set
from cxr.config import RunConfig, load_config
from cxr.study import run_study
from lungseg_manifest import LABEL_MAP, write_manifests

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"seed": REPO / "configs" / "seed.yaml", "finetune": REPO / "configs" / "finetune.yaml",
           "robust": REPO / "configs" / "robust.yaml"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="training data (cxr4-dev folder or manifest)")
    parser.add_argument("lungseg", type=Path, help="the lungseg folder (images/, masks/)")
    parser.add_argument("--recipes", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--epochs-head", type=int, metavar="N", help="head epochs (default: each config's)")
    parser.add_argument("--epochs-finetune", type=int, metavar="N", help="fine-tuning epochs (default: each config's)")
    parser.add_argument("--subset", type=int, default=0, metavar="N", help="about N training images (0: all)")
    parser.add_argument("--image-size", type=int, metavar="PX", help="data.image_size of every recipe")
    parser.add_argument("--audit-images", type=int, default=200, help="eval.shortcut_max_images per set")
    parser.add_argument("--bootstrap", type=int, default=1000, help="eval.bootstrap")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every recipe (repeatable), e.g. data.lungs=auto")
    parser.add_argument("--seed", type=int, default=123, help="seed of the split and of training")
    parser.add_argument("--out", type=Path, help="folder for the runs (default: temp)")
    parser.add_argument("--no-malloc-tune", action="store_true", help="do not re-execute with GLIBC_TUNABLES set")
    return parser.parse_args(argv)


def recipe_config(args: argparse.Namespace, recipe: str, external: dict[str, Any]) -> RunConfig:
    """One recipe's config: Lite0 ImageNet, the benchmark's seed, epochs, size and the lungseg sets."""
    values: dict[str, Any] = {"name": recipe, "model.backbone": "efficientnet_lite0", "model.weights": "lite0-imagenet",
                              "train.seed": args.seed, "data.split_seed": args.seed, "eval.external": external,
                              "eval.shortcut_max_images": args.audit_images, "eval.bootstrap": args.bootstrap,
                              "train.epochs": args.epochs_head, "data.image_size": args.image_size}
    if recipe != "seed":
        values["train.finetune_epochs"] = args.epochs_finetune
    values.update(_parse_set(args.overrides))
    return load_config(CONFIGS[recipe], values)


def _ci(value: Any, ci: Any) -> dict[str, Any]:
    return {"value": None if value is None else round(float(value), 4),
            "ci": None if not ci else [round(float(v), 4) for v in ci]}


def _attention(audit: dict[str, Any] | None) -> dict[str, Any] | None:
    if not audit:
        return None
    att = audit.get("attention") or {}
    return {"images": audit.get("images"), "share_in_lungs": att.get("mean_share"), "lung_area": att.get("mean_area"),
            "share_minus_area": _ci(att.get("difference"), att.get("difference_ci")),
            "flagged": (audit.get("verdict") or {}).get("flagged")}


def summarize(recipe: str, run_dir: Path, wall: float, load: tuple[float, ...]) -> dict[str, Any]:
    """The table row of one finished run."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    test = metrics["test"]
    normal = test["per_class"].get("Normal", {})
    row: dict[str, Any] = {
        "recipe": recipe,
        "internal": {"n": test["n"], "macro_f1": _ci(test["macro_f1"], test["ci"]["macro_f1"]),
                     "normal_recall": _ci(normal.get("recall"), normal.get("recall_ci")),
                     "gradcam": _attention(metrics.get("shortcut"))},
    }
    for name, entry in ((metrics.get("external") or {}).get("sets") or {}).items():
        if entry.get("error"):
            row[name] = {"error": entry["error"]}
            continue
        m = entry["metrics"]
        row[name] = {"n": m["n"], "called_normal": _ci(m.get("called_normal"), m["ci"].get("called_normal")),
                     "tb_auroc": _ci(m.get("abnormal_auroc"), m["ci"].get("abnormal_auroc")),
                     "normals_called_as": m.get("predicted_absent"),  # the set's normals given another class
                     "tb_called_abnormal": _ci((m.get("foreign") or {}).get("TB", {}).get("rate"),
                                               (m.get("foreign") or {}).get("TB", {}).get("ci")),
                     "gradcam": _attention(entry.get("shortcut"))}
    row.update(wall_seconds=round(wall, 1), loadavg_start=[round(v, 2) for v in load],
               loadavg_end=[round(v, 2) for v in os.getloadavg()], run_dir=str(run_dir))
    return row


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    out, data = _common.start(__file__, argv, args, "cxr-robust-", args.seed)
    manifests = write_manifests(args.lungseg, out / "lungseg")
    external = {name: {"data": str(path), "label_map": str(LABEL_MAP)} for name, path in manifests.items()}
    rows = []
    for recipe in args.recipes:
        cfg = recipe_config(args, recipe, external)
        load = os.getloadavg()
        start = time.perf_counter()
        run_study(cfg, data, out / recipe, cache_dir=out / "cache", progress=True, force=True)
        rows.append(summarize(recipe, out / recipe, time.perf_counter() - start, load))
        print(json.dumps(rows[-1]), file=sys.stderr)
    print(json.dumps({"data": str(args.data), "subset": args.subset, "seed": args.seed, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
