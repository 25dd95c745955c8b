"""Bad input and misuse: a corpus of bad uploads, limits, the queue, batches, OpenAPI, /docs, the API key.

Every bad input is a 4xx with a message naming the file, and nothing is logged with a traceback.
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import warnings
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from cxr.data.synthetic import CLASSES
from cxr.errors import CxrError
from cxr.predict import Predictor
from cxr.serve import docs
from cxr.serve.app import create_app, warn_exposure
from cxr.serve.limits import ServeLimits, read_api_key

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

KEY = "k3y-for-the-tests-0123456789"
SMALL = 96 * 96  # the fixture X-ray's pixels


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _bad_dicom() -> bytes:
    """The DICOM preamble and magic, then a truncated file meta group: no pixel data."""
    return b"\0" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00"


@pytest.fixture(scope="module")
def client(predictor: Predictor) -> Iterator[TestClient]:
    limits = ServeLimits(max_pixels=2 * SMALL, max_files=3)  # a 16-bit image of 2 x SMALL pixels fits
    with TestClient(create_app(predictor, limits=limits)) as c:
        yield c


@pytest.fixture
def no_tracebacks(caplog) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)
    yield
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []


def corpus(png_bytes: bytes) -> list[tuple[str, bytes, str, int, tuple[str, ...]]]:
    """(file name, bytes, content type, expected status, words the detail must hold)."""
    rgba = np.zeros((96, 128, 4), np.uint8)  # under max_pixels, but 4 bytes a pixel: over 2 x max_pixels bytes
    big = np.zeros((200, 200), np.uint8)  # 40000 pixels > max_pixels
    return [
        ("cut.png", png_bytes[: len(png_bytes) // 2], "image/png", 422, ("cut.png", "truncated")),
        ("empty.png", b"", "image/png", 422, ("empty.png", "empty")),
        ("notes.png", b"these are notes, not pixels\n" * 4, "image/png", 422, ("notes.png", "not a recognised image")),
        ("bad.dcm", _bad_dicom(), "application/dicom", 422, ("bad.dcm", "DICOM")),
        ("rgba.png", _png(rgba), "image/png", 422, ("rgba.png", "4 bytes per pixel", "MB limit")),
        ("big.png", _png(big), "image/png", 422, ("big.png", "200x200", "megapixel limit")),
        ("notes.txt", b"hello", "text/plain", 415, (".txt",)),
        ("scan.png", png_bytes, "text/html", 415, ("text/html",)),
    ]


@pytest.mark.usefixtures("no_tracebacks")
def test_bad_input_corpus(client: TestClient, png_bytes: bytes) -> None:
    for name, data, ctype, status, words in corpus(png_bytes):
        for path in ("/v1/predict", "/v1/explain"):
            r = client.post(path, files={"file": (name, data, ctype)})
            assert r.status_code == status, (name, path, r.text)
            assert all(w in r.json()["detail"] for w in words), (name, r.json())
    assert client.post("/v1/predict", files={"file": ("x.png", png_bytes, "image/png")}).status_code == 200


@pytest.mark.usefixtures("no_tracebacks")
def test_batch_answers_each_file_in_order(client: TestClient, png_bytes: bytes, predictor: Predictor, xray) -> None:
    files = [("file", ("a.png", png_bytes, "image/png")), ("file", ("b.txt", b"x", "text/plain")),
             ("file", ("c.png", b"", "image/png"))]
    r = client.post("/v1/predict/batch", files=files)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [item["file"] for item in results] == ["a.png", "b.txt", "c.png"]
    expected = predictor.predict([xray])[0]
    np.testing.assert_allclose(list(results[0]["probabilities"].values()), list(expected.probabilities.values()),
                               atol=1e-5)
    assert results[0]["label"] in CLASSES and "error" not in results[0]
    assert results[1]["error"]["status"] == 415 and ".txt" in results[1]["error"]["detail"]
    assert results[2]["error"]["status"] == 422 and "empty" in results[2]["error"]["detail"]
    too_many = [("file", (f"{i}.png", png_bytes, "image/png")) for i in range(4)]
    r = client.post("/v1/predict/batch", files=too_many)
    assert r.status_code == 413 and "at most 3 files" in r.json()["detail"]
    r = client.post("/v1/predict/batch", files={"other": ("a.png", png_bytes, "image/png")})
    assert r.status_code == 422 and "'file'" in r.json()["detail"]
    r = client.post("/v1/predict/batch", content=png_bytes, headers={"content-type": "image/png"})
    assert r.status_code == 415


def test_openapi_documents_the_uploads(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path, fields in (("/v1/predict", {"file", "coverage"}), ("/v1/explain", {"file", "class"}),
                         ("/v1/predict/batch", {"file"})):
        body = spec["paths"][path]["post"]["requestBody"]
        form = body["content"]["multipart/form-data"]["schema"]
        assert body["required"] and form["required"] == ["file"] and set(form["properties"]) == fields
        file_schema = form["properties"]["file"]
        binary = file_schema.get("items", file_schema)
        assert binary == {"type": "string", "format": "binary"} | ({"description": binary["description"]}
                                                                   if "description" in binary else {})
    assert spec["paths"]["/v1/predict/batch"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"][
        "properties"]["file"]["type"] == "array"
    assert "503" in spec["paths"]["/v1/predict"]["post"]["responses"]


def test_docs_are_served_locally(client: TestClient) -> None:
    if docs.swagger_assets() is None:
        pytest.skip("swagger-ui-bundle is not installed")
    page = client.get("/docs")
    assert page.status_code == 200 and "/docs/assets/swagger-ui-bundle.js" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN, no validator badge
    assert "validatorUrl: null" in page.text
    assert client.get("/docs/assets/swagger-ui-bundle.js").status_code == 200
    assert client.get("/redoc").status_code == 404  # ReDoc would load from a CDN


def test_docs_off_without_the_package(predictor: Predictor, monkeypatch) -> None:
    monkeypatch.setattr(docs, "swagger_assets", lambda: None)
    with TestClient(create_app(predictor)) as c:
        assert c.get("/docs").status_code == 404
        assert c.get("/openapi.json").status_code == 200


def test_api_key(predictor: Predictor, png_bytes: bytes) -> None:
    with TestClient(create_app(predictor, api_key=KEY)) as c:
        assert c.get("/v1/health").status_code == 401
        r = c.post("/v1/predict", files={"file": ("x.png", png_bytes, "image/png")})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert c.get("/v1/health", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        assert c.get("/v1/health", headers={"X-API-Key": KEY}).status_code == 200
        assert c.get("/v1/health", headers={"Authorization": f"Bearer {KEY}x"}).status_code == 401
        assert c.get("/v1/health", headers={"Authorization": KEY}).status_code == 401
        r = c.post("/v1/predict", files={"file": ("x.png", png_bytes, "image/png")}, headers={"X-API-Key": KEY})
        assert r.status_code == 200
        assert c.get("/").status_code == 200 and 'id="api-key"' in c.get("/").text  # the page asks for it
        spec = c.get("/openapi.json").json()
        assert set(spec["components"]["securitySchemes"]) == {"bearer", "apiKey"}
        assert spec["paths"]["/v1/predict"]["post"]["security"]


def test_api_key_file(tmp_path) -> None:
    path = tmp_path / "key"
    path.write_text(KEY + "\n")
    path.chmod(0o600)
    assert read_api_key(path) == KEY
    path.write_text("short\n")
    with pytest.raises(CxrError, match="at least 16"):
        read_api_key(path)
    with pytest.raises(CxrError, match="not found"):
        read_api_key(tmp_path / "missing")


def test_exposed_host_without_key_warns(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="cxr.serve.app"):
        warn_exposure("0.0.0.0", has_key=False)
    assert any("without an API key" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cxr.serve.app"):
        warn_exposure("0.0.0.0", has_key=True)
        warn_exposure("127.0.0.1", has_key=False)
    assert not any("without an API key" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("field,value,flag", [("max_queue", 0, "--max-queue"), ("timeout_s", -1, "--timeout"),
                                              ("max_pixels", 10**9, "--max-pixels"), ("max_body_mb", 0, "--max-body-mb"),
                                              ("idle_timeout_s", float("nan"), "--idle-timeout")])
def test_limits_are_validated(field: str, value, flag: str) -> None:
    with pytest.raises(CxrError, match=flag):
        ServeLimits(**{field: value})


# ------------------------------------------------------------------------------------ queue, deadlines


def test_full_queue_is_503_with_retry_after(predictor: Predictor, png_bytes: bytes, monkeypatch) -> None:
    release = threading.Event()
    real = predictor.predict_tensor
    monkeypatch.setattr(predictor, "predict_tensor", lambda batch, tta=False: release.wait(30) and real(batch))
    app = create_app(predictor, limits=ServeLimits(max_queue=1))

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            first = asyncio.create_task(c.post("/v1/predict", files={"file": ("a.png", png_bytes, "image/png")}))
            while (await c.get("/v1/health")).json()["queued"] < 1:
                await asyncio.sleep(0.01)
            second = await c.post("/v1/predict", files={"file": ("b.png", png_bytes, "image/png")})
            release.set()
            return await first, second

    try:
        first, second = asyncio.run(scenario())
    finally:
        release.set()
        app.state.worker.stop()
    assert first.status_code == 200
    assert second.status_code == 503 and int(second.headers["retry-after"]) >= 1
    assert "busy" in second.json()["detail"]


def _asgi_call(app, chunks: list[bytes | None], headers: list[tuple[bytes, bytes]]) -> list[dict]:
    """Call the ASGI app directly; `chunks` are body pieces, None a pause longer than the idle timeout,
    and a trailing b"" disconnects the client."""
    sent: list[dict] = []

    async def run() -> None:
        pieces = list(chunks)

        async def receive() -> dict:
            if not pieces:
                await asyncio.sleep(3600)
            piece = pieces.pop(0)
            if piece is None:
                await asyncio.sleep(3600)
            if piece == b"":
                return {"type": "http.disconnect"}
            return {"type": "http.request", "body": piece, "more_body": True}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "path": "/v1/predict", "raw_path": b"/v1/predict", "query_string": b"", "root_path": "",
                 "headers": headers, "client": ("127.0.0.1", 5555), "server": ("127.0.0.1", 80), "scheme": "http"}
        await asyncio.wait_for(app(scope, receive, send), 10)

    asyncio.run(run())
    return sent


MULTIPART = [(b"content-type", b"multipart/form-data; boundary=xyz"), (b"content-length", b"100000")]


def test_stalled_body_is_408_in_one_log_line(predictor: Predictor, caplog) -> None:
    app = create_app(predictor, limits=ServeLimits(timeout_s=5, idle_timeout_s=0.2))
    with caplog.at_level(logging.INFO):
        sent = _asgi_call(app, [b"--xyz\r\n", None], MULTIPART)
    assert sent[0]["status"] == 408 and (b"connection", b"close") in sent[0]["headers"]
    lines = [r for r in caplog.records if "dropped slow upload" in r.getMessage()]
    assert len(lines) == 1 and "127.0.0.1:5555" in lines[0].getMessage() and not lines[0].exc_info
    assert not any(r.exc_info for r in caplog.records)


def test_aborted_upload_is_one_line_not_a_traceback(predictor: Predictor, caplog) -> None:
    app = create_app(predictor)
    with caplog.at_level(logging.INFO):
        sent = _asgi_call(app, [b"--xyz\r\nContent-Disposition: form-data; name=\"file\"", b""], MULTIPART)
    assert sent == []  # nobody to answer
    lines = [r.getMessage() for r in caplog.records if "went away" in r.getMessage()]
    assert len(lines) == 1 and "POST /v1/predict" in lines[0]
    assert not any(r.exc_info for r in caplog.records)


@pytest.mark.parametrize("flags,words", [(["--max-queue", "0"], "--max-queue"), (["--timeout", "0"], "--timeout"),
                                         (["--max-pixels", "60000000"], "--max-pixels"),
                                         (["--api-key-file", "/nonexistent/key"], "--api-key-file")])
def test_serve_flags_are_validated_before_loading(run_checkpoint, capsys, flags, words) -> None:
    from cxr.cli import main

    assert main(["serve", str(run_checkpoint), "--port", "8123", *flags]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
