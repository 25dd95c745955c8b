"""Lung regions in the HTTP API: a model trained on lung crops (`data.lung_crop`) crops each image to
its lung box, sent as the form field (or query parameter) `box`: 'x0 y0 x1 y1' in the uploaded image's
pixels, several boxes separated by ';'. Without one (and `data.lungs: auto`, the default) the built-in
lung segmenter finds the lungs; with `--lungs masks` the box is required. Other models ignore it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from starlette.exceptions import HTTPException

from cxr.data.regions import Box, parse_boxes
from cxr.errors import CxrError
from cxr.predict import Predictor

BOX_FIELD = "box"


def upload_boxes(predictor: Predictor, fields: dict[str, str]) -> list[Box] | None:
    """The upload's lung boxes; 422 when they are malformed, or missing for a lung-crop model."""
    text = (fields.get(BOX_FIELD) or "").strip()
    if predictor.lung_crop is None:
        return None
    if not text and predictor.auto_lungs is not None:  # data.lungs auto: the built-in segmenter's lungs
        return None
    if not text:
        raise HTTPException(422, "this model was trained on lung crops: send the lung bounding box as the form field "
                                 f"'{BOX_FIELD}' = 'x0 y0 x1 y1' in image pixels (several separated by ';')")
    try:
        return parse_boxes(text, f"field '{BOX_FIELD}'")
    except CxrError as exc:
        raise HTTPException(422, str(exc)) from None


def preprocessor(predictor: Predictor, boxes: list[Box] | None) -> Callable[[np.ndarray], Any]:
    """The upload's preprocessing: the predictor's, cropped to `boxes` for a lung-crop model (422 when
    they do not fit the image)."""
    def run(gray: np.ndarray) -> Any:
        try:
            return predictor.preprocess(gray, boxes)
        except CxrError as exc:
            raise HTTPException(422, str(exc)) from None

    return run
