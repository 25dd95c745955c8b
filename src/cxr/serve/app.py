"""HTTP API and web page for a trained checkpoint (FastAPI).

Endpoints: POST /v1/predict and POST /v1/explain (the image as multipart field `file`, or as the raw
body with an image content type), GET /v1/health, GET /v1/model (model card), GET / (web page).

Bad input is a 4xx, never a 500: a body over the limit is 413 (the Content-Length header is checked
first, and the bytes are counted while they arrive, so an unannounced large body is cut off too),
a type or extension that is not an image is 415, an image that does not decode is 422.

Inference runs in one worker thread that owns the model: requests are decoded and preprocessed in
the thread pool, queued, and the worker runs whatever has queued up as one batch (no waiting when
the queue is empty, so a lone request is not delayed). The event loop never blocks on the model.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cxr import __version__
from cxr.errors import CxrError, ImageReadError
from cxr.explain import Explanation, explain
from cxr.io import IMAGE_EXTENSIONS, read_image_bytes
from cxr.predict import Prediction, Predictor
from cxr.serve.modelcard import NOT_A_MEDICAL_DEVICE, build_model_card

log = logging.getLogger(__name__)

MB = 1024 * 1024
DEFAULT_MAX_BODY_MB = 20.0
MAX_BATCH = 16  # most requests the worker runs as one batch
IMAGE_FIELD = "file"
CLASS_FIELD = "class"
RAW_IMAGE_TYPES = frozenset({"application/octet-stream", "application/dicom"})
_MULTIPART = "multipart/form-data"
_MAX_FORM_FIELDS = 8


# ------------------------------------------------------------------------------------ body limit


class BodyLimitMiddleware:
    """Refuse request bodies over `max_bytes` with 413, from the header or while reading.

    A declared Content-Length over the limit is answered before any byte is read. Otherwise the
    bytes are counted as the app receives them, and the read that crosses the limit raises a 413
    HTTPException (answered by FastAPI's handler), so at most `max_bytes` are ever buffered.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared < 0:
            await _send_json(send, 400, {"detail": "invalid Content-Length header"})
            return
        if declared is not None and declared > self.max_bytes:
            await _send_json(send, 413, {"detail": self._message(declared)})
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, self._message(received, partial=True))
            return message

        await self.app(scope, counting_receive, send)

    def _message(self, size: int, partial: bool = False) -> str:
        amount = f"{'more than ' if partial else ''}{size / MB:.1f} MB"
        return f"request body is {amount}, over the {self.max_bytes / MB:g} MB limit"


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return -1
    return None


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    response = JSONResponse(body, status_code=status, headers={"Connection": "close"})
    await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


# -------------------------------------------------------------------------------- inference worker


@dataclass
class _Job:
    kind: str  # "predict" | "explain"
    payload: Any
    future: concurrent.futures.Future


_STOP = _Job("stop", None, concurrent.futures.Future())


class InferenceWorker:
    """One thread that owns the model; predict jobs queued meanwhile run together as a batch."""

    def __init__(self, predictor: Predictor, max_batch: int = MAX_BATCH) -> None:
        self.predictor = predictor
        self.max_batch = max_batch
        self._queue: queue.Queue[_Job] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.batches = 0
        self.images = 0

    def start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="cxr-inference", daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None and thread.is_alive():
            self._queue.put(_STOP)
            thread.join(timeout)

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def submit(self, kind: str, payload: Any) -> concurrent.futures.Future:
        self.start()
        job = _Job(kind, payload, concurrent.futures.Future())
        self._queue.put(job)
        return job.future

    async def predict(self, x: torch.Tensor) -> Prediction:
        """Prediction for one normalised input (3, S, S)."""
        return await asyncio.wrap_future(self.submit("predict", x))

    async def explain(self, gray: np.ndarray, class_name: str | None) -> Explanation:
        return await asyncio.wrap_future(self.submit("explain", (gray, class_name)))

    def _run(self) -> None:
        carry: _Job | None = None
        while True:
            job = carry or self._queue.get()
            carry = None
            if job is _STOP:
                return
            if job.kind != "predict":
                self._execute([job], self._explain)
                continue
            batch = [job]
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt.kind != "predict":
                    carry = nxt
                    break
                batch.append(nxt)
            self._execute(batch, self._predict)

    def _execute(self, jobs: list[_Job], fn: Callable[[list[Any]], list[Any]]) -> None:
        live = [j for j in jobs if j.future.set_running_or_notify_cancel()]  # skip abandoned requests
        if not live:
            return
        try:
            results = fn([j.payload for j in live])
        except Exception as exc:  # noqa: BLE001 - handed to the waiting request, which answers it
            for j in live:
                j.future.set_exception(exc)
            return
        for j, result in zip(live, results, strict=True):
            j.future.set_result(result)

    def _predict(self, tensors: list[torch.Tensor]) -> list[Prediction]:
        probs = self.predictor.predict_tensor(torch.stack(tensors))
        self.batches += 1
        self.images += len(tensors)
        return [self.predictor.to_prediction(p) for p in probs]

    def _explain(self, payloads: list[tuple[np.ndarray, str | None]]) -> list[Explanation]:
        return [explain(self.predictor, gray, class_name) for gray, class_name in payloads]


# ------------------------------------------------------------------------------------------ uploads


@dataclass
class Upload:
    data: bytes
    name: str
    fields: dict[str, str]


