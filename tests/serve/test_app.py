"""The HTTP API: answers, model card, and bad input that must be a 4xx, never a 500."""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from cxr.data.synthetic import CLASSES
from cxr.predict import Predictor
from cxr.serve.app import create_app
from cxr.serve.modelcard import NOT_A_MEDICAL_DEVICE

from .conftest import TEST_ACCURACY, ServerThread

with warnings.catch_warnings():  # starlette 1.x asks for `httpx2` for its TestClient; httpx still works
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

LIMIT_MB = 0.5
MB = 1024 * 1024


@pytest.fixture(scope="module")
def client(predictor: Predictor) -> Iterator[TestClient]:
    with TestClient(create_app(predictor, max_body_mb=LIMIT_MB)) as c:
        yield c


def _post(client: TestClient | httpx.Client, content: bytes, name: str = "x.png", ctype: str = "image/png",
          path: str = "/v1/predict", **kwargs) -> httpx.Response:
    return client.post(path, files={"file": (name, content, ctype)}, **kwargs)


def test_predict_real_png(client: TestClient, predictor: Predictor, png_bytes: bytes, xray: np.ndarray) -> None:
    r = _post(client, png_bytes)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"label", "probabilities", "model", "latency_ms", "in_distribution", "reason", "ood_score"}
    assert list(body["probabilities"]) == list(CLASSES)
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    assert body["label"] == max(body["probabilities"], key=body["probabilities"].get)
    assert body["model"] == predictor.name and body["latency_ms"] > 0
    expected = predictor.predict([xray])[0]
    np.testing.assert_allclose(list(body["probabilities"].values()), list(expected.probabilities.values()), atol=1e-5)


