"""A model trained on synthetic images says so wherever it is used: the log of whoever loads it
(Python API included), `cxr predict --out` JSON, the `cxr explain` figure and `/v1/explain`."""

from __future__ import annotations

import io
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr.checkpoint import save_checkpoint
from cxr.cli import main
from cxr.config import ModelConfig, RunConfig
from cxr.data.synthetic import CLASSES, make_image
from cxr.explain import explain
from cxr.notices import SYNTHETIC_FIGURE_NOTE, SYNTHETIC_WARNING
from cxr.predict import Predictor
from cxr.report.explain_figures import explanation_figure
from cxr.temperature import SYNTHETIC_KEY
from cxr.transforms import Preprocessing

SIZE = 48
NOTE_RGB = (0xB0, 0x00, 0x20)


@pytest.fixture(scope="module")
def demo_like(tmp_path_factory: pytest.TempPathFactory, calibrated_model) -> Path:
    """A tiny random checkpoint tagged as trained on synthetic images, as `cxr demo` tags its own."""
    cfg = RunConfig(name="demo", model=ModelConfig(backbone="efficientnet_lite0", weights="random", head=(8,),
                                                   freeze="none"))
    model = calibrated_model(cfg.model, len(CLASSES), SIZE)
    return save_checkpoint(tmp_path_factory.mktemp("synthetic") / "best.pt", model=model, config=cfg,
                           classes=list(CLASSES), preprocessing=Preprocessing(mode="half", size=SIZE), epoch=1,
                           extra={SYNTHETIC_KEY: True})


@pytest.fixture(scope="module")
def image_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "x.png"
    Image.fromarray(make_image("COVID", np.random.default_rng(0), size=64)).save(path)
    return path


def _has_note_colour(png: Path) -> bool:
    pixels = np.asarray(Image.open(png).convert("RGB")).reshape(-1, 3).astype(int)
    return bool((np.abs(pixels - NOTE_RGB).sum(axis=1) < 30).sum() > 20)


def test_loading_it_warns_in_the_python_api(demo_like: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cxr"):
        predictor = Predictor.from_checkpoint(demo_like, device="cpu")
    assert predictor.synthetic
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"WARNING: {predictor.name} was trained on synthetic images (cxr demo): its predictions have no medical "
        "meaning"]


def test_predict_json_has_a_warning_field(demo_like: Path, image_file: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "p.json"
    assert main(["-q", "predict", str(demo_like), str(image_file), "--out", str(out), "--engine", "torch"]) == 0
    assert json.loads(out.read_text())["warning"] == SYNTHETIC_WARNING
    assert capsys.readouterr().err.count("trained on synthetic images") == 1  # said once, not per layer


def test_the_explain_figure_carries_the_note(demo_like: Path, image_file: Path, tmp_path: Path) -> None:
    result = explain(Predictor.from_checkpoint(demo_like, device="cpu"), image_file)
    assert result.note == SYNTHETIC_FIGURE_NOTE
    figure = result.save_figure(tmp_path / "x.figure.png", formats=("png",))
    assert _has_note_colour(figure)
    plain = explanation_figure(result.image, result.cam, tmp_path / "plain.png", title=result.title)
    assert not _has_note_colour(plain)  # the red is the note's, not the heatmap's


def test_v1_explain_answers_with_a_warning_header(demo_like: Path, image_file: Path) -> None:
    from cxr.serve.app import create_app

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
        from fastapi.testclient import TestClient

    with TestClient(create_app(Predictor.from_checkpoint(demo_like, device="cpu"))) as client:
        r = client.post("/v1/explain", files={"file": ("x.png", image_file.read_bytes(), "image/png")})
    assert r.status_code == 200 and r.headers["x-cxr-warning"] == SYNTHETIC_WARNING
    assert Image.open(io.BytesIO(r.content)).size == (64, 64)
