"""The shortcut audit's numbers and its flag rule, from plain arrays (torch-free).

Two kinds of evidence that a model does not classify by the lungs (DeGrave et al. 2021):
- attention: the share of each image's Grad-CAM energy that lies inside its lung mask, against the
  share an evenly spread map would put there (the mask's area fraction);
- the masked-region test: accuracy on the same images with the lungs blanked, and with everything
  outside the lungs blanked; the flag compares each disease class's rate of being called itself with
  the lungs blanked against a control, blanked Normal images (`cxr.metrics.blanked`).

`FLAG_RULE` is the rule, stated once (the report and README quote it). Attention is correlational
(Grad-CAM of a model can be unfaithful, e.g. on a frozen random backbone); the masked-region test is
causal. Either one firing flags the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cxr.metrics.blanked import BLANKED_MARGIN, blanked_control, blanked_rates
from cxr.metrics.intervals import stratified_bootstrap, wilson_interval

ALPHA = 0.05
ATTENTION_MARGIN = 0.05  # in-lung share this far below the even map's share (and its interval below 0) flags
FLAG_RULE = (
    f"Flagged when (a) the mean share of Grad-CAM energy inside the lung masks is at least {ATTENTION_MARGIN:.2f} "
    "below the mean lung-area fraction (the share an evenly spread heatmap would give) and the 95% bootstrap "
    "interval of that difference lies below 0, or (b) with the lungs blanked, a disease class is still called "
    "that class at a rate well above the control's, the share of Normal images (the internal test's) called that "
    "class with their lungs blanked the same way: the 95% Newcombe interval of the difference of the two rates "
    f"lies wholly above {BLANKED_MARGIN:.2f}. Either signal flags."
)


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if values.size else None


def _group(share: np.ndarray, area: np.ndarray) -> dict[str, Any]:
    return {"n": int(share.size), "mean_share": _mean(share), "mean_area": _mean(area),
            "difference": _mean(share - area)}


def attention_summary(
    share: Any, area: Any, y_true: Any, y_pred: Any, classes: Sequence[str], *, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """In-lung Grad-CAM share vs the even map's share: overall (with a bootstrap interval of the mean
    difference, resampled within true classes), per true class and for correct vs wrong predictions.

    Images whose share is NaN (an empty mask or an all-zero heatmap) are counted as `undefined` and
    left out. `flag` is criterion (a) of FLAG_RULE; None when no image has a share.
    """
    share, area = np.asarray(share, dtype=np.float64), np.asarray(area, dtype=np.float64)
    y, pred = np.asarray(y_true), np.asarray(y_pred)
    ok = np.isfinite(share)
    s, a, yy, pp = share[ok], area[ok], y[ok], pred[ok]
    out: dict[str, Any] = {**_group(s, a), "undefined": int(np.sum(~ok)), "difference_ci": None,
                           "lift": float(s.mean() / a.mean()) if s.size and a.mean() > 0 else None}
    if s.size >= 2 and n_boot:
        d = s - a
        boot = stratified_bootstrap(yy, lambda w: {"d": (w @ d) / w.sum(axis=1)}, n_boot, seed, ALPHA)
        out["difference_ci"] = boot["d"].ci
    out["per_class"] = {str(classes[c]): _group(s[yy == c], a[yy == c]) for c in sorted(set(yy.tolist()))}
    out["by_prediction"] = {"correct": _group(s[pp == yy], a[pp == yy]), "wrong": _group(s[pp != yy], a[pp != yy])}
    if not s.size:
        out["flag"] = None
    else:
        ci = out["difference_ci"]
        out["flag"] = bool(out["difference"] <= -ATTENTION_MARGIN and ci is not None and ci[1] < 0)
    return out


def chance_level(y_true: Any) -> float:
    """The accuracy of always answering the most common class."""
    _, counts = np.unique(np.asarray(y_true), return_counts=True)
    return float(counts.max() / counts.sum())


def _accuracy(y: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    hits = int(np.sum(pred == y))
    return {"n": int(y.size), "accuracy": hits / y.size if y.size else None,
            "ci": wilson_interval(hits, int(y.size), ALPHA)}


def occlusion_summary(y_true: Any, unmasked: Any, occluded: dict[str, Any], fill: str,
                      classes: Sequence[str] | None = None, control: dict[str, Any] | None = None) -> dict[str, Any]:
    """Accuracy with nothing, the lungs ("lungs") or everything outside them ("outside") blanked, on the
    same images (predicted classes per mode), with Wilson intervals and the chance level; with
    `classes` and a "lungs" result, the per-class rates against the control (`cxr.metrics.blanked`):
    `control` (the internal test's blanked Normal images), else this set's own Normal images.

    `flag` is criterion (b) of FLAG_RULE (None without a "lungs" result or a control); `informative` is
    False when the model is no better than chance with the lungs visible (accuracy says little then).
    """
    y = np.asarray(y_true)
    base = _accuracy(y, np.asarray(unmasked))
    out: dict[str, Any] = {"fill": fill, "chance": chance_level(y), "none": base}
    for mode, pred in occluded.items():
        entry = _accuracy(y, np.asarray(pred))
        entry["drop"] = base["accuracy"] - entry["accuracy"]
        out[mode] = entry
    out["informative"] = bool(base["ci"] is not None and base["ci"][0] > out["chance"])
    out["flag"] = None
    if classes is not None and "lungs" in occluded:
        own = blanked_control(y, occluded["lungs"], classes, "this set's Normal images")
        out["own_control"] = own
        out["control"] = control or own
        out["blanked"] = blanked_rates(y, occluded["lungs"], classes, out["control"])
        out["flag"] = out["blanked"]["flag"]
    return out


def shortcut_verdict(attention: dict[str, Any] | None, occlusion: dict[str, Any] | None) -> dict[str, Any]:
    """{flagged, attention_flag, occlusion_flag, rule}: flagged when either criterion of FLAG_RULE fires;
    None when neither could be computed."""
    signals = [(attention or {}).get("flag"), (occlusion or {}).get("flag")]
    known = [s for s in signals if s is not None]
    return {"flagged": any(known) if known else None, "attention_flag": signals[0], "occlusion_flag": signals[1],
            "rule": FLAG_RULE}
