"""cxr: chest X-ray classification, from a folder of images to a trained, reported, servable model.

The Python API, for notebooks and scripts (the command line `cxr` calls the same functions):

    import cxr
    cfg = cxr.load_config("configs/seed.yaml", {"train.epochs": 3})
    result = cxr.run_study(cfg, "data/", "runs/notebook")   # -> cxr.StudyResult (metrics, history, paths)
    result.test["accuracy"], result.report
    metrics = cxr.evaluate(result.checkpoint, "data/", "test")
    predictor = cxr.Predictor.from_checkpoint(result.checkpoint)
    predictor.predict(["a.png", pil_image, numpy_array])

Names are imported on first use, so `import cxr` stays cheap (no torch until a function needs it).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "load_config": ("cxr.config", "load_config"),
    "RunConfig": ("cxr.config", "RunConfig"),
    "run_study": ("cxr.study", "run_study"),
    "train": ("cxr.study", "train"),
    "evaluate": ("cxr.study", "evaluate_checkpoint"),
    "run_demo": ("cxr.study", "run_demo"),
    "demo_config": ("cxr.study", "demo_config"),
    "StudyResult": ("cxr.study", "StudyResult"),
    "Predictor": ("cxr.predict", "Predictor"),
    "Prediction": ("cxr.predict", "Prediction"),
    "CxrError": ("cxr.errors", "CxrError"),
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        module, attr = _API[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cxr' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
