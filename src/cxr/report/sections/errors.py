"""The error-analysis section: the most confident mistakes per (true, predicted) pair, with Grad-CAM."""

from __future__ import annotations

from cxr.report.blocks import Block, Gallery, Heading, Image, Table, not_available, para
from cxr.report.format import fmt, plain
from cxr.report.runfiles import RunFiles
from cxr.report.sections.findings import is_multilabel_run

THUMBNAIL_WIDTH = 300  # pixels per figure in the gallery


def errors(files: RunFiles) -> list[Block]:
    """Error analysis: a table of the shown mistakes and a gallery of their X-ray + Grad-CAM figures."""
    if is_multilabel_run(files):  # a mistake is per finding there; the gallery shows single-label mistakes
        return []
    blocks: list[Block] = [Heading(2, "Error analysis")]
    entry = (files.metrics or {}).get("errors")
    if not isinstance(entry, dict) or not isinstance(entry.get("items"), list):
        blocks.append(not_available("Error analysis", "metrics.json lists no test mistakes (a run made before it)"))
        return blocks
    items = [i for i in entry["items"] if isinstance(i, dict)]
    mistakes, n = entry.get("mistakes"), entry.get("n")
    if not items:
        blocks.append(para(f"{plain(mistakes)} of {plain(n)} test images were misclassified: nothing to show."
                           if mistakes else "No test image was misclassified."))
        return blocks
    blocks.append(para(
        f"The most confident mistakes on the test split ({len(items)} shown of {plain(mistakes)} mistakes in"
        f" {plain(n)} images): up to {plain(entry.get('per_pair'))} per (true, predicted) pair, ranked by the"
        " probability the model gave the wrong class. Each figure shows the X-ray and the Grad-CAM of the"
        " predicted class: where the model looked when it was wrong (not where disease is)."))
    rows = tuple((plain(i.get("true")), plain(i.get("predicted")), fmt(i.get("probability")),
                  fmt(i.get("true_probability")), plain(i.get("path"))) for i in items)
    blocks.append(Table(("True", "Predicted", "P(predicted)", "P(true)", "Image"), rows))
    images = []
    for item in items:
        path = files.run.root / str(item.get("figure", ""))
        if item.get("figure") and path.is_file():
            caption = f"{plain(item.get('true'))} predicted as {plain(item.get('predicted'))} ({fmt(item.get('probability'))})"
            images.append(Image(path, files.rel(path), caption))
    if images:
        blocks.append(Gallery(tuple(images), width=THUMBNAIL_WIDTH))
    if len(images) < len(items):
        blocks.append(not_available("Some error figures", f"{len(items) - len(images)} missing from figures/errors/"))
    return blocks
