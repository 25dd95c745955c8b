"""The cheapest measure of a robust-recipe lever: frozen backbone features + a linear probe per lever.

For each lever (`none`, `equalize`, `clahe`: the preprocessing's intensity standardisation;
`scanner`: one training view per image through the scanner augmentations, `augment.scanner=all`;
`clahe+scanner`: both), EfficientNet-Lite0 (ImageNet) features of every cxr4-dev image and of every
lungseg image are extracted once (cached in --out as .npz), a logistic-regression probe is fitted on
the cxr4-dev training split (standardised features, class weights balanced) and scored on:
- the internal test split: macro-F1 and Normal recall (Wilson interval);
- each lungseg hospital (Montgomery, Shenzhen; never trained on): normal X-rays called Normal
  (Wilson) and tuberculosis against normal, AUROC of 1 - p(Normal) (bootstrap interval).
Prints one JSON document. A probe is not the seed's head, nor fine-tuning: it ranks levers cheaply.

    python bench/robust_probe.py ../shared/data/cxr4-dev ../shared/data/lungseg --out /tmp/probe
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import GroupShuffleSplit
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cxr.config import AugmentConfig, ModelConfig
from cxr.data.discover import discover
from cxr.io import read_image
from cxr.metrics.abnormal import abnormal_auroc, called_normal
from cxr.metrics.intervals import wilson_interval
from cxr.models.build import build_model
from cxr.transforms import Preprocessing, SeedAugment, resize_gray, to_input

LEVERS = ("none", "equalize", "clahe", "scanner", "clahe+scanner")
SITES = {"montgomery": "MCUCXR_", "shenzhen": "CHNCXR_"}
log = logging.getLogger("robust_probe")


def _images(data: Path, lungseg: Path, limit: int | None, seed: int) -> dict[str, list]:
    """(path, label, group) of cxr4-dev (optionally a class-stratified subset) and of lungseg."""
    found = discover(data)
    rows = [(found.root / s.path, s.label, s.group or s.path) for s in found.samples]
    if limit and limit < len(rows):
        rng = np.random.default_rng(seed)
        rows = [rows[i] for i in sorted(rng.permutation(len(rows))[:limit])]
    foreign = []
    for path in sorted((lungseg / "images").glob("*.png")):
        site = next((k for k, p in SITES.items() if path.name.startswith(p)), None)
        if site:
            foreign.append((path, "Normal" if path.stem.endswith("_0") else "TB", site))
    return {"internal": rows, "foreign": foreign}


@torch.no_grad()
def _features(model: torch.nn.Module, pre: Preprocessing, paths: list[Path], augment: SeedAugment | None,
              seed: int, batch: int = 32) -> np.ndarray:
    out = []
    for start in range(0, len(paths), batch):
        xs = []
        for i, path in enumerate(paths[start:start + batch], start):
            img = resize_gray(read_image(path), pre.size, pre.interpolation)
            if augment is not None:
                img = augment(img, np.random.default_rng([seed, 0, i]))
            xs.append(to_input(img, pre))
        out.append(model.forward_features(torch.stack(xs)).mean(dim=(2, 3)).numpy())
        if start // batch % 20 == 0:
            log.info("%d / %d", start + len(xs), len(paths))
    return np.concatenate(out)


def _cached(out: Path, name: str, make) -> np.ndarray:
    file = out / f"{name}.npy"
    if file.is_file():
        return np.load(file)
    t = time.perf_counter()
    value = make()
    np.save(file, value)
    log.info("%s: %d x %d features in %.0f s", name, *value.shape, time.perf_counter() - t)
    return value


def _lever_features(lever: str, model, images, split, args) -> dict[str, np.ndarray]:
    intensity = "clahe" if "clahe" in lever else "equalize" if lever == "equalize" else "none"
    pre = Preprocessing("half", args.size, intensity=intensity)
    paths = [r[0] for r in images["internal"]]
    feats = {"internal": _cached(args.out, f"internal-{intensity}", lambda: _features(model, pre, paths, None, 0)),
             "foreign": _cached(args.out, f"foreign-{intensity}",
                                lambda: _features(model, pre, [r[0] for r in images["foreign"]], None, 0))}
    if "scanner" in lever:
        aug = SeedAugment(AugmentConfig(scanner="all", scanner_p=0.5))
        train_paths = [paths[i] for i in split["train"]]
        feats["train_aug"] = _cached(args.out, f"train-scanner-{intensity}",
                                     lambda: _features(model, pre, train_paths, aug, args.seed))
    return feats


def _score(lever: str, feats: dict[str, np.ndarray], images, split, classes: list[str], args) -> dict:
    labels = np.array([classes.index(r[1]) for r in images["internal"]])
    x_train, y_train = feats["internal"][split["train"]], labels[split["train"]]
    if "train_aug" in feats:  # the clean images and one scanner-augmented view of each
        x_train, y_train = np.concatenate([x_train, feats["train_aug"]]), np.concatenate([y_train, y_train])
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=args.c, max_iter=2000, class_weight="balanced"))
    probe.fit(x_train, y_train)
    p_test = probe.predict_proba(feats["internal"][split["test"]])
    y_test = labels[split["test"]]
    pred = p_test.argmax(axis=1)
    normal = classes.index("Normal")
    hits, n = int(np.sum((y_test == normal) & (pred == normal))), int(np.sum(y_test == normal))
    row = {"lever": lever, "internal": {"n": int(len(y_test)), "macro_f1": float(f1_score(y_test, pred, average="macro")),
                                        "normal_recall": hits / n, "normal_recall_ci": wilson_interval(hits, n)}}
    p_foreign = probe.predict_proba(feats["foreign"])
    for site in SITES:
        rows = np.array([r[2] == site for r in images["foreign"]])
        truth = np.array([r[1] for r in images["foreign"]], dtype=object)[rows]
        p = p_foreign[rows]
        called = called_normal(np.asarray(classes, dtype=object)[p.argmax(axis=1)], truth)
        auc, auc_ci = abnormal_auroc(p[:, normal], truth == "Normal", n_boot=args.bootstrap, seed=args.seed)
        normals = truth == "Normal"
        counts = {c: int(np.sum(p[normals].argmax(axis=1) == i)) for i, c in enumerate(classes)}
        row[site] = {"n_normal": called["n"], "called_normal": called["rate"], "called_normal_ci": called["ci"],
                     "normals_called": counts, "n_tb": int(np.sum(~normals)), "tb_auroc": auc, "tb_auroc_ci": auc_ci}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="cxr4-dev folder or manifest")
    parser.add_argument("lungseg", type=Path, help="the lungseg folder (images/)")
    parser.add_argument("--out", type=Path, required=True, help="feature cache folder")
    parser.add_argument("--levers", nargs="+", default=list(LEVERS), choices=LEVERS)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--limit", type=int, default=0, help="use this many cxr4-dev images (0: all)")
    parser.add_argument("--c", type=float, default=0.1, help="inverse L2 strength of the probe")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    images = _images(args.data, args.lungseg, args.limit or None, args.seed)
    classes = sorted({r[1] for r in images["internal"]})
    groups = [str(r[2]) for r in images["internal"]]
    train, test = next(GroupShuffleSplit(1, test_size=0.2, random_state=args.seed).split(groups, groups=groups))
    split = {"train": np.sort(train), "test": np.sort(test)}
    model = build_model(ModelConfig(backbone="efficientnet_lite0", weights="lite0-imagenet", head=(8,)), len(classes))
    model.eval()
    rows = [_score(lever, _lever_features(lever, model, images, split, args), images, split, classes, args)
            for lever in args.levers]
    print(json.dumps({"probe": "logistic regression on frozen EfficientNet-Lite0 (ImageNet) features",
                      "size": args.size, "classes": classes, "n_train": int(len(train)), "c": args.c,
                      "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