def test_predict_raw_image_body(client: TestClient, png_bytes: bytes) -> None:
    r = client.post("/v1/predict", content=png_bytes, headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    assert r.json()["label"] in CLASSES


def test_truncated_png_is_422(client: TestClient, png_bytes: bytes) -> None:
    r = _post(client, png_bytes[: len(png_bytes) // 2])
    assert r.status_code == 422
    assert "x.png" in r.json()["detail"] and "truncated" in r.json()["detail"]
    r = _post(client, b"\x89PNG\r\n\x1a\n garbage", name="noise.bin", ctype="application/octet-stream")
    assert r.status_code == 415  # .bin is not an image extension
    r = _post(client, b"garbage bytes", name="scan", ctype="application/octet-stream")
    assert r.status_code == 422 and "scan" in r.json()["detail"]


def test_body_over_limit_is_413(client: TestClient) -> None:
    big = b"\0" * int(1.5 * LIMIT_MB * MB)
    r = _post(client, big, name="big.png")
    assert r.status_code == 413 and "limit" in r.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the bytes are counted as they arrive
        for _ in range(4):
            yield b"\0" * (MB // 4 + 1)

    r = client.post("/v1/predict", content=chunks(), headers={"content-type": "image/png"})
    assert r.status_code == 413


def test_unsupported_types_are_415(client: TestClient) -> None:
    r = _post(client, b"hello, this is text", name="notes.txt", ctype="text/plain")
    assert r.status_code == 415 and ".txt" in r.json()["detail"]
    r = _post(client, b"hello", name="notes", ctype="text/plain")
    assert r.status_code == 415 and "text/plain" in r.json()["detail"]
    r = client.post("/v1/predict", json={"image": "x"})
    assert r.status_code == 415
    r = client.post("/v1/explain", content=b"hello", headers={"content-type": "text/plain"})
    assert r.status_code == 415


def test_missing_file_field_is_422(client: TestClient) -> None:
    r = client.post("/v1/predict", data={"image": "nothing"}, files={"other": ("a.png", b"x", "image/png")})
    assert r.status_code == 422 and "'file'" in r.json()["detail"]


def test_health(client: TestClient, predictor: Predictor) -> None:
    r = client.get("/v1/health")
    assert r.status_code == 200
    assert r.json()["status"] == "ok" and r.json()["model"] == predictor.name


def test_model_card(client: TestClient, run_checkpoint: Path) -> None:
    r = client.get("/v1/model")
    assert r.status_code == 200
    card = r.json()
    assert "not a medical device" in card["not_a_medical_device"] and card["not_a_medical_device"] == NOT_A_MEDICAL_DEVICE
    assert card["classes"] == list(CLASSES)
    assert card["intended_use"]
    assert card["test_metrics"]["available"] and card["test_metrics"]["accuracy"] == TEST_ACCURACY
    assert card["training_data"]["split_counts"] == {"train": 100, "val": 16, "test": 32}
    assert card["training_data"]["dataset"] == "cxr4-dev"
    assert card["validation_metrics"]["val_accuracy"] == 0.75
    assert card["model"]["backbone"] == "efficientnet_lite0" and card["model"]["epoch"] == 3
    assert str(run_checkpoint.parent) not in r.text and "secret-location" not in r.text  # no server paths


def test_explain_returns_png(client: TestClient, png_bytes: bytes, xray: np.ndarray) -> None:
    r = _post(client, png_bytes, path="/v1/explain")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(r.content)) as im:
        assert im.mode == "RGB" and im.size == xray.shape[::-1]
    assert r.headers["x-cxr-class"] == r.headers["x-cxr-label"]
    r = _post(client, png_bytes, path="/v1/explain", data={"class": "COVID"})
    assert r.status_code == 200 and r.headers["x-cxr-class"] == "COVID"
    r = _post(client, png_bytes, path="/v1/explain", data={"class": "Cat"})
    assert r.status_code == 422 and all(c in r.json()["detail"] for c in CLASSES)
    r = _post(client, png_bytes, path="/v1/explain", data={"class": "covid"})
    assert r.status_code == 422 and "unknown class 'covid'" in r.json()["detail"]
    assert "(did you mean 'COVID'?)" in r.json()["detail"]


def test_index_page(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    for element in ('id="file"', 'id="label"', 'id="bars"', 'id="heatmap-toggle"', "/v1/predict", "/v1/explain",
                    'href="/docs"', 'rel="icon" href="/favicon.svg"'):
        assert element in r.text


def test_the_favicon_is_served(client: TestClient) -> None:
    for path in ("/favicon.ico", "/favicon.svg"):
        r = client.get(path)
        assert r.status_code == 200 and r.headers["content-type"] == "image/svg+xml" and r.content.startswith(b"<svg")
    assert "/favicon.ico" not in client.get("/openapi.json").json()["paths"]


def test_concurrent_requests_over_http(live_server: ServerThread, png_bytes: bytes, xray: np.ndarray,
                                       predictor: Predictor) -> None:
    """8 threads post at once to a real uvicorn server; every one gets the single-image answer."""
    expected = predictor.predict([xray])[0]

    def post(_: int) -> httpx.Response:
        with httpx.Client(base_url=live_server.url, timeout=60) as c:
            return _post(c, png_bytes)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(post, range(8)))
    assert [r.status_code for r in responses] == [200] * 8
    for r in responses:
        np.testing.assert_allclose(list(r.json()["probabilities"].values()),
                                   list(expected.probabilities.values()), atol=1e-5)


def test_limits_over_real_http(live_server: ServerThread) -> None:
    """A 30 MB upload to the 1 MB server is answered 413 (not a reset connection); the server lives on."""
    with httpx.Client(base_url=live_server.url, timeout=60) as c:
        r = _post(c, b"\0" * (30 * MB), name="big.png")
        assert r.status_code == 413
        r = c.post("/v1/predict", content=b"plain text", headers={"content-type": "text/plain"})
        assert r.status_code == 415
        assert c.get("/v1/health").json()["status"] == "ok"


def test_create_app_rejects_bad_limit(predictor: Predictor) -> None:
    from cxr.errors import CxrError

    with pytest.raises(CxrError, match="max_body_mb"):
        create_app(predictor, max_body_mb=0)


def test_model_card_without_run_metrics(tmp_path: Path, run_checkpoint: Path) -> None:
    lone = tmp_path / "lone.pt"
    lone.write_bytes(run_checkpoint.read_bytes())
    app = create_app(lone)
    with TestClient(app) as c:
        card = c.get("/v1/model").json()
    assert card["test_metrics"]["available"] is False
    assert json.dumps(card).count("not a medical device") == 1
