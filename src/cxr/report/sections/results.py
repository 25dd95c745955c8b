"""The test-results section: this run's metrics beside the seed's published ones (never for
synthetic data, whose numbers mean nothing next to results on X-rays)."""

from __future__ import annotations

from typing import Any

from cxr.report.blocks import Block, Bold, Code, Heading, Para, Pre, Table, not_available, para
from cxr.report.format import fmt, fmt_ci, plain
from cxr.report.runfiles import RunFiles
from cxr.report.sections.common import TEST_FIGURES, class_order, figures, synthetic_run, test_metrics
from cxr.report.sections.findings import findings_results, is_multilabel_run

# The seed's published test results (SEED_README.md, "Testing Results"), in its column order.
SEED_RESULTS = {"loss": 0.207, "accuracy": 0.928, "precision": 0.933, "recall": 0.926}


def _comparison(test: dict[str, Any]) -> Para:
    parts = []
    for key, seed in SEED_RESULTS.items():
        value = test.get(key)
        delta = f"{float(value) - seed:+.3f}" if isinstance(value, int | float) else "n/a"
        parts.append(f"{key} {fmt(value)} vs {seed:.3f} ({delta})")
    return para(
        Bold("Against the seed's published test results:"),
        " ",
        "; ".join(parts),
        ". The seed trained on the Kaggle COVID-19 Radiography Database with its own split, so a"
        " different dataset, split or backbone makes this an indicative comparison, not a controlled one.",
    )


def _no_comparison() -> Para:
    return para(Bold("No comparison with the seed:"), " these images are synthetic, so their numbers cannot"
                " be set beside the seed's results on the Kaggle COVID-19 Radiography Database.")


def _metric_tables(test: dict[str, Any], synthetic: bool) -> list[Block]:
    ci = test.get("ci") or {}
    boot = test.get("bootstrap") or {}
    blocks: list[Block] = [para(
        f"Evaluated on {plain(test.get('n'))} test images. Precision and recall use the seed's Keras"
        " semantics (one-hot targets vs probabilities > 0.5, pooled over all classes)."
    )]
    blocks.append(Heading(3, "The seed's table"))
    blocks.append(Table(("Loss", "Accuracy", "Precision", "Recall"), (tuple(fmt(test.get(k)) for k in SEED_RESULTS),)))
    blocks.append(Heading(3, "All metrics"))
    rows = (
        ("Loss (cross-entropy)", fmt(test.get("loss")), "n/a", fmt(SEED_RESULTS["loss"])),
        ("Accuracy", fmt(test.get("accuracy")), fmt_ci(ci.get("accuracy")), fmt(SEED_RESULTS["accuracy"])),
        ("Precision (Keras)", fmt(test.get("precision")), fmt_ci(ci.get("precision")), fmt(SEED_RESULTS["precision"])),
        ("Recall (Keras)", fmt(test.get("recall")), fmt_ci(ci.get("recall")), fmt(SEED_RESULTS["recall"])),
        ("Macro-F1", fmt(test.get("macro_f1")), fmt_ci(ci.get("macro_f1")), "n/a"),
        ("ROC-AUC (macro, one vs rest)", fmt(test.get("roc_auc_macro")), fmt_ci(ci.get("roc_auc_macro")), "n/a"),
        (f"ECE ({plain(test.get('ece_bins', 15))} bins)", fmt(test.get("ece")), fmt_ci(ci.get("ece")), "n/a"),
    )
    if synthetic:
        blocks.append(Table(("Metric", "This run", "95% CI"), tuple(row[:3] for row in rows)))
    else:
        blocks.append(Table(("Metric", "This run", "95% CI", "Seed (published)"), rows))
    if boot:
        blocks.append(para(
            f"Confidence intervals: {boot.get('method', 'percentile')} bootstrap over test images,"
            f" {plain(boot.get('n'))} resamples, seed {plain(boot.get('seed'))}."
        ))
    blocks.append(_no_comparison() if synthetic else _comparison(test))
    return blocks


def _per_class(test: dict[str, Any]) -> list[Block]:
    blocks: list[Block] = [Heading(3, "Classification report")]
    report = test.get("classification_report")
    if isinstance(report, str):
        blocks.append(para("scikit-learn's classification report, shown here once, as text (the seed's image of"
                           " it is ", Code("figures/classification_report.png"), ")."))
        blocks.append(Pre(report))
    else:
        blocks.append(not_available("Classification report", "not in metrics.json"))
    blocks.append(Heading(3, "Per-class metrics"))
    per_class = test.get("per_class")
    if isinstance(per_class, dict) and per_class:
        rows = tuple(
            (name, fmt(v.get("precision")), fmt(v.get("recall")), fmt(v.get("f1")),
             plain(v.get("support")), fmt(v.get("roc_auc")))
            for name, v in per_class.items()
            if isinstance(v, dict)
        )
        blocks.append(Table(("Class", "Precision", "Recall", "F1", "Support", "ROC-AUC"), rows))
    else:
        blocks.append(not_available("Per-class metrics", "not in metrics.json"))
    return blocks


def _confusion(test: dict[str, Any], classes: list[str]) -> list[Block]:
    blocks: list[Block] = [Heading(3, "Confusion matrix")]
    confusion = test.get("confusion")
    per_class = test.get("per_class")
    names = list(per_class) if isinstance(per_class, dict) and per_class else classes
    if isinstance(confusion, list) and len(confusion) == len(names):
        blocks.append(para("Counts; rows are the true class, columns the predicted class."))
        rows = tuple((name, *(plain(c) for c in row)) for name, row in zip(names, confusion, strict=True))
        blocks.append(Table(("True \\ Predicted", *names), rows))
    else:
        blocks.append(not_available("Confusion matrix counts", "not in metrics.json"))
    return blocks


def results(files: RunFiles) -> list[Block]:
    """Test results: the seed's table, every metric with its CI, per-class metrics, confusion counts
    (a multi-label run: per-finding metrics, `cxr.report.sections.findings`)."""
    blocks: list[Block] = [Heading(2, "Test results")]
    test = test_metrics(files)
    if is_multilabel_run(files):
        return blocks + findings_results(files)
    if test is None:
        metrics_path = files.run.metrics
        why = files.reason(metrics_path, f"{metrics_path.name} has no 'test' entry")
        blocks.append(not_available("Test metrics", why))
    else:
        blocks += _metric_tables(test, synthetic_run(files))
        blocks += _per_class(test)
        blocks += _confusion(test, class_order(files))
    blocks.extend(figures(files, TEST_FIGURES))
    return blocks
