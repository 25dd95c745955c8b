"""The seed recipe starts from ImageNet weights: offline it stops at once, in one line, leaving nothing."""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.error import URLError

import pytest
import torch

from cxr import study
from cxr.cli import main
from cxr.config import RunConfig, load_config
from cxr.data.synthetic import generate_dataset
from cxr.models import cache
from cxr.study import folder

REPO = Path(__file__).resolve().parents[2]
SEED_YAML = REPO / "configs" / "seed.yaml"


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache, the host unreachable and every download failing as it does without
    network; returns the hub dir."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(cache, "unreachable", lambda url, timeout=0.0: "download.pytorch.org unreachable: test")

    def no_network(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True) -> None:
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "torch" / "hub"


def test_the_seed_recipe_uses_imagenet_weights() -> None:
    assert RunConfig().model.weights == "imagenet" and RunConfig().model.backbone == "resnet50"
    assert load_config(SEED_YAML).model.weights == "imagenet"


def test_offline_seed_run_stops_before_the_data_in_one_line(offline: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    data = generate_dataset(tmp_path / "data", n_per_class=2, size=32, seed=0)

    def no_data_work(*args, **kwargs):
        raise AssertionError("the data were touched before the weights were checked")

    monkeypatch.setattr(study.data, "discover", no_data_work)
    monkeypatch.setattr(study.data, "audit", no_data_work)
    out = tmp_path / "runs" / "seed"
    code = main(["run", "--data", str(data), "--config", str(SEED_YAML), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    target = offline / "checkpoints" / "resnet50-11ad3fa6.pth"
    for part in (str(target), "https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
                 "--weights lite0-imagenet", "--weights file:PATH"):
        assert part in lines[0]
    assert not out.exists() and not (tmp_path / "runs").exists()  # no run folder left behind


def test_offline_force_keeps_the_existing_run(offline: Path, tmp_path: Path) -> None:
    data = generate_dataset(tmp_path / "data", n_per_class=2, size=32, seed=0)
    out = tmp_path / "old"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.pt").write_bytes(b"old")
    assert main(["-q", "run", "--data", str(data), "--out", str(out), "--force"]) == 2
    assert (out / "checkpoints" / "last.pt").read_bytes() == b"old"  # refused before --force deleted it


def test_random_weights_with_a_frozen_base_warn(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="cxr")
    cfg = RunConfig()
    cfg.model.weights = "random"
    folder.warn_untrained_backbone(cfg)
    assert "untrained backbone" in caplog.text and "not transfer learning" in caplog.text
    caplog.clear()
    cfg.train.finetune_epochs = 2  # the backbone learns in phase 2: no warning
    folder.warn_untrained_backbone(cfg)
    assert not caplog.text
