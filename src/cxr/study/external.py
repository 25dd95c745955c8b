"""External validation: a trained model scored on other hospitals' images, beside its internal test.

A split of one database overstates what a model does elsewhere (Roberts et al. 2021). Each external
set (`eval.external`, `--external NAME=PATH`) is discovered like training data (one class is
enough), its class names mapped onto the model's (`cxr.data.labelmap`), scored with the model's own
preprocessing and lung crop, and summarised on the classes it holds (`cxr.metrics.partial`). The
internal test split is summarised the same way, on all its classes and on each external set's
classes, and a figure whose 95% interval lies wholly on the worse side of the internal one is named.
With lung masks or boxes the shortcut audit (`cxr.study.shortcut`) runs on the set too.

metrics.json["external"] = {"internal_test": ..., "sets": {NAME: ...}, "rule": ...}.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from cxr.config import RunConfig
from cxr.data.discover import discover
from cxr.data.labelmap import apply_label_map, foreign_classes, read_label_map
from cxr.data.masks import region_options, with_regions
from cxr.errors import CxrError
from cxr.logs import RESULT
from cxr.metrics.partial import present_class_metrics, restrict, worse_than
from cxr.ood.share import flag_share
from cxr.runtime import Compute
from cxr.study.auto_lungs import crop_rows
from cxr.study.checkpoint_eval import all_rows
from cxr.study.conformal import external_sets_entry
from cxr.study.foreign import foreign_set_metrics, placeholder_rows
from cxr.study.scoring import require_regions, score_rows
from cxr.study.shortcut import AuditSettings, shortcut_audit

log = logging.getLogger(__name__)

WORSE_RULE = ("an external figure is marked worse when its 95% interval lies wholly below the internal test's "
              "(wholly above it for ECE); the internal figures are computed on the external set's classes")


@dataclass(frozen=True)
class ExternalSet:
    """One external set: its name, data (folder or manifest) and optional masks, boxes and label map."""

    name: str
    data: Path
    masks: str | None = None
    boxes: str | None = None
    label_map: str | None = None


def external_sets(entries: dict[str, Any], label_map: str | None = None) -> list[ExternalSet]:
    """`eval.external` entries (NAME: PATH or NAME: {data, masks, boxes, label_map}) as ExternalSets;
    `label_map` applies where an entry gives none."""
    out = []
    for name, entry in entries.items():
        spec = entry if isinstance(entry, dict) else {"data": entry}
        out.append(ExternalSet(name, Path(spec["data"]), spec.get("masks"), spec.get("boxes"),
                               spec.get("label_map") or label_map))
    return out


def check_external_sets(sets: list[ExternalSet]) -> None:
    """Refuse, before a study trains, an external set whose data, masks, boxes or label map is missing
    (or whose label map does not parse)."""
    for ext in sets:
        for what, path in (("data", ext.data), ("masks", ext.masks), ("boxes", ext.boxes), ("label map", ext.label_map)):
            if path is not None and not Path(path).exists():
                raise CxrError(f"external set {ext.name}: {what} not found: {path}")
        if ext.label_map:
            read_label_map(ext.label_map)


def internal_reference(y_true: np.ndarray, probs: np.ndarray, classes: list[str], cfg: RunConfig) -> dict[str, Any]:
    """The internal test split summarised like an external set (all its classes)."""
    return present_class_metrics(y_true, probs, classes, n_boot=cfg.eval.bootstrap, ece_bins=cfg.eval.ece_bins,
                                 seed=cfg.train.seed)


def evaluate_external(
    model: nn.Module,
    classes: list[str],
    cfg: RunConfig,
    ext: ExternalSet,
    compute: Compute,
    *,
    internal: tuple[np.ndarray, np.ndarray] | None = None,
    fig_dir: Path | None = None,
    best: dict[str, Any] | None = None,
    control: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score `model` on one external set; the entry of metrics.json["external"]["sets"][name]. `best`: the
    checkpoint dict whose prediction sets are judged on it, and whose out-of-distribution detector gives the
    entry's `ood` (share flagged). `control`: the internal test's blanked Normal images, for the
    masked-region test (`study.shortcut.internal_control`)."""
    if not ext.data.exists():
        raise CxrError(f"external set {ext.name}: data not found: {ext.data}")
    found = with_regions(discover(ext.data, min_classes=1), ext.masks, ext.boxes)
    user = read_label_map(ext.label_map) if ext.label_map else None
    found, mappings = apply_label_map(found, classes, user, where=f"external set {ext.name}")
    rows, truth = placeholder_rows(all_rows(found), classes)  # foreign abnormal classes: scored, kept aside
    rows = crop_rows(rows, found.root, cfg, f"external {ext.name}")  # a lung-crop model's regions
    if cfg.data.lung_crop:
        require_regions(rows, f"external set {ext.name} (the model was trained on lung crops)")
    scored = score_rows(model, found.root, rows, classes, compute, regions=region_options(cfg),
                        batch_size=cfg.train.batch_size, num_workers=cfg.data.num_workers, seed=cfg.train.seed,
                        tta=cfg.eval.tta, desc=f"external {ext.name}")
    if not scored.rows:
        raise CxrError(f"external set {ext.name}: none of its {len(rows)} images could be read")
    metrics = foreign_set_metrics(scored.rows, scored.probs, truth, classes, foreign_classes(mappings), cfg)
    same = None
    if internal is not None:
        keep = [classes.index(c) for c in metrics["classes_present"]]
        y_int, p_int = restrict(*internal, keep)
        if len(y_int):
            same = present_class_metrics(y_int, p_int, classes, n_boot=cfg.eval.bootstrap,
                                         ece_bins=cfg.eval.ece_bins, seed=cfg.train.seed)
    own = np.array([r.path not in truth for r in scored.rows], dtype=bool)  # the model's classes, not foreign ones
    own_rows = [r for r, keep in zip(scored.rows, own, strict=True) if keep]
    audit = (shortcut_audit(model, found.root, own_rows, classes, compute, AuditSettings.of(cfg, control=control),
                            name=f"external-{ext.name}", fig_dir=fig_dir) if cfg.eval.shortcut_audit else None)
    worse = worse_than(same, metrics) if same is not None else []
    log.info("external %s (%d images, %s): accuracy %.4f, macro recall %.4f%s%s", ext.name, metrics["n"],
             ", ".join(metrics["classes_present"] + metrics.get("foreign_present", [])),
             *(float("nan") if metrics.get(k) is None else metrics[k] for k in ("accuracy", "macro_recall")),
             _abnormal_text(metrics), f"; below the internal test: {', '.join(worse)}" if worse else "", extra=RESULT)
    return {
        "data": str(ext.data.resolve()), "layout": found.layout, "n": metrics["n"],
        "classes_present": metrics["classes_present"],
        "label_map": {raw: {"class": m.target, "how": m.how} for m in mappings for raw in (m.raw or (m.name,))},
        "ignored": sum(1 for m in mappings if m.target is None), "skipped": scored.skipped,
        "masks": {"with_region": sum(1 for r in rows if r.mask), "without_region": sum(1 for r in rows if not r.mask)},
        "metrics": metrics, "internal_same_classes": same, "worse_than_internal": worse, "shortcut": audit,
        "conformal": external_sets_entry(best, scored.y_true[own], scored.probs[own], f"external {ext.name}"),
        "ood": flag_share(model, found.root, scored.rows, classes, cfg, compute, (best or {}).get("extra"), desc=f"external {ext.name}"),
    }


