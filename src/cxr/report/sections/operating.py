"""The operating-points section: sensitivity and specificity per class at two decision rules, and
the precision-recall curves with their average precision."""

from __future__ import annotations

from typing import Any

from cxr.report.blocks import Block, Heading, Table, not_available, para
from cxr.report.format import fmt, fmt_ci, plain
from cxr.report.runfiles import RunFiles
from cxr.report.sections.common import OPERATING_FIGURES, figures, test_metrics
from cxr.report.sections.findings import is_multilabel_run


def _with_ci(entry: dict[str, Any], key: str) -> str:
    value = entry.get(key)
    return f"{fmt(value)} [{fmt_ci(entry.get(key + '_ci'))}]" if value is not None else "n/a"


def _rule_rows(name: str, entry: dict[str, Any]) -> list[tuple[str, ...]]:
    rows = []
    for label, rule in (("argmax", entry.get("argmax")), ("P >= threshold (Youden, val)", entry.get("threshold_rule"))):
        if not isinstance(rule, dict):
            rows.append((name, label, "n/a", "n/a", "n/a", "n/a"))
            continue
        counts = "/".join(plain(rule.get(k)) for k in ("tp", "fn", "tn", "fp"))
        threshold = fmt(rule.get("threshold")) if rule.get("threshold") is not None else "-"
        rows.append((name, label, threshold, _with_ci(rule, "sensitivity"), _with_ci(rule, "specificity"), counts))
    return rows


def _average_precision(test: dict[str, Any]) -> list[Block]:
    per_class = test.get("per_class") if isinstance(test.get("per_class"), dict) else {}
    points = (test.get("operating_points") or {}).get("per_class") or {}
    rows = tuple(
        (name, fmt(v.get("average_precision")), fmt_ci(v.get("average_precision_ci")),
         fmt((points.get(name) or {}).get("prevalence")))
        for name, v in per_class.items() if isinstance(v, dict)
    )
    if not rows:
        return [not_available("Average precision", "no per-class metrics in metrics.json")]
    return [para("Average precision (area under the precision-recall curve, one class vs rest); a classifier"
                 " that guesses scores the prevalence."),
            Table(("Class", "Average precision", "95% CI", "Prevalence"), rows)]


def operating_points(files: RunFiles) -> list[Block]:
    """Operating points: per class, sensitivity/specificity at the argmax and at the validation-chosen
    threshold; then average precision and the PR curves."""
    if is_multilabel_run(files):  # per-finding thresholds and their sensitivity/specificity are in Test results
        return []
    blocks: list[Block] = [Heading(2, "Operating points")]
    test = test_metrics(files)
    points = (test or {}).get("operating_points")
    if not isinstance(points, dict) or not isinstance(points.get("per_class"), dict):
        blocks.append(not_available("Operating points", "metrics.json has none (a run made before them)"))
    else:
        blocks.append(para(
            "Sensitivity and specificity of each class on the test split (95% Wilson intervals), at the study's"
            " decision (the class with the highest probability) and at a one-vs-rest threshold chosen on the"
            " validation split (the highest Youden's J = sensitivity + specificity - 1), on the calibrated"
            " probabilities. Counts are TP/FN/TN/FP."))
        rows = [row for name, entry in points["per_class"].items() if isinstance(entry, dict)
                for row in _rule_rows(name, entry)]
        blocks.append(Table(("Class", "Decision", "Threshold", "Sensitivity [95% CI]", "Specificity [95% CI]",
                             "TP/FN/TN/FP"), tuple(rows)))
    blocks.append(Heading(3, "Precision and recall"))
    if test is not None:
        blocks += _average_precision(test)
    blocks.extend(figures(files, OPERATING_FIGURES))
    return blocks
