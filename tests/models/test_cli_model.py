"""`cxr model summary` and `cxr model weights`."""

from __future__ import annotations

import json

import pytest

from cxr.cli import main


def test_summary_json_is_the_seed_count(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "model",
        "summary",
        "--backbone",
        "resnet50",
        "--weights",
        "random",
        "--freeze",
        "base",
        "--classes",
        "4",
    ]
    assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "total": 28_819_652,
        "trainable": 5_311_620,
        "non_trainable": 23_508_032,
    }


def test_summary_table(capsys: pytest.CaptureFixture[str]) -> None:
    argv = (
        "model summary --backbone efficientnet_lite0 --weights random --freeze stages:1 --classes 3 "
        "--input-size 64 --depth 2"
    )
    code = main(argv.split())
    out = capsys.readouterr().out
    assert code == 0
    lines = {
        line.split()[0]: line.split() for line in out.splitlines() if line.startswith(("backbone.", "head."))
    }
    assert lines["backbone.conv_stem"][1:] == ["Conv2dSame", "1x32x32x32", "864", "no"]
    assert lines["backbone.conv_head"][-1] == "yes"
    assert lines["head.mlp"][1:3] == ["Sequential", "1x3"]
    head = 1280 * 2048 + 2048 + 2048 * 512 + 512 + 512 * 128 + 128 + 128 * 3 + 3
    assert f"Trainable params: {head + 1280 * 320 + 2 * 1280:,}" in out  # head + conv_head + bn2
    assert "preprocessing: half" in out


def test_summary_user_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", "summary", "--backbone", "resnet101"]) == 2
    assert main(["model", "summary", "--weights", "bogus", "--json"]) == 2
    assert main(["model", "summary", "--head", "2048,x", "--json"]) == 2
    assert capsys.readouterr().out == ""


def test_weights_listing(
    capsys: pytest.CaptureFixture[str], tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert main(["model", "weights", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["backbones"]["resnet50-keras"]["weights"] == "keras-imagenet:PATH, file:PATH, random"
    entry = info["torchvision"]["imagenet"]
    assert (
        entry["path"] == str(tmp_path / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth")
        and not entry["cached"]
    )
