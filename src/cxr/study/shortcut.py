"""The shortcut audit of one set of images with lung masks or boxes: where Grad-CAM puts its energy
relative to the lungs, a gallery of the images that look most outside them, and the masked-region
test (the same images with the lungs, then everything else, blanked), judged per class against a control:
Normal images with their lungs blanked (`cxr.metrics.blanked`; the internal test's for an external set).

Grad-CAM runs batched (`cxr.explain_masks.grad_cam_batch`: one forward and one backward through the
head per batch) on at most `eval.shortcut_max_images` images, chosen evenly per class. The numbers
and the flag rule are in `cxr.metrics.attention`; the result is the dict stored in metrics.json
("shortcut" for the test split, "external.NAME.shortcut" for an external set).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import nn

from cxr.config import OCCLUDE_CHOICES, RunConfig
from cxr.data.dataset import SKIPPED, SplitDataset, make_loader
from cxr.data.masks import region_options
from cxr.explain_masks import area_fraction, cam_share, grad_cam_batch, overlay_with_outline
from cxr.metrics.attention import attention_summary, occlusion_summary, shortcut_verdict
from cxr.rundir import SplitRow
from cxr.runtime import Compute
from cxr.study.auto_lungs import audit_rows
from cxr.study.scoring import score_rows

log = logging.getLogger(__name__)

GALLERY_PREFIX = "shortcut_"  # figures/shortcut_<set>_<k>.png


@dataclass(frozen=True)
class AuditSettings:
    """How much of the audit to run, from a run's config (`eval.shortcut_*`, `data.lung_crop`)."""

    max_images: int = 200
    gallery: int = 8
    occlude: tuple[str, ...] = OCCLUDE_CHOICES
    n_boot: int = 1000
    seed: int = 0
    batch_size: int = 32
    num_workers: int = 0
    cfg: RunConfig | None = None  # the run's config: its lung crop, occlusion fill and data.lungs
    progress: bool = True  # progress of the automatic lung masks
    control: dict[str, Any] | None = None  # the internal test's blanked Normal images (`metrics.blanked`); None: the set's own

    @classmethod
    def of(cls, cfg: RunConfig, **changes: Any) -> AuditSettings:
        return dataclasses.replace(cls(cfg.eval.shortcut_max_images, cfg.eval.shortcut_gallery, OCCLUDE_CHOICES,
                                       cfg.eval.bootstrap, cfg.train.seed, cfg.train.batch_size,
                                       cfg.data.num_workers, cfg), **changes)


def select_rows(rows: Sequence[SplitRow], limit: int) -> list[SplitRow]:
    """At most `limit` rows with a lung region, spread evenly over the classes (round robin in path
    order), returned in path order."""
    by_class: dict[str, list[SplitRow]] = {}
    for row in sorted((r for r in rows if r.mask), key=lambda r: r.path):
        by_class.setdefault(row.label, []).append(row)
    chosen: list[SplitRow] = []
    depth = 0
    while len(chosen) < limit and any(depth < len(v) for v in by_class.values()):
        chosen += [v[depth] for v in by_class.values() if depth < len(v)][: limit - len(chosen)]
        depth += 1
    return sorted(chosen, key=lambda r: r.path)


def _cams(model: nn.Module, dataset: SplitDataset, compute: Compute, settings: AuditSettings) -> dict[str, np.ndarray]:
    """Shares, areas, labels, predictions and dataset indices of every readable image, batch by batch."""
    loader = make_loader(dataset, batch_size=settings.batch_size, shuffle=False, num_workers=settings.num_workers,
                         seed=settings.seed)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("share", "area", "y", "pred", "index")}
    start = 0
    model.eval()
    for x, y, masks in loader:
        index = np.arange(start, start + len(y))
        start += len(y)
        keep = (y != SKIPPED).numpy()
        if not keep.any():
            continue
        cam, chosen, _ = grad_cam_batch(model, compute.to(x[keep]))
        parts["share"].append(cam_share(cam.cpu(), masks[keep]))
        parts["area"].append(area_fraction(masks[keep]))
        parts["y"].append(y[keep].numpy())
        parts["pred"].append(chosen.cpu().numpy())
        parts["index"].append(index[keep])
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}


