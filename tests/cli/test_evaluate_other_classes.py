"""`cxr evaluate --checkpoint CKPT --data DIR` on data holding only some of the classes (names mapped by
--label-map): scored as an external set on the classes it holds, not refused as a class mismatch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cxr.checkpoint import save_checkpoint
from cxr.cli import main
from cxr.config import ModelConfig, RunConfig
from cxr.data.synthetic import CLASSES, generate_dataset
from cxr.errors import ClassMismatch
from cxr.study import evaluate_checkpoint
from cxr.transforms import Preprocessing

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 32


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, calibrated_model) -> Path:
    cfg = RunConfig(name="tiny", model=ModelConfig(backbone="efficientnet_lite0", weights="random", head=(8,),
                                                   freeze="none"))
    cfg.eval.bootstrap = 20
    model = calibrated_model(cfg.model, len(CLASSES), SIZE)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt", model=model, config=cfg,
                           classes=list(CLASSES), preprocessing=Preprocessing(mode="half", size=SIZE), epoch=1)


def test_two_of_four_classes_under_other_names_are_scored_as_an_external_set(
        checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = generate_dataset(tmp_path / "hospB", n_per_class=3, size=32, seed=1, classes=["COVID", "Normal"])
    (data / "COVID").rename(data / "COVID-19")
    (data / "Normal").rename(data / "NORMAL")
    label_map = tmp_path / "map.yaml"
    label_map.write_text("COVID-19: COVID\nNORMAL: Normal\n")
    with pytest.raises(ClassMismatch, match="is scored with --external NAME="):  # the library says how
        evaluate_checkpoint(checkpoint, data, device="cpu", progress=False)
    out = tmp_path / "out"
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(data), "--label-map", str(label_map),
                 "--out", str(out), "--device", "cpu", "--engine", "torch"]) == 0
    captured = capsys.readouterr()
    assert "class mismatch" not in captured.err and "scored as an external set" in captured.err
    assert "external hospB n=6 (COVID, Normal): accuracy" in captured.out
    entry = json.loads((out / "metrics.json").read_text())["external"]["sets"]["hospB"]
    assert entry["metrics"]["classes_present"] == ["COVID", "Normal"] and entry["metrics"]["n"] == 6