def _abnormal_text(metrics: dict[str, Any]) -> str:
    parts = [f"{label} {metrics[key]:.3f}" for key, label in (("called_normal", "called Normal"),
                                                               ("abnormal_auroc", "abnormal vs Normal AUROC"))
             if metrics.get(key) is not None]
    return "; " + ", ".join(parts) if parts else ""


def external_section(
    model: nn.Module,
    classes: list[str],
    cfg: RunConfig,
    sets: list[ExternalSet],
    compute: Compute,
    *,
    internal: tuple[np.ndarray, np.ndarray] | None,
    fig_dir: Path | None,
    tolerant: bool = False,
    best: dict[str, Any] | None = None,
    control: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """metrics.json["external"]: the internal test reference and every external set's entry.

    `tolerant` (a study, whose training must not be lost): a set that fails with a CxrError is logged
    and recorded as {"data", "error"} instead of stopping.
    """
    reference = internal_reference(*internal, classes, cfg) if internal is not None else None
    entries = {}
    for ext in sets:
        try:
            entries[ext.name] = evaluate_external(model, classes, cfg, ext, compute, internal=internal, fig_dir=fig_dir,
                                                  best=best,
                                                  control=control)
        except CxrError as exc:
            if not tolerant:
                raise
            log.error("external set %s was not scored: %s", ext.name, exc)
            entries[ext.name] = {"data": str(ext.data), "error": str(exc)}
    return {"internal_test": reference, "sets": entries, "rule": WORSE_RULE}
