"""'Did you mean' on the command line: subcommands, options, choices, config keys, backbones, weights, classes."""

from __future__ import annotations

import pytest
import torch

from cxr.cli import main
from cxr.data.synthetic import generate_dataset
from cxr.errors import CxrError
from cxr.predict import Predictor
from cxr.suggest import close_match, did_you_mean
from cxr.transforms import Preprocessing


def _parse_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert len(err.strip().splitlines()) == 1, err  # one line, no usage block, no traceback
    return err


def test_close_match():
    assert close_match("cosin", ["none", "step", "cosine"]) == "cosine"
    assert close_match("Covid", ["COVID", "Normal"]) == "COVID"  # case-insensitive first
    assert close_match("xyz", ["none", "step"]) is None
    assert did_you_mean("cosine", ["cosine"]) == ""
    assert did_you_mean("predcit", ["predict", "explain"]) == " (did you mean 'predict'?)"


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["predcit"], "did you mean 'predict'?"),
        (["model", "sumary"], "did you mean 'summary'?"),
        (["data", "splt", "x"], "did you mean 'split'?"),
        (["run", "--data", "x", "--epoch", "3"], "did you mean '--epochs'?"),
        (["demo", "--n-per-clas", "3"], "did you mean '--n-per-class'?"),
        (["predict", "x.pt", "img.png", "--batchsize", "3"], "did you mean '--batch-size'?"),
        (["evaluate", "--checkpoint", "x", "--data", "x", "--precision", "fp23"], "did you mean 'fp32'?"),
        (["evaluate", "--checkpoint", "x", "--data", "x", "--split", "tset"], "did you mean 'test'?"),
    ],
)
def test_parse_errors_suggest_and_take_one_line(argv, needle, capsys, tmp_path):
    if argv[0] == "predict":
        (tmp_path / "x.pt").write_bytes(b"")
        argv = ["predict", str(tmp_path / "x.pt"), str(tmp_path), *argv[3:]]
    assert needle in _parse_error(argv, capsys)


@pytest.mark.parametrize("typo", [["--outt", "x.csv"], ["--outt=x.csv"]])
def test_a_mistyped_option_before_the_positionals_is_named(typo, capsys, tmp_path):
    """`--outt x.csv CKPT IMG`: x.csv became the checkpoint; the error names the typo, not the path."""
    (tmp_path / "x.pt").write_bytes(b"")
    err = _parse_error(["predict", *typo, str(tmp_path / "x.pt"), str(tmp_path)], capsys)
    assert "unrecognized arguments: --outt" in err and "did you mean '--out'?" in err and "path not found" not in err


def test_abbreviated_options_are_mistakes_not_guesses(capsys):
    err = _parse_error(["run", "--data", "x", "--epoch", "3"], capsys)
    assert "unrecognized arguments: --epoch 3" in err


@pytest.mark.parametrize(
    "setting,needle",
    [
        (["--set", "train.epoch=3"], "unknown config key 'train.epoch' (did you mean 'train.epochs'?)"),
        (["--backbone", "resnet5"], "model.backbone: unknown backbone 'resnet5'"),
        (["--backbone", "efficientnet_lite0", "--weights", "lite0-imagnet"], "did you mean 'lite0-imagenet'?"),
        (["--set", "train.schedule=cosin"], "did you mean 'cosine'?"),
        (["--device", "cdua"], "did you mean 'cuda'?"),
    ],
)
def test_config_errors_suggest_and_leave_no_run_folder(setting, needle, tmp_path, capsys):
    data = generate_dataset(tmp_path / "data", n_per_class=2, size=32, seed=0)
    out = tmp_path / "run"
    assert main(["run", "--data", str(data), "--out", str(out), *setting]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], captured.err
    assert captured.out == ""
    assert not out.exists()  # refused at load: no audit, split, config or folder


def test_demo_settings_are_validated_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--device", "gpu"]) == 2
    assert "train.device: unknown value 'gpu'" in capsys.readouterr().err
    assert not out.exists()


def test_class_names_suggest_the_model_class():
    predictor = Predictor(torch.nn.Identity(), ["COVID", "Normal", "Viral_Pneumonia"], Preprocessing("half", 32))
    assert predictor.class_index("Normal") == 1
    with pytest.raises(CxrError, match=r"unknown class 'Covid'.*did you mean 'COVID'\?"):
        predictor.class_index("Covid")
    with pytest.raises(CxrError, match=r"unknown class 'Viral'.*COVID, Normal, Viral_Pneumonia"):
        predictor.class_index("Viral")
