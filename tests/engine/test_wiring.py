"""Engines where users meet them: Predictor, `cxr predict`/`evaluate`, the feature cache, config and flags;
and progress lines off a terminal."""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest
import torch
from PIL import Image

from cxr import progress
from cxr.checkpoint import save_checkpoint
from cxr.cli import build_parser, main
from cxr.cli.flags import RUN_FLAGS, flag_overrides
from cxr.config import ModelConfig, RunConfig, load_config
from cxr.data.synthetic import CLASSES, generate_dataset
from cxr.engine.base import installed
from cxr.errors import CxrError
from cxr.predict import Predictor
from cxr.rundir import SplitRow
from cxr.transforms import Preprocessing

EXPORTED = "onnxruntime" if installed("onnxruntime") else "openvino"
needs_export = pytest.mark.skipif(not (installed("onnxruntime") or installed("openvino")),
                                  reason="neither onnxruntime nor openvino is installed")
LINE = re.compile(r"^(?P<desc>[\w ]+): (?P<done>\d+)/(?P<total>\d+) img \(\d+%\), [\d.]+ img/s(, ETA \d+ s)?, elapsed")


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path, one_thread):
    """One thread and a private engine cache (the `cxr` logger is restored by conftest)."""
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, calibrated_model):
    """EfficientNet-Lite0 at 32 px, random init with calibrated BatchNorms (outputs not uniform)."""
    cfg = RunConfig(name="tiny", model=ModelConfig(backbone="efficientnet_lite0", weights="random", head=(8,)))
    cfg.data.num_workers, cfg.eval.bootstrap = 0, 10
    model = calibrated_model(cfg.model, 3, 32)
    path = tmp_path_factory.mktemp("run") / "checkpoints" / "best.pt"
    return save_checkpoint(path, model=model, config=cfg, classes=list(CLASSES[:3]),
                           preprocessing=Preprocessing("half", 32), epoch=1)


@pytest.fixture()
def data(tmp_path):
    return generate_dataset(tmp_path / "data", n_per_class=3, size=32, seed=3, classes=CLASSES[:3])


@pytest.mark.slow  # an export, checked against PyTorch
@needs_export
def test_predictor_on_an_engine_predicts_what_pytorch_does(checkpoint, data):
    images = [np.array(Image.open(p)) for p in sorted(data.rglob("*.png"))]
    torch_preds = Predictor.from_checkpoint(checkpoint, device="cpu", precision="fp32").predict(images)
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu", precision="fp32", engine=EXPORTED)
    assert predictor.engine_name == EXPORTED
    preds = predictor.predict(images, tta=True) and predictor.predict(images)
    for a, b in zip(preds, torch_preds, strict=True):
        assert a.label == b.label
        np.testing.assert_allclose(list(a.probabilities.values()), list(b.probabilities.values()), atol=1e-4)
    logits = torch.tensor([[0.0, 1.0, 2.0]])
    assert torch.allclose(predictor.postprocess(logits), torch.softmax(logits, 1))


@needs_export
def test_predict_command_with_an_engine_logs_progress_lines_off_a_terminal(checkpoint, data, tmp_path, capsys,
                                                                          monkeypatch):
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.0)  # a line after every chunk
    out_engine, out_torch = tmp_path / "engine.json", tmp_path / "torch.json"
    argv = ["predict", str(checkpoint), str(data), "--batch-size", "4", "--threads", "1", "--precision", "fp32"]
    assert main([*argv, "--engine", EXPORTED, "--out", str(out_engine)]) == 0
    err = capsys.readouterr().err
    lines = [m for m in map(LINE.match, err.splitlines()) if m and m["desc"] == "predict"]
    assert [int(m["done"]) for m in lines][:3] == [4, 8, 9] and all(m["total"] == "9" for m in lines)
    assert f"inference on {EXPORTED}" in err and "vs PyTorch fp32 on 4 images" in err
    assert main([*argv, "--engine", "torch", "--out", str(out_torch)]) == 0
    labels = [[p["label"] for p in json.loads(f.read_text())["predictions"]] for f in (out_engine, out_torch)]
    assert labels[0] == labels[1]


def test_synthetic_generator_and_audit_log_progress_lines(tmp_path, caplog, monkeypatch):
    from cxr.data.audit import audit
    from cxr.data.discover import discover

    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.0)
    with caplog.at_level(logging.INFO, logger="cxr.progress"):
        root = generate_dataset(tmp_path / "d", n_per_class=2, size=32, classes=CLASSES[:2])
        audit(discover(root), workers=1)
    found = [m["desc"] for m in map(LINE.match, caplog.messages) if m]
    assert "synthetic images" in found and "reading images" in found


