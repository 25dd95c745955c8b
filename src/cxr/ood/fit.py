"""Fitting the out-of-distribution detector of a checkpoint and storing it in its `extra["ood"]`.

The detector sees the pooled backbone features of the final model (so a fine-tuned backbone is
measured as it predicts): one pass over a training subsample fits it, one over the validation split
chooses its threshold. Called when a study finishes (`cxr.study.evaluation.calibrate_best`) and, for
an existing checkpoint, by `cxr evaluate --fit-ood` (`fit_checkpoint`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cxr.checkpoint import config_of, load_checkpoint, model_from_checkpoint
from cxr.data.dataset import SplitDataset, drop_skipped, make_loader
from cxr.data.masks import region_options
from cxr.errors import CxrError
from cxr.ood.detector import DEFAULT_ACCEPT, DEFAULT_METHOD, FeatureDetector, fit_detector
from cxr.progress import Progress
from cxr.rundir import RunDir, SplitRow, read_split_csv
from cxr.runtime import Compute
from cxr.temperature import update_extra

log = logging.getLogger(__name__)

OOD_KEY = "ood"  # best.pt extra: the detector's state (`store_state`)
MAX_TRAIN_IMAGES = 2000  # the training split is subsampled to this many images to fit the detector


def pooled_and_logits(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One backbone pass: pooled features (N, C) float32 and the logits computed from them."""
    feats = model.forward_features(x).float().mean((2, 3))
    return feats, model.forward_head(feats).float()


@torch.no_grad()
def pass_features(model: nn.Module, rows: list[SplitRow], root: str | Path, classes: list[str], cfg: Any,
                  compute: Compute, desc: str) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features and logits of `rows`' images (unreadable ones skipped), without augmentation."""
    dataset = SplitDataset(root, rows, classes, model.preprocessing, None, seed=cfg.train.seed,
                           multilabel=cfg.data.task == "multilabel", regions=region_options(cfg))
    loader = make_loader(dataset, batch_size=cfg.train.batch_size, shuffle=False, num_workers=cfg.data.num_workers,
                         seed=cfg.train.seed)
    model.eval().to(compute.device)
    feats, logits = [], []
    with Progress(total=len(rows), desc=desc, unit="img", enabled=compute.progress) as bar:
        for x, y in loader:
            n = len(y)
            x, y = drop_skipped(x, y)
            if len(y):
                f, z = pooled_and_logits(model, x.to(compute.device))
                feats.append(f.cpu().numpy())
                logits.append(z.cpu().numpy())
            bar.update(n)
    if not feats:
        raise CxrError(f"no readable images to fit the out-of-distribution detector on ({desc})")
    return np.concatenate(feats), np.concatenate(logits)


def fit_on_rows(model: nn.Module, rows: list[SplitRow], root: str | Path, classes: list[str], cfg: Any,
                compute: Compute, *, method: str = DEFAULT_METHOD, accept: float = DEFAULT_ACCEPT,
                max_train: int = MAX_TRAIN_IMAGES) -> FeatureDetector:
    """The detector fitted on (a subsample of) the train rows, its threshold chosen on the val rows."""
    train = [r for r in rows if r.split == "train"]
    val = [r for r in rows if r.split == "val"]
    if not train or not val:
        raise CxrError(f"fitting the out-of-distribution detector needs train and val rows; got {len(train)} "
                       f"train and {len(val)} val")
    if len(train) > max_train:
        keep = np.sort(np.random.default_rng(cfg.train.seed).permutation(len(train))[:max_train])
        train = [train[i] for i in keep]
    f_train, z_train = pass_features(model, train, root, classes, cfg, compute, "ood: train features")
    f_val, z_val = pass_features(model, val, root, classes, cfg, compute, "ood: validation features")
    detector = fit_detector(f_train, z_train, method, seed=cfg.train.seed).calibrate(f_val, z_val, accept)
    log.info("out-of-distribution detector: %s on %d training images, threshold %.4g accepts %.0f%% of %d "
             "validation images", method, len(f_train), detector.threshold, 100 * accept, len(f_val))
    return detector


def store_state(path: str | Path, detector: FeatureDetector | None) -> None:
    """Write the detector into the checkpoint's extra (arrays as float32 tensors: weights-only loadable)."""
    if detector is None:
        update_extra(path, {OOD_KEY: None})
        return
    state = detector.to_state()
    state["arrays"] = {k: torch.from_numpy(np.array(v, dtype=np.float32, order="C")) for k, v in state["arrays"].items()}
    update_extra(path, {OOD_KEY: state})


def detector_of(extra: dict[str, Any] | None) -> FeatureDetector | None:
    """The detector stored in a checkpoint's extra, or None."""
    state = (extra or {}).get(OOD_KEY)
    if not state:
        return None
    arrays = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in (state.get("arrays") or {}).items()}
    return FeatureDetector.from_state({**state, "arrays": arrays})


def fit_checkpoint(path: str | Path, data_root: str | Path | None = None, *, method: str = DEFAULT_METHOD,
                   accept: float = DEFAULT_ACCEPT, device: str = "auto", progress: bool = True) -> FeatureDetector:
    """Fit and store the detector of an existing checkpoint from its run's split.csv (`cxr evaluate --fit-ood`)."""
    path = Path(path)
    state = load_checkpoint(path)
    cfg = config_of(state)
    split_csv = RunDir.of_checkpoint(path).split
    if not split_csv.is_file():
        raise CxrError(f"cannot fit the out-of-distribution detector of {path}: no split.csv beside it ({split_csv})")
    root = data_root or cfg.data.root
    if root is None:
        raise CxrError(f"{path} does not record its data; give the data folder")
    from cxr.data.discover import discover

    found = discover(Path(root), task=cfg.data.task, uncertain=cfg.data.uncertain)
    compute = Compute.resolve(device, "fp32", scoring=True, progress=progress)
    detector = fit_on_rows(model_from_checkpoint(state), read_split_csv(split_csv), found.root,
                           list(state["classes"]), cfg, compute, method=method, accept=accept)
    store_state(path, detector)
    return detector
