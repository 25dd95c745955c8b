"""The headline result on the report's first screen: the test figures a reader came for, one
paragraph under the banners, before the settings and dataset tables (the full tables follow in
"Test results")."""

from __future__ import annotations

from cxr.report.blocks import Block, Bold, para
from cxr.report.format import plain
from cxr.report.runfiles import RunFiles
from cxr.report.sections.common import test_metrics, with_ci


def headline(files: RunFiles) -> list[Block]:
    """'Test result (n = 48 images): accuracy 0.833 (0.71 – 0.91), macro-F1 ...' or a multi-label run's
    mean AUROC and AP; nothing when the run has no test metrics."""
    test = test_metrics(files)
    if test is None:
        return []
    if test.get("task") == "multilabel" or "mean_auroc" in test:
        figures = [f"mean AUROC {with_ci(test, 'mean_auroc', 'mean_auroc_ci')}",
                   f"mean average precision {with_ci(test, 'mean_ap', 'mean_ap_ci')}"]
    else:
        figures = [f"accuracy {with_ci(test, 'accuracy')}", f"macro-F1 {with_ci(test, 'macro_f1')}",
                   f"ROC-AUC {with_ci(test, 'roc_auc_macro')}"]
    return [para(Bold(f"Test result (n = {plain(test.get('n'))} images):"), " ", ", ".join(figures),
                 " (95% intervals; details in Test results below).")]
