"""The model card served at GET /v1/model: what the model is, what it was trained and tested on,
what it is for, and that it is not a medical device.

Everything comes from the checkpoint (config, classes, preprocessing, the metrics row saved with it)
and, when the checkpoint sits in a run directory (`runs/<name>/checkpoints/*.pt`), from that run's
`metrics.json` (test metrics, split counts). Server file paths are never exposed: only base names.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from cxr.notices import SYNTHETIC_WARNING
from cxr.predict import Predictor
from cxr.serve.sets import card_entry as sets_card

log = logging.getLogger(__name__)

NOT_A_MEDICAL_DEVICE = (
    "This software is not a medical device. It has not been cleared, approved or certified by any "
    "regulator (such as the FDA or under the EU MDR) and must not be used to diagnose, triage, treat "
    "or otherwise make decisions about patients."
)
INTENDED_USE = (
    "Research and education: demonstrating and studying chest X-ray image classification into the "
    "classes listed. Outputs are model probabilities on the training data's distribution, not "
    "diagnoses; images from other hospitals, devices, views or populations can fail silently."
)
LIMITATIONS = [
    "Trained and tested on one dataset; performance on other sources is unknown.",
    "Probabilities may be miscalibrated; see the calibration error (ECE) when reported.",
    "Grad-CAM heatmaps show what influenced the score, not where disease is.",
    "Only frontal chest X-rays of the listed classes are expected; any other image still gets a class.",
]
_TEST_SCALARS = ("n", "loss", "accuracy", "precision", "recall", "macro_f1", "roc_auc_macro", "ece", "temperature",
                 "mean_auroc", "mean_auroc_ci", "mean_ap", "mean_ap_ci")
_PER_LABEL = ("positives", "prevalence", "auroc", "auroc_ci", "average_precision", "average_precision_ci",
              "threshold", "sensitivity", "specificity")
_RUN_METRICS = "metrics.json"


def build_model_card(predictor: Predictor) -> dict[str, Any]:
    """The model card of a predictor as a JSON-ready dict."""
    info = predictor.info
    cfg = info.config or {}
    model_cfg = cfg.get("model", {})
    run_metrics = _run_metrics(info.path)
    test = run_metrics.get("test") or info.metrics.get("test") or {}
    card: dict[str, Any] = {"warning": SYNTHETIC_WARNING} if predictor.synthetic else {}
    return {
        **card,
        "name": predictor.name,
        "classes": predictor.classes,
        **_task(predictor),
        "not_a_medical_device": NOT_A_MEDICAL_DEVICE,
        "intended_use": INTENDED_USE,
        "limitations": LIMITATIONS,
        "model": {
            "backbone": model_cfg.get("backbone"),
            "weights": _safe_weights(model_cfg.get("weights")),
            "freeze": model_cfg.get("freeze"),
            "head": model_cfg.get("head"),
            "checkpoint": Path(info.path).name if info.path else None,
            "checkpoint_sha256": info.sha256,
            "epoch": info.epoch,
        },
        "preprocessing": predictor.preprocessing.to_dict(),
        "calibration": {"temperature": predictor.temperature,
                        "method": "logits divided by a temperature fitted on the validation split (1: none)"},
        "prediction_sets": sets_card(predictor),  # conformal sets (cxr.serve.sets); None: the checkpoint has none
        "training_data": {**_training_data(cfg, run_metrics), "synthetic": predictor.synthetic},
        "training": _training(cfg),
        "validation_metrics": _validation(info.metrics),
        "test_metrics": _test_metrics(test),
        "runtime": {"device": str(predictor.device), "precision": predictor.precision,
                    "engine": predictor.engine.info() if predictor.engine is not None else {"engine": "torch"}},
    }


def _run_metrics(checkpoint_path: str | None) -> dict[str, Any]:
    """`metrics.json` of the run directory holding the checkpoint, or {} when there is none."""
    if not checkpoint_path:
        return {}
    candidate = Path(checkpoint_path).resolve().parent.parent / _RUN_METRICS
    if not candidate.is_file():
        return {}
    try:
        data = json.loads(candidate.read_text())
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s: %s", candidate, exc)
        return {}
    return data if isinstance(data, dict) else {}


def _task(predictor: Predictor) -> dict[str, Any]:
    """multiclass, or multilabel with the threshold each finding is called present at."""
    if predictor.thresholds is None:
        return {"task": "multiclass"}
    return {"task": "multilabel", "thresholds": dict(zip(predictor.classes, predictor.thresholds, strict=True))}


def _training_data(cfg: dict[str, Any], run_metrics: dict[str, Any]) -> dict[str, Any]:
    data = cfg.get("data", {})
    root = data.get("root")
    summary: dict[str, Any] = {
        "dataset": Path(str(root)).name if root else None,
        "split_ratios": data.get("ratios"),
        "split_seed": data.get("split_seed"),
        "image_size": data.get("image_size"),
    }
    for key in ("split_counts", "class_counts"):
        if key in run_metrics:
            summary[key] = run_metrics[key]
    return summary


def _training(cfg: dict[str, Any]) -> dict[str, Any]:
    train = cfg.get("train", {})
    keys = ("epochs", "batch_size", "optimizer", "lr", "schedule", "class_weights", "finetune_epochs")
    return {"run": cfg.get("name"), **{k: train.get(k) for k in keys if k in train},
            "augmentation": cfg.get("augment", {}).get("enabled")}


def _test_metrics(test: dict[str, Any]) -> dict[str, Any]:
    if not test:
        return {"available": False, "note": "no test metrics found beside this checkpoint (metrics.json)"}
    out: dict[str, Any] = {"available": True, **{k: test[k] for k in _TEST_SCALARS if k in test}}
    if "ci" in test:
        out["ci95"] = test["ci"]
    per_class = test.get("per_class") or {}
    out["per_class"] = {
        name: {k: v for k, v in row.items() if k in ("precision", "recall", "f1", "support", "roc_auc")}
        for name, row in per_class.items()
        if isinstance(row, dict)
    }
    per_label = test.get("per_label") or {}
    if per_label:
        out["per_label"] = {name: {k: v for k, v in row.items() if k in _PER_LABEL}
                            for name, row in per_label.items() if isinstance(row, dict)}
    return out


def _validation(metrics: dict[str, Any]) -> dict[str, float]:
    """The validation numbers of the metrics row saved with the checkpoint (its epoch's history row)."""
    return {k: v for k, v in metrics.items()
            if (k == "epoch" or k.startswith("val_")) and isinstance(v, int | float) and not isinstance(v, bool)}


def _safe_weights(spec: Any) -> Any:
    """Weights spec without a local file path (file:/keras-imagenet: specs keep only the base name)."""
    if isinstance(spec, str) and ":" in spec:
        kind, _, path = spec.partition(":")
        return f"{kind}:{Path(path).name}"
    return spec