def _gallery(model: nn.Module, dataset: SplitDataset, found: dict[str, np.ndarray], classes: Sequence[str],
             compute: Compute, count: int, fig_dir: Path, name: str) -> list[dict[str, Any]]:
    """Overlays (heatmap + lung outline) of the `count` images whose attention lies most outside the
    lungs (lowest share minus area), as figures/shortcut_<name>_<k>.png."""
    for old in fig_dir.glob(f"{GALLERY_PREFIX}{name}_*.png"):
        old.unlink()
    gap = found["share"] - found["area"]
    order = [i for i in np.argsort(np.where(np.isfinite(gap), gap, np.inf), kind="stable") if np.isfinite(gap[i])]
    entries = []
    fig_dir.mkdir(parents=True, exist_ok=True)
    for k, i in enumerate(order[:count]):
        index = int(found["index"][i])
        x, _, mask = dataset[index]
        cam, _, _ = grad_cam_batch(model, compute.to(x[None]))
        image, _ = dataset.pixels(index)
        file = fig_dir / f"{GALLERY_PREFIX}{name}_{k:02d}.png"
        Image.fromarray(overlay_with_outline(image, cam[0].cpu().numpy(), mask.numpy() > 0.5)).save(file)
        row = dataset.rows[index]
        entries.append({"figure": f"{fig_dir.name}/{file.name}", "path": row.path, "label": row.label,
                        "pred": classes[int(found["pred"][i])], "share": float(found["share"][i]),
                        "area": float(found["area"][i])})
    return entries


def shortcut_audit(
    model: nn.Module,
    root: str | Path,
    rows: Sequence[SplitRow],
    classes: Sequence[str],
    compute: Compute,
    settings: AuditSettings,
    *,
    name: str = "test",
    fig_dir: Path | None = None,
) -> dict[str, Any] | None:
    """The audit of `rows` (those with a lung region, given or automatic: `cxr.study.auto_lungs`; None
    when none has one). See the module docstring."""
    filled = audit_rows(rows, root, settings.cfg, name, progress=settings.progress)
    if filled is None:
        return None
    rows, lungs = filled
    chosen = select_rows(rows, settings.max_images)
    if not chosen:
        log.info("shortcut audit (%s): no image has a lung mask or box; skipped", name)
        return None
    cfg = settings.cfg or RunConfig()
    crop = region_options(cfg)
    dataset = SplitDataset(root, chosen, classes, model.preprocessing, None, seed=settings.seed,
                           regions=crop, with_mask=True)
    log.info("shortcut audit (%s): Grad-CAM on %d of %d images with lung regions", name, len(chosen),
             sum(1 for r in rows if r.mask))
    found = _cams(model, dataset, compute, settings)
    attention = attention_summary(found["share"], found["area"], found["y"], found["pred"], classes,
                                  n_boot=settings.n_boot, seed=settings.seed)
    scored = [chosen[int(i)] for i in found["index"]]
    occlusion = _occlusion(model, root, scored, classes, compute, settings) if scored else None
    gallery = (_gallery(model, dataset, found, classes, compute, settings.gallery, fig_dir, name)
               if fig_dir is not None and settings.gallery else [])
    verdict = shortcut_verdict(attention, occlusion)
    log.info("shortcut audit (%s): %.0f%% of Grad-CAM energy inside the lungs (an even map: %.0f%%)%s; %s", name,
             100 * (attention["mean_share"] or 0), 100 * (attention["mean_area"] or 0), _occlusion_text(occlusion),
             "FLAGGED" if verdict["flagged"] else "not flagged")
    return {"images": int(len(found["y"])), "with_region": sum(1 for r in rows if r.mask),
            "without_region": sum(1 for r in rows if not r.mask), "selection": "evenly per class, path order",
            "max_images": settings.max_images, "crop": crop.crop_margin is not None,
            "attention": attention, "occlusion": occlusion, "verdict": verdict, "gallery": gallery, "lungs": lungs}


def _occlusion(model: nn.Module, root: str | Path, rows: list[SplitRow], classes: Sequence[str], compute: Compute,
               settings: AuditSettings) -> dict[str, Any] | None:
    """The masked-region test on `rows`: predictions with nothing and with each of `settings.occlude` blanked."""
    if not settings.occlude:
        return None
    cfg = settings.cfg or RunConfig()
    kwargs = {"batch_size": settings.batch_size, "num_workers": settings.num_workers, "seed": settings.seed}
    base = score_rows(model, root, rows, classes, compute, regions=region_options(cfg), desc="occlusion: none",
                      **kwargs)
    occluded = {}
    for mode in settings.occlude:
        out = score_rows(model, root, rows, classes, compute, regions=region_options(cfg, occlude=mode),
                         desc=f"occlusion: {mode}", **kwargs)
        occluded[mode] = out.probs.argmax(axis=1)
    return occlusion_summary(base.y_true, base.probs.argmax(axis=1), occluded, cfg.eval.occlude_fill, classes,
                             settings.control)


def internal_control(audit: dict[str, Any] | None) -> dict[str, Any] | None:
    """The control of the masked-region test that an audit of the internal test split provides (its
    Normal images with the lungs blanked), for the audits of external sets; None without one."""
    own = ((audit or {}).get("occlusion") or {}).get("own_control")
    return {**own, "source": "the internal test's Normal images"} if own else None


def _occlusion_text(occlusion: dict[str, Any] | None) -> str:
    if not occlusion or "lungs" not in occlusion:
        return ""
    return (f"; accuracy {occlusion['none']['accuracy']:.3f}, with the lungs blanked "
            f"{occlusion['lungs']['accuracy']:.3f} (chance {occlusion['chance']:.3f})")