@pytest.mark.slow  # an export, checked against PyTorch
@needs_export
def test_evaluate_on_an_engine_scores_like_pytorch(checkpoint, data, tmp_path):
    from cxr.study import evaluate_checkpoint

    torch_metrics = evaluate_checkpoint(checkpoint, data, "all", device="cpu", precision="fp32", engine="torch")
    out = tmp_path / "eval"
    metrics = evaluate_checkpoint(checkpoint, data, "all", device="cpu", precision="fp32", engine=EXPORTED,
                                  out_dir=out)
    assert metrics["accuracy"] == torch_metrics["accuracy"]
    assert metrics["loss"] == pytest.approx(torch_metrics["loss"], abs=1e-4)
    assert json.loads((out / "metrics.json").read_text())["engine"].startswith(EXPORTED)
    with pytest.raises(CxrError, match="unknown engine 'tensorrt'"):
        evaluate_checkpoint(checkpoint, data, "all", device="cpu", engine="tensorrt")


@needs_export
def test_the_feature_cache_extracts_on_an_engine(tiny_classifier, data):
    from cxr.training.features import feature_loaders

    rows = [SplitRow(str(p.relative_to(data)), p.parent.name, ("train", "val", "test")[i % 3], p.stem)
            for i, p in enumerate(sorted(data.rglob("*.png")))]
    cfg = RunConfig()
    cfg.data.image_size, cfg.data.num_workers, cfg.train.batch_size, cfg.train.feature_views = 32, 0, 4, 1
    feats = {}
    for engine in ("torch", EXPORTED):
        cfg.train.engine = engine
        cache = data.parent / f"features-{engine}"
        loaders = feature_loaders(tiny_classifier(), data, rows, list(CLASSES[:3]), cfg, cache,
                                  torch.device("cpu"), "fp32")
        feats[engine] = np.concatenate([x.numpy() for x, _ in loaders["val"]])
        manifest = json.loads(next(cache.glob("*/manifest.json")).read_text())
        assert manifest["engine"].startswith(engine)
    np.testing.assert_allclose(feats[EXPORTED], feats["torch"], rtol=1e-3, atol=1e-3)


def test_config_keys_and_flags(tmp_path):
    assert RunConfig().train.engine == "torch" and RunConfig().eval.engine == "auto" and RunConfig().train.threads == 0
    cfg = load_config(None, {"train.engine": "openvino", "train.threads": 2, "eval.engine": "openvino-int8"})
    assert (cfg.train.engine, cfg.train.threads, cfg.eval.engine) == ("openvino", 2, "openvino-int8")
    with pytest.raises(CxrError, match=r"train\.engine: unknown value 'openvino-int8'; allowed: auto, torch"):
        load_config(None, {"train.engine": "openvino-int8"})  # int8 needs a trained head: prediction only
    with pytest.raises(CxrError, match="did you mean 'openvino'"):
        load_config(None, {"eval.engine": "openvno"})
    with pytest.raises(CxrError, match="train.threads"):
        load_config(None, {"train.threads": -1})

    parser = build_parser()
    args = parser.parse_args(["run", "--data", "x", "--engine", "onnxruntime", "--threads", "1"])
    assert flag_overrides(args, RUN_FLAGS) == {"eval.engine": "onnxruntime", "train.threads": 1}  # never the cache's
    for command in (["predict", str(tmp_path), str(tmp_path)], ["evaluate", "--checkpoint", "c", "--data", "d"],
                    ["serve", str(tmp_path)]):
        parsed = parser.parse_args([*command, "--engine", "openvino", "--threads", "3"])
        assert (parsed.engine, parsed.threads) == ("openvino", 3)
    assert parser.parse_args(["predict", str(tmp_path), str(tmp_path)]).engine == "auto"
    assert parser.parse_args(["evaluate", "--checkpoint", "c", "--data", "d"]).engine is None  # the checkpoint's
    with pytest.raises(SystemExit):
        parser.parse_args(["predict", str(tmp_path), str(tmp_path), "--engine", "fast"])
    with pytest.raises(SystemExit):
        parser.parse_args(["predict", str(tmp_path), str(tmp_path), "--threads", "-2"])
