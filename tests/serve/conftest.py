"""Serve fixtures: a tiny checkpoint in a run-directory layout, an X-ray PNG, a live uvicorn server."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr.checkpoint import save_checkpoint
from cxr.config import DataConfig, ModelConfig, RunConfig
from cxr.data.synthetic import CLASSES, make_image
from cxr.predict import Predictor
from cxr.transforms import Preprocessing

SIZE = 64
TEST_ACCURACY = 0.8125  # planted in the run's metrics.json; the model card must show it
SERVER_START_TIMEOUT_S = 30.0


@pytest.fixture(scope="session")
def run_checkpoint(tmp_path_factory: pytest.TempPathFactory, calibrated_model) -> Path:
    """runs/tiny/checkpoints/best.pt (EfficientNet-Lite0, random init with calibrated BatchNorm
    statistics so outputs are not uniform) beside a metrics.json with test metrics."""
    run = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = RunConfig(name="tiny", data=DataConfig(root=str(run.parent / "secret-location" / "cxr4-dev")),
                    model=ModelConfig(backbone="efficientnet_lite0", weights="random", head=(32,), freeze="none"))
    model = calibrated_model(cfg.model, len(CLASSES), SIZE)
    path = save_checkpoint(run / "checkpoints" / "best.pt", model=model, config=cfg, classes=list(CLASSES),
                           preprocessing=Preprocessing(mode="half", size=SIZE), epoch=3,
                           metrics={"epoch": 3, "val_accuracy": 0.75, "val_loss": 0.9})
    test = {"n": 32, "accuracy": TEST_ACCURACY, "macro_f1": 0.8, "ci": {"accuracy": [0.7, 0.9]},
            "per_class": {c: {"precision": 0.8, "recall": 0.8, "f1": 0.8, "support": 8} for c in CLASSES}}
    (run / "metrics.json").write_text(json.dumps({"test": test, "classes": list(CLASSES),
                                                  "split_counts": {"train": 100, "val": 16, "test": 32}}))
    return path


@pytest.fixture(scope="session")
def predictor(run_checkpoint: Path) -> Predictor:
    return Predictor.from_checkpoint(run_checkpoint, device="cpu", precision="fp32")


@pytest.fixture(scope="session")
def xray() -> np.ndarray:
    return make_image("Viral_Pneumonia", np.random.default_rng(0), size=96)


@pytest.fixture(scope="session")
def png_bytes(xray: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(xray).save(buf, format="PNG")
    return buf.getvalue()


class ServerThread:
    """uvicorn in a daemon thread on a free 127.0.0.1 port (the socket is bound before start)."""

    def __init__(self, app) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_keep_alive=5))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(SERVER_START_TIMEOUT_S)
        self.sock.close()


@pytest.fixture(scope="module")
def live_server(predictor: Predictor) -> Iterator[ServerThread]:
    """The app with a 1 MB body limit, served over real HTTP."""
    from cxr.serve.app import create_app

    with ServerThread(create_app(predictor, max_body_mb=1)) as server:
        yield server
