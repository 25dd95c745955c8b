"""Operating points of a study: per class, sensitivity and specificity at two decision rules.

The argmax decision is the study's; the one-vs-rest threshold per class ("call COVID when
P(COVID) >= t") is chosen on the validation split (Youden's J, `cxr.metrics.operating_points`)
and judged on the test split, both on the calibrated probabilities that predict and serve give.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cxr.metrics import apply_operating_points, operating_points, pr_curves
from cxr.study.calibrate import Scored

METHOD = "youden"


def operating_entry(val: Scored, test: Scored, classes: Sequence[str]) -> dict[str, Any]:
    """metrics["operating_points"]: per class the threshold chosen on `val` and, on `test`, the
    sensitivity/specificity (Wilson intervals) and counts at the argmax and at that threshold, and
    the average precision and prevalence of its precision-recall curve."""
    thresholds = operating_points(val.y, val.calibrated, METHOD)
    argmax = apply_operating_points(test.y, test.calibrated)
    chosen = apply_operating_points(test.y, test.calibrated, thresholds)
    curves = pr_curves(test.y, test.calibrated)
    per_class = {}
    for i, name in enumerate(classes):
        curve = curves[i]
        per_class[str(name)] = {
            "threshold": thresholds[i],
            "argmax": argmax[i],
            "threshold_rule": chosen[i],
            "average_precision": curve["average_precision"] if curve else None,
            "prevalence": curve["prevalence"] if curve else None,
        }
    return {
        "method": METHOD,
        "chosen_on": "val",
        "judged_on": "test",
        "probabilities": "calibrated",
        "per_class": per_class,
    }
