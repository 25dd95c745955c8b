"""Prediction sets in the API: the `coverage` field (query parameter, or multipart form field of
/v1/predict) and the `prediction_set` of each answer.

A model whose checkpoint holds a conformal calibration (`cxr.prediction_sets`) answers every
prediction with its set at the requested coverage, or at the checkpoint's default (`eval.coverage`)
when none is asked; a model without one answers without sets, and a request that asks for one is 422.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from starlette.exceptions import HTTPException

from cxr.errors import CxrError
from cxr.metrics.conformal import check_coverage
from cxr.predict import Prediction, Predictor
from cxr.prediction_sets import conformal_of, set_labels

COVERAGE_FIELD = "coverage"
_COVERAGE_DOC = ("prediction sets: the share of images like the validation split's whose set holds the true class, "
                 "in (0, 1) (default: the model's, see /v1/model); only for a model with a conformal calibration")


class SetAnswers:
    """The prediction-set part of one model's answers."""

    def __init__(self, predictor: Predictor) -> None:
        self.classes = predictor.classes
        self.calibration = None if predictor.multilabel else conformal_of({"extra": predictor.info.extra}, predictor.name)

    def coverage(self, fields: Mapping[str, str]) -> float | None:
        """The coverage a request asks for (its field, else the model's default); 422 for a bad value or
        for a model without calibration; None: no sets."""
        raw = fields.get(COVERAGE_FIELD)
        if self.calibration is None:
            if raw is not None:
                raise HTTPException(422, "this model has no conformal calibration, so it gives no prediction sets; "
                                    f"leave out {COVERAGE_FIELD!r}")
            return None
        try:
            return check_coverage(self.calibration.coverage if raw is None else raw, COVERAGE_FIELD)
        except CxrError as exc:
            raise HTTPException(422, str(exc)) from None

    def answer(self, prediction: Prediction, coverage: float | None) -> dict[str, Any]:
        """{"prediction_set": [...], "coverage": c}, or {} without sets."""
        if coverage is None or self.calibration is None:
            return {}
        probs = np.array([prediction.probabilities[c] for c in self.classes])
        return {"prediction_set": list(set_labels(self.calibration, probs, coverage)[0]), "coverage": coverage}


def documented(extra: dict[str, Any], *, form: bool = True) -> dict[str, Any]:
    """An endpoint's `openapi_extra` with the `coverage` query parameter (and, `form`, the multipart field)."""
    out = {**extra, "parameters": [{"name": COVERAGE_FIELD, "in": "query", "required": False,
                                     "schema": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                                     "description": _COVERAGE_DOC}]}
    if form:
        schema = out["requestBody"]["content"]["multipart/form-data"]["schema"]
        schema["properties"][COVERAGE_FIELD] = {"type": "number", "description": _COVERAGE_DOC}
    return out


def card_entry(predictor: Predictor) -> dict[str, Any] | None:
    """The model card's `prediction_sets`: the default coverage and how the sets were calibrated (None: no sets)."""
    calibration = SetAnswers(predictor).calibration
    if calibration is None:
        return None
    return {"coverage": calibration.coverage, "method": calibration.method, "mondrian": calibration.mondrian,
            "calibration_images": calibration.n, "fitted_on": calibration.record.get("fitted_on"),
            "field": f"POST /v1/predict?{COVERAGE_FIELD}=0.95 for another coverage"}
