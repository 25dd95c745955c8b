"""The library backbones from the command line: `cxr model summary|list`, a study with tv:densenet121
(feature cache, TensorBoard tracking), Grad-CAM and export of its checkpoint."""

from __future__ import annotations

import json

import pytest

from cxr.cli import main
from cxr.data.synthetic import generate_dataset

timm = pytest.importorskip("timm")


pytestmark = pytest.mark.usefixtures("one_thread")  # the `cxr` logger is restored by conftest


def _head(width: int, classes: int = 4) -> int:
    widths = [width, 2048, 512, 128, classes]
    return sum(a * b + b for a, b in zip(widths, widths[1:], strict=False))


@pytest.mark.parametrize("backbone,count,library", [
    ("tv:densenet121", 6_953_856, "torchvision densenet121 without its classifier"),
    ("timm:convnext_tiny", 27_820_128, "timm convnext_tiny with num_classes=0"),
])
def test_summary_prints_the_counts_beside_the_librarys(backbone, count, library, capsys):
    argv = ["model", "summary", "--backbone", backbone, "--weights", "random", "--freeze", "base", "--classes", "4",
            "--input-size", "64", "--depth", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    width = {"tv:densenet121": 1024, "timm:convnext_tiny": 768}[backbone]
    assert f"backbone {count:,} ({library}" in out
    assert f"Total params: {count + _head(width):,}" in out and f"Non-trainable params: {count:,}" in out
    assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total"] == count + _head(width)


def test_model_list_shows_families_and_filters_timm(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "torch" / "hub" / "checkpoints" / "densenet121-a639ec97.pth").write_bytes(b"x")
    assert main(["model", "list"]) == 0
    out = capsys.readouterr().out
    assert "timm:NAME" in out and "tv:densenet121" in out and "xrv:densenet121-res224-all" in out
    assert "densenet121-a639ec97.pth" in out  # the cached file is listed
    assert main(["model", "list", "--family", "timm", "--filter", "convnext", "--json"]) == 0
    names = json.loads(capsys.readouterr().out)
    assert "timm:convnext_tiny" in names and all("convnext" in n for n in names)
    assert names == [f"timm:{n}" for n in timm.list_models("*convnext*")]


def test_offline_imagenet_on_a_timm_backbone_fails_with_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert main(["model", "summary", "--backbone", "timm:test_resnet", "--weights", "imagenet", "--json"]) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "model.safetensors" in errors[0] and str(tmp_path / "hf") in errors[0]
    assert captured.out == ""


@pytest.mark.slow
def test_a_densenet121_study_explains_and_exports(tmp_path, capsys):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

    data = generate_dataset(tmp_path / "data", n_per_class=6, size=40, seed=3)
    out = tmp_path / "runs" / "dn"
    code = main(["run", "--data", str(data), "--out", str(out), "--backbone", "tv:densenet121", "--weights", "random",
                 "--epochs", "2", "--batch-size", "8", "--track", "tensorboard", "--set", "data.image_size=32",
                 "--set", "data.num_workers=0", "--set", "model.head=[16]", "--set", "eval.bootstrap=10",
                 "--set", "eval.aug_samples=2", "--set", "eval.grid_per_class=1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.strip().splitlines()[-1] == str(out / "report.html")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["feature_cache"] is True
    events = accumulator.EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("val/loss")] == [1, 2]
    assert events.Scalars("test/accuracy")[0].value == pytest.approx(metrics["test"]["accuracy"])
    assert any(tag.startswith("figures/") for tag in events.Tags()["images"])

    image = next(data.rglob("*.png"))
    best = out / "checkpoints" / "best.pt"
    for extra in ([], ["--cam-layer", "features.denseblock3"]):
        heat = tmp_path / f"heat{len(extra)}.png"
        assert main(["explain", str(best), str(image), "--out", str(heat), "--device", "cpu", *extra]) == 0
        assert heat.stat().st_size > 0 and "heatmap" in capsys.readouterr().out
    assert main(["explain", str(best), str(image), "--out", str(tmp_path / "x.png"), "--cam-layer", "features.nope"]) == 2
    assert main(["export", str(best), "--format", "onnx", "--out", str(tmp_path / "dn.onnx"), "--check"]) == 0
    assert (tmp_path / "dn.onnx").is_file()
