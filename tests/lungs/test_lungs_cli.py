"""`cxr lungs train | predict | eval` end to end on tiny synthetic pairs (1 epoch, 64 px)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from cxr.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(synthetic_pairs, tmp_path_factory):
    out = tmp_path_factory.mktemp("lungrun") / "run"
    code = main(["lungs", "train", "--data", str(synthetic_pairs), "--masks", str(synthetic_pairs), "--out", str(out),
                 "--epochs", "1", "--size", "64", "--batch-size", "4", "--no-pretrained", "--engine", "torch",
                 "--threads", "1"])
    assert code == 0
    return out


def test_train_writes_model_split_scores_and_report(trained, capsys):
    for name in ("model.safetensors", "split.csv", "metrics.json", "per_image.csv", "overlays.png", "report.md"):
        assert (trained / name).is_file(), name
    metrics = json.loads((trained / "metrics.json").read_text())
    held = metrics["heldout"]
    assert held["n"] == 2 and metrics["trained_on"] == 6  # 8 pairs, 20% held out
    assert 0 <= held["dice"]["mean"] <= 1 and held["dice"]["ci"][0] <= held["dice"]["ci"][1]
    assert {"iou", "hd95", "suspect"} <= set(held)
    rows = list(csv.DictReader((trained / "split.csv").open()))
    assert sorted(r["split"] for r in rows) == ["heldout"] * 2 + ["train"] * 6
    assert "Dice" in (trained / "report.md").read_text()


def test_predict_writes_masks_that_masks_dir_reads(trained, tmp_path, capsys):
    from cxr.data.discover import discover
    from cxr.data.masks import attach_masks_dir
    from cxr.data.synthetic import generate_dataset

    data = generate_dataset(tmp_path / "plain", n_per_class=2, size=48, seed=1, classes=("Normal", "COVID"))
    out = tmp_path / "masks"
    assert main(["lungs", "predict", str(trained / "model.safetensors"), str(data), "--out", str(out),
                 "--engine", "torch"]) == 0
    files = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.png"))
    for rel in files:
        mask = np.asarray(Image.open(out / rel))
        assert mask.shape == (48, 48) and set(np.unique(mask)) <= {0, 255}
    rows = list(csv.DictReader((out / "qc.csv").open()))
    assert sorted(r["path"] for r in rows) == files and all(r["mask"] == r["path"] for r in rows)
    assert all(r["flag"] in ("ok", "suspect") and 0 <= float(r["area_fraction"]) <= 1 for r in rows)
    found = attach_masks_dir(discover(data), out)
    assert len(found.samples) == 4 and all(s.mask for s in found.samples)
    assert "4 masks in" in capsys.readouterr().out


def test_eval_scores_a_model_on_pairs(trained, synthetic_pairs, tmp_path, capsys):
    assert main(["lungs", "eval", str(trained / "model.safetensors"), str(synthetic_pairs), "--masks",
                 str(synthetic_pairs), "--engine", "torch", "--out", str(tmp_path / "ev")]) == 0
    assert "8 pairs: Dice" in capsys.readouterr().out
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["heldout"]["n"] == 8


def test_train_can_fine_tune_a_model_file_and_hold_out_a_site(trained, synthetic_pairs, tmp_path, capsys):
    out = tmp_path / "ft"
    assert main(["lungs", "train", "--data", str(synthetic_pairs), "--masks", str(synthetic_pairs), "--out", str(out),
                 "--init", str(trained / "model.safetensors"), "--epochs", "1", "--holdout-site", "covid",
                 "--engine", "torch", "--threads", "1"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["init"].endswith("model.safetensors") and metrics["sites"] == ["normal"]
    assert metrics["heldout"]["n"] == 4 and "site covid held out" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["lungs", "eval", "nope.safetensors", "."], "lung model file not found"),
    (["lungs", "train", "--data", ".", "--out", "x", "--holdout-site", "ZZZ"], "give the mask folder"),
    (["lungs", "predict", "a", "b", "c", "--out", "x"], "path not found"),
])
def test_bad_input_is_one_line_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) if argv[1] == "predict" else _no_raise():
        assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_holdout_site_that_matches_nothing_names_the_sites(synthetic_pairs, tmp_path, capsys):
    assert main(["lungs", "train", "--data", str(synthetic_pairs), "--masks", str(synthetic_pairs),
                 "--out", str(tmp_path / "r"), "--holdout-site", "CHNCXR"]) == 2
    err = capsys.readouterr().err
    assert "--holdout-site 'CHNCXR'" in err and "sites here: covid, normal" in err


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