def _media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def _check_image_type(name: str, content_type: str) -> None:
    """415 unless the file name's extension (when it has one) and the content type look like an image."""
    suffix = PurePath(name).suffix.lower()
    allowed_ext = ", ".join(sorted(IMAGE_EXTENSIONS))
    if suffix and suffix not in IMAGE_EXTENSIONS:
        raise HTTPException(415, f"unsupported file type {suffix!r} ({name}); allowed: {allowed_ext}")
    if content_type and not (content_type.startswith("image/") or content_type in RAW_IMAGE_TYPES):
        raise HTTPException(
            415, f"unsupported content type {content_type!r}; send an image (image/*, application/dicom)"
        )


async def read_upload(request: Request) -> Upload:
    """The uploaded image: multipart field `file`, or the whole body when it has an image type."""
    content_type = _media_type(request.headers.get("content-type"))
    if content_type == _MULTIPART:
        form = await request.form(max_files=1, max_fields=_MAX_FORM_FIELDS)
        try:
            part = form.get(IMAGE_FIELD)
            if not isinstance(part, UploadFile):
                raise HTTPException(422, f"multipart field {IMAGE_FIELD!r} with the image file is missing")
            name = part.filename or "<upload>"
            _check_image_type(name, _media_type(part.content_type))
            data = await part.read()
            fields = {**request.query_params, **{k: v for k, v in form.items() if isinstance(v, str)}}
        finally:
            await form.close()
        return Upload(data=data, name=name, fields=fields)
    if content_type.startswith("image/") or content_type in RAW_IMAGE_TYPES:
        data = await request.body()
        return Upload(data=data, name="<upload>", fields=dict(request.query_params))
    shown = content_type or "none"
    raise HTTPException(
        415, f"unsupported content type {shown!r}; post multipart/form-data with field {IMAGE_FIELD!r} or an image body"
    )


def _decode(upload: Upload) -> np.ndarray:
    try:
        return read_image_bytes(upload.data, upload.name)
    except ImageReadError as exc:
        raise HTTPException(422, f"cannot decode the image: {exc}") from None


# --------------------------------------------------------------------------------------------- app


def create_app(
    checkpoint_or_predictor: str | Path | Predictor,
    max_body_mb: float = DEFAULT_MAX_BODY_MB,
    max_batch: int = MAX_BATCH,
) -> FastAPI:
    """The FastAPI app serving one model. Accepts a checkpoint path or a ready `Predictor`."""
    if max_body_mb <= 0:
        raise CxrError(f"max_body_mb must be > 0, got {max_body_mb}")
    predictor = (
        checkpoint_or_predictor
        if isinstance(checkpoint_or_predictor, Predictor)
        else Predictor.from_checkpoint(checkpoint_or_predictor)
    )
    worker = InferenceWorker(predictor, max_batch=max_batch)
    card = build_model_card(predictor)
    page = _static_text("index.html")

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        worker.start()
        yield
        await run_in_threadpool(worker.stop)

    app = FastAPI(
        title="cxr",
        summary="Chest X-ray classifier (research use only; not a medical device).",
        version=__version__,
        lifespan=lifespan,
    )
    app.state.predictor = predictor
    app.state.worker = worker
    app.add_middleware(BodyLimitMiddleware, max_bytes=int(max_body_mb * MB))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/v1/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": predictor.name, "classes": predictor.classes,
                "device": str(predictor.device), "queued": worker.pending}

    @app.get("/v1/model")
    async def model_card() -> dict[str, Any]:
        return card

    @app.post("/v1/predict")
    async def predict(request: Request) -> dict[str, Any]:
        start = time.perf_counter()
        upload = await read_upload(request)
        x = await run_in_threadpool(lambda: predictor.preprocess(_decode(upload)))
        prediction = await worker.predict(x)
        return {
            "label": prediction.label,
            "probabilities": prediction.probabilities,
            "model": predictor.name,
            "latency_ms": round(1000 * (time.perf_counter() - start), 2),
        }

    @app.post("/v1/explain")
    async def explain_endpoint(request: Request) -> Response:
        start = time.perf_counter()
        upload = await read_upload(request)
        class_name = upload.fields.get(CLASS_FIELD) or None
        if class_name is not None and class_name not in predictor.classes:
            raise HTTPException(
                422, f"unknown class {class_name!r}; this model's classes: {', '.join(predictor.classes)}"
            )
        gray = await run_in_threadpool(_decode, upload)
        result = await worker.explain(gray, class_name)
        png = await run_in_threadpool(result.to_png)
        headers = {
            "X-Cxr-Class": result.class_name,
            "X-Cxr-Label": result.prediction.label,
            "X-Cxr-Model": predictor.name,
            "X-Cxr-Latency-Ms": f"{1000 * (time.perf_counter() - start):.2f}",
            "Cache-Control": "no-store",
        }
        return Response(png, media_type="image/png", headers=headers)

    return app


def _static_text(name: str) -> str:
    return resources.files("cxr.serve").joinpath("static", name).read_text(encoding="utf-8")


def serve(
    checkpoint_or_predictor: str | Path | Predictor,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_body_mb: float = DEFAULT_MAX_BODY_MB,
    limit_concurrency: int = 64,
) -> None:
    """Run the app with uvicorn until interrupted (blocking)."""
    import uvicorn

    app = create_app(checkpoint_or_predictor, max_body_mb=max_body_mb)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: reachable from other machines. %s", host, NOT_A_MEDICAL_DEVICE)
    uvicorn.run(app, host=host, port=port, log_level="info", limit_concurrency=limit_concurrency,
                timeout_keep_alive=5)
