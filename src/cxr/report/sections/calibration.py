"""The calibration section: the temperature fitted on validation, and the ECE before and after."""

from __future__ import annotations

from typing import Any

from cxr.report.blocks import Block, Bold, Code, Heading, Table, not_available, para
from cxr.report.format import fmt, fmt_ci, plain
from cxr.report.runfiles import RunFiles
from cxr.report.sections.common import CALIBRATION_FIGURES, figures, test_metrics
from cxr.report.sections.findings import is_multilabel_run


def _side(entry: Any, key: str) -> Any:
    return entry.get(key) if isinstance(entry, dict) else None


def calibration(files: RunFiles) -> list[Block]:
    """Calibration: T and how it was fitted, ECE (95% CI) and NLL before and after, the reliability figure."""
    blocks: list[Block] = [Heading(2, "Calibration")]
    test = test_metrics(files)
    if is_multilabel_run(files):
        blocks.append(para("Not fitted for a multi-label run: temperature scaling rescales one softmax, and each"
                           " finding here has its own sigmoid, called at its own threshold (Test results)."))
        return blocks
    entry = (test or {}).get("calibration")
    if not isinstance(entry, dict):
        blocks.append(not_available("Calibration", "metrics.json has no test calibration (a run made before it)"))
        return blocks
    temperature = entry.get("temperature", (test or {}).get("temperature"))
    how = entry.get("how") or "fitted on the validation split"
    blocks.append(para(
        Bold(f"Temperature scaling, T = {fmt(temperature)}"), f" ({plain(how)}). The logits are divided by T,"
        " which keeps every decision (accuracy and confusion matrix do not change) and makes the probabilities"
        " match how often the model is right. ", Code("best.pt"), " stores T; evaluate, predict, explain, serve"
        " and the ONNX/TorchScript exports apply it, and the test metrics above are of the calibrated"
        " probabilities. The test split, never used for the fit, judges it:"))
    bins = plain(entry.get("bins"))
    rows = []
    for label, side in (("Before calibration (T = 1)", entry.get("before")), ("After calibration", entry.get("after"))):
        rows.append((label, fmt(_side(side, "ece")), fmt_ci(_side(side, "ece_ci")), fmt(_side(side, "nll"), 4)))
    blocks.append(Table(("Test split", f"ECE ({bins} bins)", "95% CI", "NLL"), tuple(rows)))
    before, after = _side(entry.get("before"), "ece"), _side(entry.get("after"), "ece")
    if isinstance(before, int | float) and isinstance(after, int | float):
        verdict = "lowered" if after < before else "did not lower"
        blocks.append(para(f"Calibration {verdict} the test ECE ({fmt(before)} -> {fmt(after)})."))
    blocks.extend(figures(files, CALIBRATION_FIGURES))
    return blocks
