"""The web page in a real headless Chromium: upload an X-ray, see the label, bars and heatmap.

Needs Debian's `chromium` and the `playwright` Python package (its own browser download is never
used); skipped when either is missing. Set CXR_CHROMIUM to use another Chromium binary.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from cxr.data.synthetic import CLASSES

from .conftest import ServerThread

pytestmark = pytest.mark.slow
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 60_000


def _chromium() -> str | None:
    candidates = [os.environ.get("CXR_CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser")]
    return next((c for c in candidates if c and Path(c).is_file()), None)


@pytest.fixture(scope="module")
def page(live_server: ServerThread) -> Iterator:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    executable = _chromium()
    if executable is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            pg = browser.new_page(viewport={"width": 1100, "height": 800})
            pg.set_default_timeout(TIMEOUT_MS)
            yield pg
        finally:
            browser.close()


def test_upload_shows_label_bars_and_heatmap(page, live_server: ServerThread, xray, tmp_path: Path) -> None:
    image = tmp_path / "chest.png"
    Image.fromarray(xray).save(image)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(live_server.url + "/")
    page.wait_for_function("document.getElementById('model').textContent.includes('classes:')")
    assert "not a medical device" in page.inner_text("#disclaimer")

    page.set_input_files("#file", str(image))
    page.wait_for_function("document.getElementById('label').textContent.length > 0")
    label = page.inner_text("#label")
    assert label in CLASSES
    bars = page.locator("#bars .bar")
    assert bars.count() == len(CLASSES)
    assert page.locator("#bars .bar.top").get_attribute("data-class") == label
    preview_src = page.get_attribute("#preview", "src")
    assert preview_src.startswith("blob:")

    page.check("#heatmap-toggle")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('heatmap for')")
    page.wait_for_function(f"document.getElementById('preview').src !== {preview_src!r}")
    assert page.evaluate("document.getElementById('preview').naturalWidth") == xray.shape[1]
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    shot_dir = os.environ.get("CXR_SCREENSHOT_DIR")
    if shot_dir:
        shutil.copy(tmp_path / "page.png", Path(shot_dir) / "serve_page.png")

    page.uncheck("#heatmap-toggle")
    assert page.get_attribute("#preview", "src") == preview_src
    assert page.inner_text("#error") == ""
    assert page.is_visible("#docs-link") and page.get_attribute("#docs-link", "href") == "/docs"

    text = tmp_path / "notes.txt"  # a failed upload takes back the previous image's heatmap offer
    text.write_text("not an x-ray")
    page.set_input_files("#file", str(text))
    page.wait_for_function("document.getElementById('error').textContent.length > 0")
    assert page.is_disabled("#heatmap-toggle") and page.inner_text("#heatmap-class") == "the top class"
    assert errors == []


def test_bad_upload_shows_error(page, live_server: ServerThread, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an x-ray")
    page.goto(live_server.url + "/")
    page.set_input_files("#file", str(text))
    page.wait_for_function("document.getElementById('error').textContent.length > 0")
    assert "415" in page.inner_text("#error")
    assert page.inner_text("#label") == ""


API_KEY = "browser-test-key-0123456789"


def test_page_sends_the_api_key(page, predictor, xray, tmp_path: Path) -> None:
    from cxr.serve.app import create_app

    image = tmp_path / "chest.png"
    Image.fromarray(xray).save(image)
    with ServerThread(create_app(predictor, api_key=API_KEY)) as server:
        page.goto(server.url + "/")
        page.wait_for_function("document.getElementById('model').textContent.includes('needs an API key')")
        page.fill("#api-key", API_KEY)
        page.dispatch_event("#api-key", "change")
        page.wait_for_function("document.getElementById('model').textContent.includes('classes:')")
        page.set_input_files("#file", str(image))
        page.wait_for_function("document.getElementById('label').textContent.length > 0")
        assert page.inner_text("#label") in CLASSES and page.inner_text("#error") == ""


def test_docs_render_from_local_assets(page, live_server: ServerThread, tmp_path: Path) -> None:
    from cxr.serve.docs import swagger_assets

    if swagger_assets() is None:
        pytest.skip("swagger-ui-bundle is not installed")
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    page.goto(live_server.url + "/docs")
    page.wait_for_selector("#operations-default-predict_batch_v1_predict_batch_post")
    page.click("#operations-default-predict_v1_predict_post .opblock-summary")
    page.wait_for_selector("#operations-default-predict_v1_predict_post input[type=file]")  # /docs can upload
    page.screenshot(path=str(tmp_path / "docs.png"), full_page=True)
    shot_dir = os.environ.get("CXR_SCREENSHOT_DIR")
    if shot_dir:
        shutil.copy(tmp_path / "docs.png", Path(shot_dir) / "serve_docs.png")
    assert urls and all(url.startswith(live_server.url) for url in urls), urls  # no CDN
