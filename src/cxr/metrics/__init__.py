"""Metrics of a classifier from plain arrays (labels (N,), probabilities (N, C)); never imports torch.

Modules:
    checks          input validation shared by every metric (CxrError on bad input)
    classification  point metrics: loss, accuracy, Keras precision/recall, F1, AUC, ECE
    weighted        the same metrics of many resampled datasets at once (bootstrap weights)
    intervals       Wilson intervals, stratified BCa bootstrap, the seed's percentile bootstrap
    summary         `classification_metrics`, the dict that becomes metrics.json["test"]
    calibration     temperature scaling and a before/after reliability summary
    operating       per-class operating points (Youden's J), sensitivity/specificity, PR curves
    compare         paired comparison of two runs on the same rows (McNemar, paired bootstrap)
    predictions     reading and aligning predictions.csv files

The package re-exports the names most callers use (`from cxr.metrics import classification_metrics`).
"""

from __future__ import annotations

from cxr.metrics.calibration import (
    apply_temperature,
    calibration_report,
    fit_temperature,
    temperature_interval,
)
from cxr.metrics.classification import (
    EPSILON,
    average_precision_per_class,
    batch_accuracy,
    batch_macro_f1,
    batched_confusion,
    calibration_bins,
    cross_entropy,
    epoch_metrics,
    expected_calibration_error,
    keras_precision_recall,
    macro_f1,
    roc_auc_per_class,
)
from cxr.metrics.compare import compare_predictions, mcnemar_exact, paired_accuracy_interval
from cxr.metrics.intervals import (
    BOOTSTRAP_CHUNK,
    BatchMetric,
    BootstrapInterval,
    bca_interval,
    bootstrap_ci,
    stratified_bootstrap,
    wilson_interval,
)
from cxr.metrics.operating import apply_operating_points, operating_points, pr_curves
from cxr.metrics.predictions import Predictions, load_paired_predictions, read_predictions_csv
from cxr.metrics.summary import classification_metrics

__all__ = [
    "BOOTSTRAP_CHUNK",
    "EPSILON",
    "BatchMetric",
    "BootstrapInterval",
    "Predictions",
    "apply_operating_points",
    "apply_temperature",
    "average_precision_per_class",
    "batch_accuracy",
    "batch_macro_f1",
    "batched_confusion",
    "bca_interval",
    "bootstrap_ci",
    "calibration_bins",
    "calibration_report",
    "classification_metrics",
    "compare_predictions",
    "cross_entropy",
    "epoch_metrics",
    "expected_calibration_error",
    "fit_temperature",
    "keras_precision_recall",
    "load_paired_predictions",
    "macro_f1",
    "mcnemar_exact",
    "operating_points",
    "paired_accuracy_interval",
    "pr_curves",
    "read_predictions_csv",
    "roc_auc_per_class",
    "stratified_bootstrap",
    "temperature_interval",
    "wilson_interval",
]
