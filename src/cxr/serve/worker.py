"""The model's one thread, and the admission that bounds the work waiting for it.

Inference runs in one worker thread that owns the model: requests are decoded and preprocessed in
the thread pool, queued, and the worker runs whatever has queued up as one batch (no waiting when
the queue is empty, so a lone request is not delayed). The event loop never blocks on the model.

`Admission` counts the images a server has accepted and not yet answered (decoding, queued or
running). Over `max_queue` a request is answered 503 at once, with a Retry-After estimated from the
worker's recent speed, so overload shows as fast refusals instead of latency that grows unbounded.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from starlette.exceptions import HTTPException

from cxr.explain import Explanation, explain
from cxr.predict import Prediction, Predictor

MAX_BATCH = 16  # most requests the worker runs as one batch
MAX_RETRY_AFTER_S = 60
_SPEED_WEIGHT = 0.2  # weight of the newest batch in the moving average of seconds per image


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
        self.seconds_per_image = 0.0  # moving average over recent batches

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

    async def explain(self, gray: np.ndarray, class_name: str | None, box: Any = None) -> Explanation:
        return await asyncio.wrap_future(self.submit("explain", (gray, class_name, box)))

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
        start = time.perf_counter()
        try:
            results = fn([j.payload for j in live])
        except Exception as exc:  # noqa: BLE001 - handed to the waiting request, which answers it
            for j in live:
                j.future.set_exception(exc)
            return
        per_image = (time.perf_counter() - start) / len(live)
        self.seconds_per_image += _SPEED_WEIGHT * (per_image - self.seconds_per_image)
        for j, result in zip(live, results, strict=True):
            j.future.set_result(result)

    def _predict(self, tensors: list[torch.Tensor]) -> list[Prediction]:
        probs = self.predictor.predict_tensor(torch.stack(tensors))
        self.batches += 1
        self.images += len(tensors)
        return self.predictor.ood.judge([self.predictor.to_prediction(p) for p in probs])  # + in_distribution

    def _explain(self, payloads: list[tuple[np.ndarray, str | None, Any]]) -> list[Explanation]:
        return [explain(self.predictor, gray, class_name, box=box) for gray, class_name, box in payloads]


class Admission:
    """At most `capacity` images accepted and not yet answered; beyond it, 503 with Retry-After.

    Used from the event loop only (no lock needed): `hold(n)` admits n images or raises at once.
    """

    def __init__(self, capacity: int, seconds_per_image: Callable[[], float]) -> None:
        self.capacity = capacity
        self.seconds_per_image = seconds_per_image
        self.used = 0
        self.refused = 0

    @contextmanager
    def hold(self, images: int) -> Iterator[None]:
        if self.used + images > self.capacity:
            self.refused += 1
            retry = self.retry_after_s()
            raise HTTPException(
                503,
                f"server busy: {self.used} images queued (limit {self.capacity}); retry in {retry} s",
                {"Retry-After": str(retry)},
            )
        self.used += images
        try:
            yield
        finally:
            self.used -= images

    def retry_after_s(self) -> int:
        """Seconds until the queue has likely drained (1..60)."""
        estimate = self.used * self.seconds_per_image()
        return int(min(MAX_RETRY_AFTER_S, max(1, math.ceil(estimate))))
