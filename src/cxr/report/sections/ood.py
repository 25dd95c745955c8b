"""The out-of-distribution section: the share of each set's images that the checks flag (the internal
test split and every external set), beside its accuracy. Reads metrics.json's `ood` entries
(`cxr.ood.share`); a foreign set whose flag rate is far above the internal test's is shifted."""

from __future__ import annotations

from typing import Any

from cxr.report.blocks import Block, Code, Heading, Table, para
from cxr.report.format import NOT_AVAILABLE, fmt, plain
from cxr.report.runfiles import RunFiles


def _row(label: str, entry: dict[str, Any], accuracy: Any) -> tuple[str, ...]:
    share = entry.get("share")
    reasons = ", ".join(f"{k} {v}" for k, v in (entry.get("reasons") or {}).items()) or "none"
    return (label, plain(entry.get("n")), plain(entry.get("flagged")),
            f"{100 * share:.1f}%" if share is not None else NOT_AVAILABLE,
            plain(entry.get("image_checks")), plain(entry.get("detector")), reasons, fmt(accuracy))


def ood(files: RunFiles) -> list[Block]:
    """Inputs out of distribution: the share flagged on the test split and on each external set."""
    metrics = files.metrics or {}
    test = metrics.get("test") or {}
    rows = []
    if isinstance(test.get("ood"), dict):
        rows.append(_row("Internal test", test["ood"], test.get("accuracy")))
    for name, entry in ((metrics.get("external") or {}).get("sets") or {}).items():
        if isinstance(entry, dict) and isinstance(entry.get("ood"), dict):
            rows.append(_row(f"External: {name}", entry["ood"], (entry.get("metrics") or {}).get("accuracy")))
    if not rows:
        return []
    method = next((r for r in [test.get("ood")] if isinstance(r, dict)), {}).get("method")
    return [
        Heading(2, "Inputs out of distribution"),
        para("Images each set's checks answer ", Code("in_distribution: false"), " for: the image checks (colour, "
             "near-constant, few grey levels, aspect ratio) and the feature detector (",
             plain(method) if method else "none stored", ", fitted on the training split, its threshold accepting "
             "95% of validation images). About 5% of the internal test is expected; a foreign set flagged far more "
             "often is shifted away from the training images, and its accuracy is the less to be trusted."),
        Table(("Set", "n", "Flagged", "Share", "Image checks", "Detector", "Reasons (image checks)", "Accuracy"),
              tuple(rows)),
    ]
