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

`cxr.evaluate` re-exports the names most callers use.
"""
