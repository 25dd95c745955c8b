"""The masked-region test per class, against a control (torch-free).

With the lungs blanked, a model that reads the lungs has nothing left to tell a disease from Normal.
Accuracy against the majority class's share cannot show that on a set where one class dominates (172
COVID and 10 Normal: calling everything COVID is "chance"). So the test compares rates:
- per disease class c of the set: the share of its images still called c with the lungs blanked
  (a Wilson interval);
- the control: the same blanking applied to Normal images (the internal test's, or else the set's
  own), and the share of them called c: how often a blank lung field alone is called c;
- a class is flagged when the 95% Newcombe interval (hybrid score, unpaired; Newcombe 1998, method
  10) of the difference between the two lies wholly above `BLANKED_MARGIN`: with its lungs gone, the
  class is still recognised well beyond what a blank lung field earns, so something outside the
  lungs carries it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from cxr.metrics.intervals import wilson_interval

ALPHA = 0.05
NORMAL = "Normal"
BLANKED_MARGIN = 0.10  # the difference's interval must lie above this to flag


def newcombe_difference(k1: int, n1: int, k2: int, n2: int, alpha: float = ALPHA) -> list[float] | None:
    """The interval of k1/n1 - k2/n2 from the two Wilson intervals (Newcombe's hybrid score); None
    when either group is empty."""
    a, b = wilson_interval(k1, n1, alpha), wilson_interval(k2, n2, alpha)
    if a is None or b is None:
        return None
    p1, p2 = k1 / n1, k2 / n2
    d = p1 - p2
    return [max(-1.0, d - math.hypot(p1 - a[0], b[1] - p2)), min(1.0, d + math.hypot(a[1] - p1, p2 - b[0]))]


def blanked_control(y_true: Any, blanked_pred: Any, classes: Sequence[str], source: str) -> dict[str, Any] | None:
    """{n, called {class: count}, source}: what the Normal images of `y_true` were called with their
    lungs blanked; None without a Normal image."""
    classes = [str(c) for c in classes]
    if NORMAL not in classes:
        return None
    y, pred = np.asarray(y_true), np.asarray(blanked_pred)
    rows = y == classes.index(NORMAL)
    if not rows.any():
        return None
    return {"n": int(rows.sum()), "called": {c: int(np.sum(pred[rows] == i)) for i, c in enumerate(classes)},
            "source": source}


def blanked_rates(y_true: Any, blanked_pred: Any, classes: Sequence[str], control: dict[str, Any] | None
                  ) -> dict[str, Any]:
    """Per disease class present: {n, called, rate, ci, control_rate, control_ci, difference,
    difference_ci, flag}; and `flag` (any class flagged; None without a control or a disease class)."""
    classes = [str(c) for c in classes]
    y, pred = np.asarray(y_true), np.asarray(blanked_pred)
    out: dict[str, Any] = {"per_class": {}, "margin": BLANKED_MARGIN, "flag": None}
    for c in sorted(set(y.tolist())):
        name = classes[int(c)]
        if name == NORMAL:
            continue
        rows = y == c
        n, k = int(rows.sum()), int(np.sum(pred[rows] == c))
        entry: dict[str, Any] = {"n": n, "called": k, "rate": k / n, "ci": wilson_interval(k, n, ALPHA),
                                 "control_rate": None, "control_ci": None, "difference": None,
                                 "difference_ci": None, "flag": None}
        if control and control.get("n"):
            kc, nc = int(control["called"].get(name, 0)), int(control["n"])
            ci = newcombe_difference(k, n, kc, nc)
            entry.update(control_rate=kc / nc, control_ci=wilson_interval(kc, nc, ALPHA), difference=k / n - kc / nc,
                         difference_ci=ci, flag=bool(ci is not None and ci[0] > BLANKED_MARGIN))
        out["per_class"][name] = entry
    flags = [e["flag"] for e in out["per_class"].values() if e["flag"] is not None]
    out["flag"] = any(flags) if flags else None
    return out
