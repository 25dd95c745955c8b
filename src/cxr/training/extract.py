"""Running the frozen backbone over every image and view, into a new feature-cache entry.

`build_entry` extracts every split into a temporary folder beside the entry and renames it into place,
so a reader never sees half an entry; temporary folders left by a killed process are removed by the
next build (`remove_stale_temps`). See `cxr.training.features` for what the cache holds and its key.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from cxr.config import RunConfig
from cxr.data.dataset import SplitDataset, is_skipped, label_targets, make_loader
from cxr.data.masks import region_options
from cxr.engine.base import Engine, engine_precision
from cxr.engine.parity import PARITY_IMAGES
from cxr.engine.select import EngineSpec, select_engine
from cxr.engine.torch_engine import PooledBackbone
from cxr.errors import CxrError
from cxr.progress import Progress
from cxr.rundir import SPLITS, write_json
from cxr.runtime import autocast, batch_to, describe
from cxr.training.features_store import FORMAT, read_manifest
from cxr.transforms import SeedAugment

log = logging.getLogger(__name__)

STORE_DTYPE = np.float16
TEMP_PREFIX = ".tmp-"
STALE_AFTER = 24 * 3600.0  # seconds: a temp folder of another machine this old is abandoned
_FP16_TOLERANCE = 1e-3  # largest float16 rounding error allowed, relative to the largest feature


def _owner() -> str:
    return f"{socket.gethostname()}.{os.getpid()}"


def remove_stale_temps(cache_dir: Path) -> list[Path]:
    """Remove temporary entry folders whose extracting process is gone (killed mid-extraction).

    A folder made on this host is stale when its process no longer exists; one made elsewhere (a
    shared file system) when it is older than STALE_AFTER. Returns what was removed.
    """
    removed = []
    host = socket.gethostname()
    for tmp in Path(cache_dir).glob(f"{TEMP_PREFIX}*"):
        parts = tmp.name.rsplit("-", 2)  # .tmp-<entry>-<host>.<pid>-<random>
        owner_host, _, pid = parts[-2].rpartition(".") if len(parts) == 3 else ("", "", "")
        if owner_host == host and pid.isdigit():
            stale = not _alive(int(pid))
        else:
            try:
                stale = time.time() - tmp.stat().st_mtime > STALE_AFTER
            except OSError:
                continue
        if stale and tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
            log.info("feature cache: removed %s, left by an interrupted extraction", tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def extract_features(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    precision: str,
    desc: str = "features",
    channels_last: bool = True,
    forward: PooledBackbone | Engine | None = None,
    progress: bool = True,
) -> np.ndarray:
    """GAP'd backbone features of every batch of `loader`, as an (N, C) float32 array.

    The model runs in eval mode under `torch.inference_mode`, channels_last, and autocast for bf16/fp16,
    through `forward` (default: PyTorch eager; or an engine of `cxr.engine` with output 'features').
    Progress shows images/s (a bar, or log lines off a terminal).
    """
    model.eval()
    forward = forward or PooledBackbone(model)
    chunks: list[np.ndarray] = []
    total = len(loader.dataset) if hasattr(loader.dataset, "__len__") else None
    with torch.inference_mode(), Progress(total, desc, enabled=progress) as bar:
        for batch in loader:
            images = batch[0] if isinstance(batch, list | tuple) else batch
            if isinstance(forward, Engine) and forward.name != "torch":
                chunks.append(forward.run(images))  # NCHW float32 straight from the loader, no device copy
            else:
                with autocast(device, precision):
                    feats = forward(batch_to(images, device, channels_last))
                chunks.append(feats.float().cpu().numpy())
            bar.update(len(chunks[-1]))
    if not chunks:
        raise CxrError("no images to extract features from")
    return np.concatenate(chunks)


def backbone_features(
    model: nn.Module, images: torch.Tensor, device: torch.device, precision: str, channels_last: bool = True
) -> torch.Tensor:
    """`model.forward_features(images).mean((2, 3))` as float32 (N, C), with the precision policy applied."""
    x = batch_to(images, device, channels_last)
    with autocast(device, precision):
        fmap = model.forward_features(x)
    return fmap.float().mean((2, 3))


def compare_precision(
    model: nn.Module,
    images: torch.Tensor,
    precision: str = "bf16",
    device: torch.device | None = None,
) -> dict[str, float]:
    """Numerics check: features and predictions under `precision` against fp32 on the same images.

    Returns the mean and minimum cosine similarity of the feature vectors, the largest error relative
    to the largest fp32 feature, and the fraction of images whose predicted class (`model.head` on
    the pooled features) agrees.
    """
    device = device or torch.device("cpu")
    model.eval()
    with torch.inference_mode():
        ref = backbone_features(model, images, device, "fp32")
        low = backbone_features(model, images, device, precision)
        cos = nn.functional.cosine_similarity(ref, low, dim=1)
        scale = ref.abs().max().clamp_min(torch.finfo(torch.float32).tiny)
        pred_ref = model.head(ref[:, :, None, None]).argmax(1)
        pred_low = model.head(low[:, :, None, None]).argmax(1)
    return {
        "precision": precision,
        "images": int(images.shape[0]),
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
        "max_rel_error": float((ref - low).abs().max() / scale),
        "prediction_agreement": float((pred_ref == pred_low).float().mean()),
    }


@dataclass
class _Extraction:
    """Everything one cache build needs, shared by its splits."""

    model: nn.Module
    root: Path
    classes: list[str]
    cfg: RunConfig
    device: torch.device
    precision: str
    forward: Engine
    progress: bool = True


def build_entry(
    model: nn.Module,
    root: Path,
    by_split: dict[str, list[Any]],
    classes: list[str],
    cfg: RunConfig,
    views: int,
    device: torch.device,
    precision: str,
    entry: Path,
    key: str,
    engine: Engine,
    progress: bool = True,
) -> dict[str, Any]:
    """Extract every split on `engine` (`extraction_engine`) into a temporary folder, then rename it
    to `entry` (atomic publish)."""
    job = _Extraction(model, root, classes, cfg, device, precision, engine, progress)
    where = describe(device, precision) if engine.name == "torch" else engine.describe()
    log.info("feature cache: extracting %s on %s (%d views per training image%s)",
             cfg.model.backbone, where, views, ", compiled" if cfg.train.compile else "")
    entry.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(entry.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{entry.name}-{_owner()}-", dir=entry.parent))
    started = time.perf_counter()
    try:
        splits: dict[str, Any] = {}
        images_done = 0
        for split in SPLITS:
            rows = by_split[split]
            n_views = views if split == "train" else 1
            labels = label_targets(rows, classes, multilabel=cfg.data.task == "multilabel")
            np.save(tmp / f"{split}_labels.npy", labels)
            channels = _extract_split(job, split, rows, n_views, tmp / f"{split}.npy")
            splits[split] = {"images": len(rows), "views": n_views, "channels": channels}
            images_done += len(rows) * n_views
        seconds = time.perf_counter() - started
        manifest = {
            "format": FORMAT,
            "key": key,
            "dtype": {s: np.load(tmp / f"{s}.npy", mmap_mode="r").dtype.name for s in SPLITS},
            "classes": list(classes),
            "seed": cfg.train.seed,
            "views": views,
            "precision": precision,
            "engine": engine.describe(),
            "backbone": cfg.model.backbone,
            "weights": cfg.model.weights,
            "splits": splits,
            "extract_seconds": round(seconds, 3),
            "images_per_second": round(images_done / seconds, 2) if seconds > 0 else None,
        }
        write_json(tmp / "manifest.json", manifest)
        try:
            os.rename(tmp, entry)
        except OSError:  # another process published the same key first, or a stale entry is in the way
            if read_manifest(entry, key) is None:
                shutil.rmtree(entry, ignore_errors=True)
                os.rename(tmp, entry)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info(
        "feature cache: extracted %d forward passes in %.1f s (%.1f images/s)",
        images_done, seconds, images_done / max(seconds, 1e-9),
    )
    return manifest


def extraction_engine(model: nn.Module, root: Path, by_split: dict[str, list[Any]], classes: list[str],
                      cfg: RunConfig, device: torch.device, precision: str, forwards: int) -> Engine:
    """The engine of `cfg.train.engine` for the backbone (checked on a few training images): PyTorch
    (default) in `precision`; an exported engine in fp32 unless `train.precision` names bf16."""
    spec = EngineSpec("features", precision=precision, export_precision=engine_precision(cfg.train.precision),
                      batch_size=cfg.train.batch_size, device=str(device), channels_last=cfg.train.channels_last,
                      compiled=cfg.train.compile)
    sample = None
    if cfg.train.engine != "torch":
        rows = [r for split in SPLITS for r in by_split[split]][:PARITY_IMAGES]
        dataset = SplitDataset(root, rows, classes, model.preprocessing, None, cfg.train.seed,
                               multilabel=cfg.data.task == "multilabel", regions=region_options(cfg))
        readable = [item[0] for item in (dataset[i] for i in range(len(rows))) if not is_skipped(item[1])]
        sample = torch.stack(readable) if readable else None
    return select_engine(cfg.train.engine, model, spec, sample=sample, images=forwards)


def _extract_split(job: _Extraction, split: str, rows: list[Any], n_views: int, path: Path) -> int:
    """Write `path` = (views, images, channels) float16 features of one split; returns the channel count.

    View v of the training split uses the augmentation draws of the direct path's (0-based) epoch v.
    """
    if not rows:
        np.save(path, np.zeros((n_views, 0, 0), dtype=STORE_DTYPE))
        return 0
    cfg = job.cfg
    augment = SeedAugment(cfg.augment) if split == "train" and cfg.augment.enabled else None
    dataset = SplitDataset(job.root, list(rows), job.classes, job.model.preprocessing, augment, cfg.train.seed,
                           multilabel=cfg.data.task == "multilabel", regions=region_options(cfg))
    loader = make_loader(dataset, batch_size=cfg.train.batch_size, shuffle=False,
                         num_workers=cfg.data.num_workers, seed=cfg.train.seed)
    store: np.ndarray | None = None
    for view in range(n_views):
        dataset.set_epoch(view)
        desc = f"features {split}" + (f" view {view + 1}/{n_views}" if n_views > 1 else "")
        feats = extract_features(job.model, loader, job.device, job.precision, desc=desc,
                                 channels_last=cfg.train.channels_last, forward=job.forward, progress=job.progress)
        bad = dataset.unreadable()
        if bad:
            listed = "; ".join(f"{row.path}: {reason}" for row, reason in bad[:5])
            raise CxrError(f"{len(bad)} image(s) of the {split} split can no longer be read ({listed}); they "
                           "changed after the split: restore them, or start a new run (--force) to split again")
        if store is None:  # the first view tells the channel count
            store = np.lib.format.open_memmap(path, mode="w+", dtype=STORE_DTYPE, shape=(n_views, *feats.shape))
        if store.dtype != np.float32 and not fits_float16(feats):
            store = _widen(store, path)
        store[view] = feats
    store.flush()
    return int(store.shape[2])


def fits_float16(feats: np.ndarray) -> bool:
    """True when float16 keeps every value within 0.1% of the largest one (no overflow, no underflow).

    Trained backbones give pooled features of order 0.01-100, which float16 holds to about 3 decimal
    digits. Random-init backbones can give values near 1e5 (overflow) or 1e-8 (flushed to zero).
    """
    if not feats.size:
        return True
    peak = float(np.abs(feats).max())
    with np.errstate(over="ignore"):
        error = float(np.abs(feats.astype(np.float16).astype(np.float32) - feats).max())
    return np.isfinite(error) and error <= _FP16_TOLERANCE * peak


def _widen(store: np.ndarray, path: Path) -> np.ndarray:
    """Rewrite a float16 store as float32 (keeping what it holds), for features float16 cannot represent."""
    log.warning("feature cache: these features do not fit float16 (too large or too small); storing float32")
    wide = np.array(store, dtype=np.float32)
    del store
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=wide.shape)
    out[:] = wide
    return out
