"""The test results of a multi-label run (`task: multilabel` in metrics.json): every finding is its
own binary problem, so the report shows per-finding AUROC and average precision with their
intervals, the threshold chosen on validation and the sensitivity and specificity there, and the
means over findings. There is no seed comparison: the seed is a four-class single-label study."""

from __future__ import annotations

from typing import Any

from cxr.report.blocks import Block, Bold, Code, Heading, Table, not_available, para
from cxr.report.format import fmt, plain
from cxr.report.runfiles import METRICS_SPLIT_COUNTS, RunFiles
from cxr.report.sections.common import figures, test_metrics, with_ci
from cxr.rundir import SPLITS

FINDING_FIGURES = ("roc", "pr_curves")


def is_multilabel_run(files: RunFiles) -> bool:
    """Whether metrics.json's test entry is a multi-label one."""
    test = test_metrics(files)
    return test is not None and test.get("task") == "multilabel"


def finding_counts(files: RunFiles) -> list[Block]:
    """A multi-label run's images per finding and split (metrics.json), beside the combinations table."""
    counts = (files.metrics or {}).get(METRICS_SPLIT_COUNTS)
    findings = (test_metrics(files) or {}).get("findings")
    if not isinstance(counts, dict) or not isinstance(findings, list):
        return []
    rows = []
    for name in [*findings, "No Finding"]:
        values = [(counts.get(s) or {}).get(name, 0) for s in SPLITS]
        if not all(isinstance(v, int) for v in values):
            return []
        rows.append((str(name), *map(str, values), str(sum(values))))
    return [para("Images with each finding per split (an image with several findings counts once for each;"
                 " uncertain labels not counted):"), Table(("Finding", *SPLITS, "total"), tuple(rows))]


def _finding_rows(per_label: dict[str, Any]) -> tuple[tuple[str, ...], ...]:
    rows = []
    for name, v in per_label.items():
        if not isinstance(v, dict):
            continue
        rows.append((
            name, f"{plain(v.get('positives'))} / {plain(v.get('labelled'))}", fmt(v.get("prevalence")),
            with_ci(v, "auroc", "auroc_ci"), with_ci(v, "average_precision", "average_precision_ci"),
            fmt(v.get("threshold")), with_ci(v, "sensitivity", "sensitivity_ci"),
            with_ci(v, "specificity", "specificity_ci"), fmt(v.get("f1")),
        ))
    return tuple(rows)


def findings_results(files: RunFiles) -> list[Block]:
    """Per-finding metrics with intervals, their means, and the per-finding ROC and PR curves."""
    test = test_metrics(files) or {}
    boot = test.get("bootstrap") or {}
    blocks: list[Block] = [para(
        f"Evaluated on {plain(test.get('n'))} test images, each finding as its own yes/no question over the"
        " images where it is labelled (uncertain labels left out under the ", Code("ignore"), " policy).",
    )]
    blocks.append(para(
        Bold("Mean over findings:"),
        f" AUROC {with_ci(test, 'mean_auroc', 'mean_auroc_ci')},"
        f" average precision {with_ci(test, 'mean_ap', 'mean_ap_ci')}.",
    ))
    per_label = test.get("per_label")
    blocks.append(Heading(3, "Per finding"))
    if isinstance(per_label, dict) and per_label:
        blocks.append(Table(
            ("Finding", "Positives / labelled", "Prevalence", "AUROC (95% CI)", "Average precision (95% CI)",
             "Threshold", "Sensitivity (95% CI)", "Specificity (95% CI)", "F1"),
            _finding_rows(per_label),
        ))
        blocks.append(para(
            "Thresholds maximise F1 on the validation split (0.5 where validation had no positive or no"
            " negative); predict, serve and export call a finding present at or over its threshold."
            " Sensitivity and specificity are at that threshold, with Wilson intervals."
        ))
    else:
        blocks.append(not_available("Per-finding metrics", "not in metrics.json"))
    blocks.append(para(
        f"At 0.5 on every finding, pooled over labelled entries: element accuracy {fmt(test.get('accuracy'))},"
        f" precision {fmt(test.get('precision'))}, recall {fmt(test.get('recall'))},"
        f" macro-F1 {fmt(test.get('macro_f1'))}, binary cross-entropy {fmt(test.get('loss'))}."
    ))
    if boot:
        blocks.append(para(
            f"Intervals of AUROC and average precision: {boot.get('method', 'bootstrap')},"
            f" {plain(boot.get('n'))} resamples, seed {plain(boot.get('seed'))}."
        ))
    blocks.extend(figures(files, FINDING_FIGURES))
    return blocks
