"""The API's OpenAPI description (upload schemas the endpoints cannot infer) and /docs served locally.

The endpoints read their uploads from the raw request, so FastAPI cannot see their bodies; the
schemas here document them (multipart field `file`, the optional `class` of /v1/explain, one `file`
part per image for the batch), so /docs can upload. Swagger UI comes from the `swagger-ui-bundle`
package (the `serve` extra), never from a CDN; without that package /docs is off.
"""

from __future__ import annotations

import importlib
import logging
import re
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from cxr.serve.uploads import CLASS_FIELD, IMAGE_FIELD

log = logging.getLogger(__name__)

DOCS_URL = "/docs"
ASSETS_URL = "/docs/assets"
SWAGGER_PACKAGE = "swagger_ui_bundle"
BINARY = {"type": "string", "format": "binary"}
_IMAGE_DESCRIPTION = "the X-ray: PNG, JPEG, BMP, TIFF or DICOM"
_RAW_TYPES = ("image/png", "image/jpeg", "application/dicom", "application/octet-stream")
_PROBABILITIES = {"type": "object", "additionalProperties": {"type": "number"},
                  "description": "probability of every class, in the model's class order"}
_ERROR = {"type": "object", "properties": {"detail": {"type": "string"}}}

_DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} API</title>
<link rel="stylesheet" href="{assets}/swagger-ui.css"><link rel="icon" href="{assets}/favicon-32x32.png">
</head><body><div id="swagger-ui"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script>
SwaggerUIBundle({{url: "{openapi}", dom_id: "#swagger-ui", presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout", deepLinking: true, validatorUrl: null, tryItOutEnabled: true}});
</script></body></html>
"""


def upload_body(*, with_class: bool = False, batch: bool = False) -> dict[str, Any]:
    """`openapi_extra` of an upload endpoint: its request body."""
    file_schema = ({"type": "array", "items": BINARY, "description": f"one part per image ({_IMAGE_DESCRIPTION})"}
                   if batch else {**BINARY, "description": _IMAGE_DESCRIPTION})
    properties: dict[str, Any] = {IMAGE_FIELD: file_schema}
    if with_class:
        properties[CLASS_FIELD] = {"type": "string", "description": "class to explain (default: the predicted one)"}
    content: dict[str, Any] = {"multipart/form-data": {"schema": {
        "type": "object", "required": [IMAGE_FIELD], "properties": properties}}}
    if not batch:
        content.update({t: {"schema": BINARY} for t in _RAW_TYPES})
    return {"requestBody": {"required": True, "content": content}}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The documented error answers of an endpoint."""
    text = {
        401: "no valid API key (when the server has one)",
        408: "the body did not arrive in time",
        413: "body over the size limit (or too many files in a batch)",
        415: "not an image type or extension",
        422: "the image does not decode, is over the pixel limit, or a field is missing or wrong",
        503: "server busy: the queue is full; retry after the Retry-After header's seconds",
    }
    return {s: {"description": text[s], "content": {"application/json": {"schema": _ERROR}}} for s in statuses}


_FINDINGS = {"type": "array", "items": {"type": "string"},
             "description": "multi-label models only: the findings at or over their thresholds (see /model)"}
_WARNING = {"type": "string", "description": "present when the model was trained on synthetic images"}
_SET = {"type": "array", "items": {"type": "string"}, "description": "the classes of the conformal prediction set at "
        "`coverage`, most probable first (absent when the model has no conformal calibration)"}
_COVERAGE = {"type": "number", "description": "the coverage `prediction_set` was made for"}
_OOD = {  # cxr.ood.guard
    "in_distribution": {"type": "boolean", "description": "false: the input is not like the training X-rays "
                        "(with cxr serve --reject-ood: a 422 instead)"},
    "reason": {"type": "string", "description": "why the input is (not) in distribution"},
    "ood_score": {"type": ["number", "null"], "description": "the feature detector's score over its threshold "
                  "(over 1: out of distribution); null without a detector"}}
PREDICTION = {"type": "object", "properties": {
    "label": {"type": "string", "description": "the most probable class (multi-label model: the findings "
              "called present joined by '|', or 'No Finding')"},
    "findings": _FINDINGS, "probabilities": _PROBABILITIES, "prediction_set": _SET, "coverage": _COVERAGE,
    **_OOD, "model": {"type": "string"}, "warning": _WARNING, "latency_ms": {"type": "number"}}}
BATCH = {"type": "object", "properties": {
    "model": {"type": "string"}, "warning": _WARNING, "latency_ms": {"type": "number"},
    "results": {"type": "array", "description": "one per file, in the order sent", "items": {
        "type": "object", "properties": {
            "file": {"type": "string"}, "label": {"type": "string"}, "findings": _FINDINGS,
            "probabilities": _PROBABILITIES, "prediction_set": _SET, "coverage": _COVERAGE, **_OOD,
            "error": {"type": "object", "description": "instead of label and probabilities when the file "
                      "cannot be used", "properties": {"status": {"type": "integer"}, "detail": {"type": "string"}}}}}}}}


def json_response(schema: dict[str, Any], description: str) -> dict[int | str, dict[str, Any]]:
    return {200: {"description": description, "content": {"application/json": {"schema": schema}}}}


def add_security(app: FastAPI, api_prefix: str) -> None:
    """Declare the API key (Bearer or X-API-Key) on every `api_prefix` operation of the schema."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer KEY"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        }
        for path, operations in schema.get("paths", {}).items():
            if path.startswith(api_prefix):
                for operation in operations.values():
                    operation["security"] = [{"bearer": []}, {"apiKey": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def swagger_assets() -> Path | None:
    """The folder of the installed Swagger UI files, or None without `swagger-ui-bundle`."""
    try:
        package = importlib.import_module(SWAGGER_PACKAGE)
    except ImportError:
        return None
    folder = Path(getattr(package, "swagger_ui_path", ""))
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


def add_docs(app: FastAPI, title: str) -> bool:
    """Serve Swagger UI at /docs from the local package; False (and /docs off) when it is missing."""
    assets = swagger_assets()
    if assets is None:
        log.info("/docs is off: install swagger-ui-bundle (the serve extra) to browse the API there")
        return False
    match = re.search(r"(\d+)\.\d+", assets.name)
    if match and int(match.group(1)) < 5:  # Swagger UI 4 reads OpenAPI 3.0, not 3.1
        app.openapi_version = "3.0.3"
    app.mount(ASSETS_URL, StaticFiles(directory=assets), name="docs-assets")
    page = _DOCS_PAGE.format(title=title, assets=ASSETS_URL, openapi=app.openapi_url)

    @app.get(DOCS_URL, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(page)

    return True
