"""The external-validation section: the internal test beside each external set (the domain-shift
table), the sentence for every figure that is worse beyond its interval, the label map used and the
per-class numbers of each set. Reads metrics.json["external"] (`cxr.study.external`)."""

from __future__ import annotations

from typing import Any

from cxr.report.blocks import Block, Bold, Code, Heading, Para, Table, para
from cxr.report.format import NOT_AVAILABLE, fmt, plain
from cxr.report.runfiles import RunFiles
from cxr.report.sections.common import with_ci

SHIFT_COLUMNS = (  # metrics.json key, table header
    ("accuracy", "Accuracy"),
    ("macro_recall", "Macro recall"),
    ("macro_f1", "Macro-F1"),
    ("roc_auc_macro", "ROC-AUC"),
    ("abnormal_auroc", "Abnormal vs Normal AUROC"),
    ("called_normal", "Called Normal"),
    ("ece", "ECE"),
)
LABELS = dict(SHIFT_COLUMNS)


def _row(label: str, metrics: dict[str, Any]) -> tuple[str, ...]:
    shown = (metrics.get("classes_present") or []) + [f"{c} (abnormal)" for c in metrics.get("foreign_present") or []]
    classes = ", ".join(shown) or NOT_AVAILABLE
    return (label, plain(metrics.get("n")), classes, *(with_ci(metrics, key) for key, _ in SHIFT_COLUMNS))


def _shift_table(section: dict[str, Any]) -> Table:
    rows = []
    internal = section.get("internal_test")
    all_classes = (internal or {}).get("classes_present")
    if isinstance(internal, dict):
        rows.append(_row("Internal test", internal))
    for name, entry in (section.get("sets") or {}).items():
        if entry.get("error"):
            continue
        same = entry.get("internal_same_classes")
        if isinstance(same, dict) and same.get("classes_present") != all_classes:
            rows.append(_row(f"Internal test, {name}'s classes", same))
        rows.append(_row(f"External: {name}", entry.get("metrics") or {}))
    return Table(("Set", "n", "Classes", *(header for _, header in SHIFT_COLUMNS)), tuple(rows))


def _worse_sentences(name: str, entry: dict[str, Any]) -> Para:
    if entry.get("error"):
        return Para((f"External set {name} ({plain(entry.get('data'))}) could not be scored: {entry['error']}",),
                    missing=True)
    worse = entry.get("worse_than_internal") or []
    same, ext = entry.get("internal_same_classes"), entry.get("metrics") or {}
    if not isinstance(same, dict):
        return para(f"{name}: no internal test predictions to compare with.")
    if not worse:
        return para(f"{name}: no figure lies wholly on the worse side of the internal test's 95% interval.")
    parts = [f"{LABELS.get(key, key)} {with_ci(ext, key)} against {with_ci(same, key)}" for key in worse]
    return para(Bold(f"{name} is worse than the internal test:"), " ", "; ".join(parts),
                ". Each external interval lies wholly below the internal one (above it for ECE): the model does "
                "measurably worse on these images than the internal split suggests.")


def _label_map(entry: dict[str, Any]) -> Table:
    rows = []
    for name, target in (entry.get("label_map") or {}).items():
        rows.append((name, plain(target.get("class")) if target.get("class") else "ignored", plain(target.get("how"))))
    return Table(("Their class", "Our class", "How"), tuple(rows))


def _per_class(entry: dict[str, Any]) -> list[Block]:
    metrics = entry.get("metrics") or {}
    rows = tuple(
        (name, plain(v.get("support")), plain(v.get("predicted")), with_ci(v, "recall", "recall_ci"),
         with_ci(v, "precision", "precision_ci"), fmt(v.get("roc_auc")))
        for name, v in (metrics.get("per_class") or {}).items()
    )
    blocks: list[Block] = [Table(("Class", "Images", "Predicted", "Recall (95% CI)", "Precision (95% CI)", "ROC-AUC"),
                                 rows)]
    foreign = metrics.get("foreign") or {}
    if foreign:
        blocks.append(para("Classes of this set that are abnormal but none of the model's (label map 'abnormal'): "
                           "they count against Normal in the abnormal vs Normal AUROC."))
        blocks.append(Table(("Class", "Images", "Called abnormal (95% CI)", "Predicted as"), tuple(
            (name, plain(v.get("n")), with_ci(v, "rate", "ci"),
             ", ".join(f"{k} {n}" for k, n in (v.get("predicted") or {}).items() if n))
            for name, v in foreign.items())))
    absent = {k: v for k, v in (metrics.get("predicted_absent") or {}).items() if v}
    if absent:
        blocks.append(para("Predicted as a class this set does not hold: ",
                           ", ".join(f"{k} {v}" for k, v in absent.items()), "."))
    return blocks


def _set_blocks(name: str, entry: dict[str, Any]) -> list[Block]:
    blocks: list[Block] = [Heading(3, f"External set {name}"), para(
        Code(plain(entry.get("data"))), f" ({plain(entry.get('layout'))} layout): {plain(entry.get('n'))} images "
        f"scored, {len(entry.get('skipped') or [])} unreadable skipped, classes {', '.join(entry.get('classes_present') or [])}.")]
    blocks += [para("Class names mapped onto the model's (printed in the log too):"), _label_map(entry)]
    blocks += _per_class(entry)
    return blocks


def external(files: RunFiles) -> list[Block]:
    """External validation: the domain-shift table, worse-than-internal sentences, each set's details."""
    blocks: list[Block] = [Heading(2, "External validation (domain shift)")]
    section = (files.metrics or {}).get("external")
    if not isinstance(section, dict) or not section.get("sets"):
        blocks.append(para(
            "No external set was scored. A split of one database overstates what a model does on other "
            "hospitals' images; score one with ", Code("cxr evaluate RUN_DIR --external NAME=PATH"), "."))
        return blocks
    blocks.append(para(
        "The internal test split beside each external set, on the classes each holds: accuracy and per-class "
        "proportions with 95% Wilson intervals, the other figures with 95% stratified bootstrap intervals. Macro "
        "recall and macro-F1 average the classes present; ROC-AUC is one-vs-rest over the classes present that "
        "have positives and negatives; abnormal vs Normal AUROC scores 1 - p(Normal) (a label map's foreign "
        "'abnormal' classes count as abnormal); called Normal is the share of true Normal images predicted Normal. "
        "n/a: cannot be computed on that set."))
    blocks.append(_shift_table(section))
    blocks += [_worse_sentences(name, entry) for name, entry in section["sets"].items()]
    rule = section.get("rule")
    if rule:
        blocks.append(para(f"Rule: {rule}."))
    for name, entry in section["sets"].items():
        if not entry.get("error"):
            blocks += _set_blocks(name, entry)
    return blocks
