"""ONNX and TorchScript export: dynamic batch, recorded preprocessing, parity with PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from cxr.cli import main
from cxr.config import ModelConfig, RunConfig
from cxr.data.synthetic import CLASSES
from cxr.export import (
    PARITY_TOLERANCE,
    TORCHSCRIPT_META,
    check_export,
    export_onnx,
    export_torchscript,
    parity_inputs,
    read_onnx_metadata,
)
from cxr.transforms import Preprocessing

SIZE = 64
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, calibrated_model) -> Path:
    """EfficientNet-Lite0, random init with calibrated BatchNorm statistics (non-uniform outputs)."""
    cfg = RunConfig(name="tiny", model=ModelConfig(backbone="efficientnet_lite0", weights="random", head=(32,), freeze="none"))
    model = calibrated_model(cfg.model, len(CLASSES), SIZE)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", model=model, config=cfg,
                           classes=list(CLASSES), preprocessing=Preprocessing(mode="half", size=SIZE), epoch=1)


def test_onnx_parity_dynamic_batch_and_metadata(checkpoint: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    out = export_onnx(checkpoint, tmp_path / "model.onnx", opset=17)
    assert check_export(checkpoint, out, "onnx") < PARITY_TOLERANCE  # 16 images, one batch
    meta = read_onnx_metadata(out)
    assert meta["classes"] == list(CLASSES)
    assert meta["preprocessing_mode"] == "half" and meta["input_size"] == SIZE
    assert meta["channel_order"] == "RGB" and meta["mean"] == [127.5] * 3
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["probabilities", "logits"]
    model = model_from_checkpoint(load_checkpoint(checkpoint))
    x = parity_inputs(Preprocessing(mode="half", size=SIZE), 3, seed=5)
    for batch in (x[:1], x):
        probs, logits = session.run(None, {"input": batch.numpy()})
        assert probs.shape == (len(batch), len(CLASSES))
        with torch.no_grad():
            expected = torch.softmax(model(batch), dim=1).numpy()
        np.testing.assert_allclose(probs, expected, atol=PARITY_TOLERANCE)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert np.ptp(probs) > 1e-3  # outputs are not trivially uniform


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_parity_and_metadata(checkpoint: Path, tmp_path: Path) -> None:
    out = export_torchscript(checkpoint, tmp_path / "model.ts.pt")
    assert check_export(checkpoint, out, "torchscript") < PARITY_TOLERANCE
    files = {TORCHSCRIPT_META: ""}
    loaded = torch.jit.load(str(out), _extra_files=files)
    meta = json.loads(files[TORCHSCRIPT_META])
    assert meta["classes"] == list(CLASSES) and meta["input_size"] == SIZE
    probs, _ = loaded(parity_inputs(Preprocessing(mode="half", size=SIZE), 5))
    assert probs.shape == (5, len(CLASSES))


def test_cli_export_check(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.pt"
    assert main(["export", str(checkpoint), "--format", "torchscript", "--out", str(out), "--check"]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and "parity on 16 images" in text and "(ok," in text
    with pytest.raises(SystemExit) as exc:
        main(["export", str(checkpoint), "--format", "tflite", "--out", str(out)])
    assert exc.value.code == 2 and "invalid choice: 'tflite'" in capsys.readouterr().err


@pytest.mark.parametrize(("fmt", "name", "hint"), [("onnx", "model.pt", "model.onnx"),
                                                   ("torchscript", "model.onnx", "model.pt")])
def test_cli_export_refuses_a_suffix_of_another_format(fmt: str, name: str, hint: str, checkpoint: Path,
                                                       tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / name
    assert main(["export", str(checkpoint), "--format", fmt, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"does not fit --format {fmt}: name it {hint}" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_int8_quantization_and_folder_evaluation(checkpoint: Path, tmp_path: Path) -> None:
    from PIL import Image

    from cxr.data.synthetic import make_image
    from cxr.export import evaluate_variants, quantize_onnx_int8

    pre = Preprocessing(mode="half", size=SIZE)
    fp32 = export_onnx(checkpoint, tmp_path / "m.onnx")
    int8 = quantize_onnx_int8(fp32, tmp_path / "m.int8.onnx", parity_inputs(pre, 8, seed=1))
    meta = read_onnx_metadata(int8)
    assert meta["classes"] == list(CLASSES) and "int8" in meta["quantization"]
    assert int8.stat().st_size < fp32.stat().st_size / 2
    rng = np.random.default_rng(0)
    for label in CLASSES:
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(make_image(label, rng, size=SIZE)).save(tmp_path / "data" / label / f"{i}.png")
    report = evaluate_variants(checkpoint, {"onnx_fp32": fp32, "onnx_int8": int8}, tmp_path / "data")
    assert report["n"] == 2 * len(CLASSES)
    assert report["onnx_fp32"]["agreement_with_pytorch"] == 1.0
    assert report["onnx_fp32"]["max_abs_prob_diff"] < PARITY_TOLERANCE
    assert 0.0 <= report["onnx_int8"]["accuracy"] <= 1.0
    assert report["onnx_int8"]["accuracy_change"] == pytest.approx(
        report["onnx_int8"]["accuracy"] - report["pytorch_fp32"]["accuracy"])
