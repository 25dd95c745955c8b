"""Temperature scaling: fitted on validation scores, stored in the checkpoint, applied by evaluate,
Predictor (predict, explain), and the ONNX/TorchScript exports; checkpoints without it act as T = 1."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.special import softmax

from cxr import study
from cxr.checkpoint import load_checkpoint, save_checkpoint
from cxr.config import ModelConfig, RunConfig
from cxr.data.synthetic import CLASSES, generate_dataset, make_image
from cxr.errors import CxrError
from cxr.explain import explain
from cxr.metrics import expected_calibration_error
from cxr.predict import Predictor
from cxr.study.calibrate import MIN_CALIBRATION_IMAGES, calibrate, calibration_entry, fit, from_logits
from cxr.temperature import TEMPERATURE_KEY, TemperatureScaled, temperature_of, update_extra
from cxr.transforms import Preprocessing

SIZE = 48
T = 2.5


def _overconfident(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and logits of a model right ~75% of the time but sure of itself (logits 4x too large)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    logits = rng.normal(size=(n, 4))
    logits[np.arange(n), y] += 1.5
    return y, 4.0 * logits


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, calibrated_model) -> Path:
    cfg = RunConfig(name="tiny", model=ModelConfig(backbone="efficientnet_lite0", weights="random", head=(16,),
                                                  freeze="none"))
    cfg.data.num_workers = 0
    cfg.eval.bootstrap = 20
    model = calibrated_model(cfg.model, len(CLASSES), SIZE)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "plain.pt", model=model, config=cfg,
                           classes=list(CLASSES), preprocessing=Preprocessing(mode="half", size=SIZE), epoch=1)


@pytest.fixture(scope="module")
def scaled(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "scaled.pt"
    shutil.copy(checkpoint, path)
    update_extra(path, {TEMPERATURE_KEY: T})
    return path


def test_fit_on_validation_lowers_the_ece_of_other_images(tmp_path: Path, checkpoint: Path) -> None:
    val = from_logits(*_overconfident(600, 0))
    path = tmp_path / "best.pt"
    shutil.copy(checkpoint, path)
    rescored, record = calibrate(val, path)
    assert record["temperature"] > 2.0 and record["fitted_on"] == "val"  # the logits were 4x too large
    assert temperature_of(load_checkpoint(path)) == pytest.approx(record["temperature"])
    assert rescored.loss < val.loss_raw
    test = from_logits(*_overconfident(600, 1), temperature=record["temperature"])  # images never fitted on
    entry = calibration_entry(test, record, bins=15, n_boot=50, seed=0)
    assert entry["after"]["ece"] < entry["before"]["ece"]
    assert entry["before"]["ece"] == pytest.approx(expected_calibration_error(test.y, test.raw, 15))
    for side in ("before", "after"):
        low, high = entry[side]["ece_ci"]
        assert low < entry[side]["ece"] < high
    assert entry["after"]["accuracy"] == entry["before"]["accuracy"]  # no decision changes


def test_temperature_stays_one_on_tiny_or_separable_validation() -> None:
    y, logits = _overconfident(MIN_CALIBRATION_IMAGES - 1, 2)
    assert fit(from_logits(y, logits))[0] == 1.0
    y = np.arange(40) % 4
    separable = np.eye(4)[y] * 5.0
    temperature, how, _ = fit(from_logits(y, separable))
    assert temperature == 1.0 and "every validation image" in how


def test_temperature_stays_one_without_evidence_of_miscalibration() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(400, 4)) * 2.0
    y = np.array([rng.choice(4, p=p) for p in softmax(logits, axis=1)])  # calibrated by construction
    temperature, how, found = fit(from_logits(y, logits))
    low, high = found["fitted_ci"]
    assert temperature == 1.0 and low <= 1.0 <= high and "no evidence of miscalibration" in how
    y = np.arange(24) % 4  # nearly separable: resamples without the one mistake have no finite optimum
    nearly = np.eye(4)[y] * 6.0
    nearly[0] = [0.0, 6.0, 0.0, 0.0]
    temperature, how, found = fit(from_logits(y, nearly))
    assert temperature == 1.0 and "search bound" in how and found["fitted"] != 1.0


def test_old_checkpoints_are_temperature_one_and_bad_values_are_refused(checkpoint: Path) -> None:
    assert temperature_of(load_checkpoint(checkpoint)) == 1.0
    with pytest.raises(CxrError, match="finite number > 0"):
        temperature_of({"extra": {TEMPERATURE_KEY: -1}})
    with pytest.raises(CxrError, match="finite number > 0"):
        TemperatureScaled(torch.nn.Identity(), 0.0)


def test_predictor_and_explain_divide_the_logits(checkpoint: Path, scaled: Path) -> None:
    plain = Predictor.from_checkpoint(checkpoint, device="cpu", precision="fp32")
    hot = Predictor.from_checkpoint(scaled, device="cpu", precision="fp32")
    assert (plain.temperature, hot.temperature) == (1.0, T)
    image = make_image("COVID", np.random.default_rng(0), size=64)
    x = plain.preprocess(image)[None]
    with torch.no_grad():
        logits = plain.model(x).double().numpy()
    np.testing.assert_allclose(plain.predict_tensor(x), softmax(logits, axis=1), atol=1e-5)
    np.testing.assert_allclose(hot.predict_tensor(x), softmax(logits / T, axis=1), atol=1e-5)
    assert hot.predict([image])[0].label == plain.predict([image])[0].label  # T never changes a decision
    shown = explain(hot, image).prediction.probabilities
    np.testing.assert_allclose(list(shown.values()), softmax(logits / T, axis=1)[0], atol=1e-5)


def test_evaluate_applies_and_reports_the_temperature(checkpoint: Path, scaled: Path, tmp_path: Path) -> None:
    data = generate_dataset(tmp_path / "data", n_per_class=3, size=SIZE, seed=0)
    plain = study.evaluate_checkpoint(checkpoint, data, "all", progress=False)
    hot = study.evaluate_checkpoint(scaled, data, "all", out_dir=tmp_path / "ev", progress=False)
    assert plain["temperature"] == 1.0 and hot["temperature"] == T
    assert hot["accuracy"] == plain["accuracy"] and hot["loss"] != pytest.approx(plain["loss"], abs=1e-6)
    assert hot["calibration"]["before"]["nll"] == pytest.approx(plain["loss"], abs=1e-6)
    assert hot["calibration"]["after"]["nll"] == pytest.approx(hot["loss"])
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())["test"]
    assert saved["temperature"] == T and saved["ece"] == pytest.approx(hot["ece"])
    assert (tmp_path / "ev" / "figures" / "reliability_calibrated.png").is_file()


def test_exports_divide_by_the_temperature_inside_the_graph(scaled: Path, tmp_path: Path) -> None:
    from cxr import export as ex

    pytest.importorskip("onnxruntime")
    hot = Predictor.from_checkpoint(scaled, device="cpu", precision="fp32")
    x = ex.parity_inputs(hot.preprocessing, 4)
    expected = hot.predict_tensor(x)
    onnx_path = ex.export_onnx(scaled, tmp_path / "m.onnx")
    assert ex.read_onnx_metadata(onnx_path)["temperature"] == T
    probs, logits = ex.ort_session(onnx_path).run(None, {ex.INPUT_NAME: x.numpy()})
    np.testing.assert_allclose(probs, expected, atol=1e-4)
    np.testing.assert_allclose(softmax(logits, axis=1), expected, atol=1e-4)  # logits already divided by T
    ts_path = ex.export_torchscript(scaled, tmp_path / "m.pt")
    files = {ex.TORCHSCRIPT_META: ""}
    loaded = torch.jit.load(str(ts_path), _extra_files=files)
    assert json.loads(files[ex.TORCHSCRIPT_META])["temperature"] == T
    with torch.no_grad():
        np.testing.assert_allclose(loaded(x)[0].numpy(), expected, atol=1e-4)
    assert ex.check_export(scaled, onnx_path, "onnx") < ex.PARITY_TOLERANCE


def test_cli_explain_writes_the_overlay_and_a_labelled_figure(scaled: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from cxr.cli import main

    image = tmp_path / "x.png"
    Image.fromarray(make_image("Normal", np.random.default_rng(1), size=100)).save(image)
    out = tmp_path / "heat.png"
    assert main(["explain", str(scaled), str(image), "--out", str(out), "--class", "COVID"]) == 0
    figure = tmp_path / "heat.figure.png"
    assert figure.is_file() and (tmp_path / "heat.figure.svg").is_file()
    with Image.open(figure) as im:
        assert im.size[0] > 2 * 100  # the X-ray and the overlay side by side, a colour bar
    svg = (tmp_path / "heat.figure.svg").read_text()
    assert "COVID" in svg and "Grad-CAM" in svg and "relative importance" in svg  # class, probability, bar
    assert "heat.figure.png" in capsys.readouterr().out
