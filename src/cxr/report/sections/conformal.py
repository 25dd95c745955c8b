"""The prediction-sets section: split conformal sets judged on the test split and on each external set
(coverage with a Wilson interval, per-class coverage, set sizes, singletons), every stored variant on
the test split, and a coverage drop on a foreign set called out as a sign of shift. Reads
metrics.json["test"]["conformal"] and ["external"]["sets"][NAME]["conformal"] (`cxr.study.conformal`)."""

from __future__ import annotations

from typing import Any

from cxr.report.blocks import Block, Bold, Code, Heading, Table, not_available, para
from cxr.report.format import fmt, fmt_ci, plain
from cxr.report.runfiles import RunFiles
from cxr.report.sections.common import test_metrics
from cxr.report.sections.findings import is_multilabel_run

METHOD_NAMES = {"lac": "LAC (1 - p of the class)", "aps": "APS (adaptive: probability mass down to the class)",
                "raps": "RAPS (APS with a penalty on unlikely ranks)"}


def _entries(files: RunFiles) -> dict[str, dict[str, Any]]:
    """Set label -> conformal entry: the internal test, then every external set that has one."""
    out = {}
    test = (test_metrics(files) or {}).get("conformal")
    if isinstance(test, dict):
        out["Internal test"] = test
    external = (files.metrics or {}).get("external")
    for name, entry in ((external or {}).get("sets") or {}).items() if isinstance(external, dict) else ():
        if isinstance(entry, dict) and isinstance(entry.get("conformal"), dict):
            out[f"{name} (external)"] = entry["conformal"]
    return out


def _coverage(entry: dict[str, Any]) -> str:
    return f"{fmt(entry.get('coverage'))} ({fmt_ci(entry.get('coverage_ci'))})"


def _sizes(entry: dict[str, Any]) -> str:
    counts = entry.get("size_counts") or {}
    total = sum(v for v in counts.values() if isinstance(v, int)) or None
    return ", ".join(f"{k}: {fmt(v / total, 2) if total else 'n/a'}" for k, v in counts.items())


def _overview(entries: dict[str, dict[str, Any]]) -> Table:
    rows = tuple((label, plain(e.get("n")), _coverage(e), fmt(e.get("mean_size")), fmt(e.get("singletons")),
                  fmt(e.get("empty")), _sizes(e)) for label, e in entries.items())
    return Table(("Set", "n", "Coverage (95% CI)", "Mean set size", "Singletons", "Empty sets",
                  "Share of sets by size"), rows)


def _per_class(entries: dict[str, dict[str, Any]]) -> Table:
    classes = list(dict.fromkeys(c for e in entries.values() for c in (e.get("per_class") or {})))
    rows = []
    for name in classes:
        cells = []
        for e in entries.values():
            v = (e.get("per_class") or {}).get(name)
            cells.append(f"{_coverage(v)}, n={plain(v.get('n'))}" if isinstance(v, dict) else "absent")
        rows.append((name, *cells))
    return Table(("Class", *(f"{label}: coverage (95% CI)" for label in entries)), tuple(rows))


def _variants(test: dict[str, Any]) -> Table:
    rows = tuple((name, _coverage(v), fmt(v.get("mean_size")), fmt(v.get("singletons")),
                  fmt(v.get("worst_class_coverage")))
                 for name, v in (test.get("variants") or {}).items() if isinstance(v, dict))
    return Table(("Score (+mondrian: per class)", "Coverage (95% CI)", "Mean set size", "Singletons",
                  "Worst class coverage"), rows)


def _shift(label: str, entry: dict[str, Any], internal: bool) -> Block:
    nominal = fmt(entry.get("nominal"), 2)
    if not entry.get("below_nominal"):
        return para(f"{label}: the coverage interval reaches the nominal {nominal}.")
    head = Bold(f"{label}: coverage below the nominal {nominal}.")
    ci = f" Its 95% interval {fmt_ci(entry.get('coverage_ci'))} lies wholly below it."
    if internal:
        return para(head, ci, " The test split is drawn like the validation split, so by chance alone this happens "
                    "about once in 40 runs. The validation split also chose the best epoch, which makes its scores "
                    "somewhat better than new images' (compare its accuracy with the test's), and a group or source "
                    "in one split only would show the same way.")
    return para(head, ci, " On images exchangeable with the validation split that happens about once in 40 sets; "
                "here it is a sign of distribution shift: these images differ from the ones the sets were calibrated "
                "on, and the sets' guarantee does not hold for them.")


def conformal(files: RunFiles) -> list[Block]:
    """Prediction sets: coverage, set sizes and singletons per set, per-class coverage, every variant."""
    blocks: list[Block] = [Heading(2, "Prediction sets (conformal)")]
    if is_multilabel_run(files):
        blocks.append(para("Not made for a multi-label run: a prediction set over classes presumes one true class per "
                           "image, and an image here holds any number of findings (each with its own threshold)."))
        return blocks
    entries = _entries(files)
    test = entries.get("Internal test")
    if test is None:
        blocks.append(not_available("Prediction sets", "metrics.json has no test prediction sets (a run made "
                                    "before them, or a checkpoint without a conformal calibration)"))
        return blocks
    method = plain(test.get("method"))
    blocks.append(para(
        Bold(f"Split conformal prediction, {METHOD_NAMES.get(method, method)}"),
        " with per-class (Mondrian) calibration" if test.get("mondrian") else "",
        f", nominal coverage {fmt(test.get('nominal'), 2)}, calibrated on the {plain(test.get('calibration_images'))}"
        " validation images after temperature scaling. Each image gets the set of classes whose score is within the "
        "threshold; when new images are exchangeable with the validation split, the set holds the true class for at "
        "least the nominal share of them (non-randomised scores: at or slightly above it). ", Code("cxr predict "
        "--coverage 0.9"), " prints the sets; best.pt keeps the calibration scores, so any coverage is served "
        "without refitting. Coverage with a 95% Wilson interval:"))
    blocks.append(_overview(entries))
    blocks += [_shift(label, e, label == "Internal test") for label, e in entries.items()]
    blocks += [para("Coverage per true class (Mondrian calibration holds it per class; the marginal one only "
                    "overall):"), _per_class(entries)]
    if test.get("variants"):
        blocks += [para("Every stored score on the test split at the same nominal coverage:"), _variants(test)]
    return blocks
