"""HTTP API and web page for a trained checkpoint (FastAPI).

Endpoints: POST /v1/predict and POST /v1/explain (the image as multipart field `file`, or as the raw
body with an image content type), POST /v1/predict/batch (one multipart `file` part per image, one
result per file in order), GET /v1/health, GET /v1/model (model card), GET / (web page) and, with
the `swagger-ui-bundle` package, GET /docs (served locally).

Bad input is a 4xx, never a 500: a body over the limit is 413 (the Content-Length header is checked
first, and the bytes are counted while they arrive, so an unannounced large body is cut off too), a
body that arrives too slowly is 408, a type or extension that is not an image is 415, an image that
does not decode or is over the pixel limit is 422, a full queue is 503 with Retry-After, and with an
API key a /v1/* request without it is 401. The limits are a `ServeLimits` (`cxr serve` options).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from cxr import __version__
from cxr.errors import CxrError
from cxr.ood.guard import with_reasons
from cxr.predict import Predictor
from cxr.serve import docs, lungs, sets
from cxr.serve.favicon import add_favicon
from cxr.serve.guard import API_PREFIX, ApiKeyMiddleware, BodyGuardMiddleware
from cxr.serve.limits import ServeLimits
from cxr.serve.modelcard import NOT_A_MEDICAL_DEVICE, SYNTHETIC_WARNING, build_model_card
from cxr.serve.uploads import CLASS_FIELD, Upload, decode, read_batch, read_upload
from cxr.serve.worker import MAX_BATCH, Admission, InferenceWorker

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_MB = ServeLimits.max_body_mb
SHRINK_MARGIN = 2  # uploads may be shrunk early while both sides stay >= this x the model's input side


def create_app(
    checkpoint_or_predictor: str | Path | Predictor,
    max_body_mb: float | None = None,
    max_batch: int = MAX_BATCH,
    *,
    limits: ServeLimits | None = None,
    api_key: str | None = None,
    docs_ui: bool = True,
    reject_ood: bool = False,
) -> FastAPI:
    """The FastAPI app serving one model. Accepts a checkpoint path or a ready `Predictor`.

    `reject_ood`: an input that is not like the training X-rays (`cxr.ood.guard`) is answered 422
    with the reason instead of a prediction.

    `limits` default to `ServeLimits()`; `max_body_mb`, when given, replaces its body limit. With
    `api_key`, every /v1/* request needs it. `docs_ui`: serve /docs when swagger-ui-bundle is installed.
    """
    limits = limits or ServeLimits()
    if max_body_mb is not None:
        limits = dataclasses.replace(limits, max_body_mb=max_body_mb)
    if api_key is not None and not api_key:
        raise CxrError("api_key must not be empty")
    predictor = (
        checkpoint_or_predictor
        if isinstance(checkpoint_or_predictor, Predictor)
        else Predictor.from_checkpoint(checkpoint_or_predictor)
    )
    worker = InferenceWorker(predictor, max_batch=max_batch)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        worker.start()
        yield
        await run_in_threadpool(worker.stop)

    app = FastAPI(title="cxr", summary="Chest X-ray classifier (research use only; not a medical device).",
                  version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.predictor = predictor
    app.state.worker = worker
    app.state.limits = limits
    app.add_middleware(BodyGuardMiddleware, max_bytes=limits.max_bytes, timeout_s=limits.timeout_s,
                       idle_timeout_s=limits.idle_timeout_s)
    if api_key is not None:
        app.add_middleware(ApiKeyMiddleware, api_key=api_key)
        docs.add_security(app, API_PREFIX)
    if docs_ui:
        docs.add_docs(app, "cxr")
    _add_routes(app, predictor, worker, limits, reject_ood)
    add_favicon(app)
    return app


class Inference:
    """What the upload endpoints share: admission to the queue, bounded decoding, the worker."""

    def __init__(self, predictor: Predictor, worker: InferenceWorker, limits: ServeLimits,
                 reject_ood: bool = False) -> None:
        self.predictor = predictor
        self.reject_ood = reject_ood  # 422 instead of a prediction for an input that is out of distribution
        self.worker = worker
        self.limits = limits
        self.admission = Admission(limits.max_queue, lambda: worker.seconds_per_image)
        self._decoders = asyncio.Semaphore(limits.decoders)
        # lung boxes are in the uploaded pixels: a lung-crop model's uploads are not shrunk early
        self._min_side = SHRINK_MARGIN * predictor.preprocessing.size if predictor.lung_crop is None else None
        self.sets = sets.SetAnswers(predictor)  # prediction sets at the request's `coverage`

    async def decoded(self, upload: Upload, then: Callable[[np.ndarray], Any] | None = None) -> Any:
        """The upload decoded (and passed through `then`) in the thread pool, `limits.decoders` at a time."""
        def work() -> Any:
            gray = decode(upload, self.limits.decode, self._min_side)
            return then(gray) if then is not None else gray

        async with self._decoders:
            return await run_in_threadpool(work)

    async def predicted(self, upload: Upload, fields: Any = None) -> dict[str, Any]:
        """`fields`: the request's, where the upload has none of its own (a batch part)."""
        coverage = self.sets.coverage(upload.fields if fields is None else fields)
        prepare = lungs.preprocessor(self.predictor, lungs.upload_boxes(self.predictor, upload.fields))
        checks = self.predictor.ood.input_reasons  # colour on the uploaded bytes, the rest on the decoded gray
        x, reasons = await self.decoded(upload, lambda gray: (prepare(gray), checks(upload.data, gray)))
        prediction = with_reasons(await self.worker.predict(x), reasons)
        if self.reject_ood and prediction.in_distribution is False:
            raise HTTPException(422, f"not a chest X-ray like the training data: {prediction.reason}")
        return {**prediction.to_dict(source=False), **self.sets.answer(prediction, coverage)}  # multi-label: + findings

    async def batch_result(self, upload: Upload, fields: Any = None) -> dict[str, Any]:
        """One file's entry of a batch answer: its prediction, or its error (status and detail)."""
        error = upload.error
        if error is None:
            try:
                return {"file": upload.name, **await self.predicted(upload, fields)}
            except HTTPException as exc:
                error = exc
        return {"file": upload.name, "error": {"status": error.status_code, "detail": error.detail}}


_UPLOAD_ERRORS = docs.error_responses(401, 408, 413, 415, 422, 503)


def _add_routes(app: FastAPI, predictor: Predictor, worker: InferenceWorker, limits: ServeLimits,
                reject_ood: bool = False) -> None:
    card = build_model_card(predictor)
    card["ood"] = {**predictor.ood.describe(), "reject": reject_ood}
    warning = {"warning": SYNTHETIC_WARNING} if predictor.synthetic else {}  # in every prediction answer
    page = _static_text("index.html")
    run = Inference(predictor, worker, limits, reject_ood)
    app.state.admission = run.admission

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/v1/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": predictor.name, "classes": predictor.classes,
                "device": str(predictor.device), "queued": run.admission.used}

    @app.get("/v1/model")
    async def model_card() -> dict[str, Any]:
        return card

    @app.post("/v1/predict", openapi_extra=sets.documented(docs.upload_body()), response_model=None,
              responses={**docs.json_response(docs.PREDICTION, "the prediction"), **_UPLOAD_ERRORS})
    async def predict(request: Request) -> dict[str, Any]:
        start = time.perf_counter()
        upload = await read_upload(request)
        with run.admission.hold(1):
            result = await run.predicted(upload)
        return {**result, "model": predictor.name, **warning, "latency_ms": _ms_since(start)}

    @app.post("/v1/predict/batch", openapi_extra=sets.documented(docs.upload_body(batch=True), form=False),
              response_model=None,
              responses={**docs.json_response(docs.BATCH, "one result per file, in order"), **_UPLOAD_ERRORS})
    async def predict_batch(request: Request) -> dict[str, Any]:
        start = time.perf_counter()
        uploads = await read_batch(request, limits.max_files)
        run.sets.coverage(request.query_params)  # a bad coverage fails the request, not each file
        with run.admission.hold(sum(u.error is None for u in uploads)):
            results = await asyncio.gather(*(run.batch_result(u, request.query_params) for u in uploads))
        return {"model": predictor.name, **warning, "results": results, "latency_ms": _ms_since(start)}

    @app.post("/v1/explain", openapi_extra=docs.upload_body(with_class=True), responses={
        200: {"description": "the X-ray with the Grad-CAM heatmap overlaid", "content": {"image/png": {
            "schema": docs.BINARY}}}, **_UPLOAD_ERRORS})
    async def explain_endpoint(request: Request) -> Response:
        start = time.perf_counter()
        upload = await read_upload(request)
        class_name = upload.fields.get(CLASS_FIELD) or None
        if class_name is not None and class_name not in predictor.classes:
            try:
                predictor.class_index(class_name)
            except CxrError as exc:  # names the classes, and the close one: class=covid -> 'COVID'
                raise HTTPException(422, str(exc)) from None
        boxes = lungs.upload_boxes(predictor, upload.fields)
        with run.admission.hold(1):
            result = await worker.explain(await run.decoded(upload), class_name, boxes)
        png = await run_in_threadpool(result.to_png)
        headers = {
            "X-Cxr-Class": result.class_name,
            "X-Cxr-Label": result.prediction.label,
            "X-Cxr-Model": predictor.name,
            "X-Cxr-Latency-Ms": f"{_ms_since(start):.2f}",
            "Cache-Control": "no-store",
            **({"X-Cxr-Warning": SYNTHETIC_WARNING} if predictor.synthetic else {}),
        }
        return Response(png, media_type="image/png", headers=headers)


def _ms_since(start: float) -> float:
    return round(1000 * (time.perf_counter() - start), 2)


def _static_text(name: str) -> str:
    return resources.files("cxr.serve").joinpath("static", name).read_text(encoding="utf-8")


def serve(
    checkpoint_or_predictor: str | Path | Predictor,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_body_mb: float | None = None,
    limit_concurrency: int | None = None,
    *,
    limits: ServeLimits | None = None,
    api_key: str | None = None,
    docs_ui: bool = True,
    reject_ood: bool = False,
) -> None:
    """Run the app with uvicorn until interrupted (blocking), with the header deadline of `limits`."""
    import uvicorn

    from cxr.serve.protocol import protocol_class

    limits = limits or ServeLimits()
    if limit_concurrency is not None:
        limits = dataclasses.replace(limits, limit_concurrency=limit_concurrency)
    app = create_app(checkpoint_or_predictor, max_body_mb=max_body_mb, limits=limits, api_key=api_key,
                     docs_ui=docs_ui, reject_ood=reject_ood)
    warn_exposure(host, api_key is not None)
    uvicorn.run(app, host=host, port=port, log_level="info", limit_concurrency=limits.limit_concurrency,
                timeout_keep_alive=5, http=protocol_class(limits.timeout_s), ws="none")


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def warn_exposure(host: str, has_key: bool) -> None:
    """WARNINGs for a server reachable from other machines (and more so without an API key)."""
    if host in LOOPBACK_HOSTS:
        return
    log.warning("listening on %s: reachable from other machines. %s", host, NOT_A_MEDICAL_DEVICE)
    if not has_key:
        log.warning("listening on %s without an API key: anyone who can reach this port can use the model; "
                    "give --api-key-file FILE", host)
