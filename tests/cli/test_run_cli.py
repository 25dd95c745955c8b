"""`cxr run|train|evaluate|demo` through `cxr.cli.main`, as a user runs them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from cxr.checkpoint import save_checkpoint
from cxr.cli import build_parser, main
from cxr.cli.run import parse_overrides, resolve_config
from cxr.config import RunConfig, save_config
from cxr.data.synthetic import generate_dataset
from cxr.errors import CxrError

CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral_Pneumonia"]


pytestmark = pytest.mark.usefixtures("one_thread")  # the `cxr` logger is restored by conftest


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_run_with_a_missing_folder_exits_2_with_one_line(tmp_path, capsys):
    missing = tmp_path / "no-such-folder"
    code = main(["run", "--data", str(missing), "--out", str(tmp_path / "run")])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "data not found" in lines[0] and str(missing) in lines[0]
    assert captured.out == ""


@pytest.mark.parametrize("item", ["train.epochs", "=3"])
def test_bad_set_is_a_user_error(item, tmp_path, capsys):
    code = main(["run", "--data", str(tmp_path), "--set", item])
    assert code == 2
    assert "--set expects KEY=VALUE" in capsys.readouterr().err


def test_unknown_config_key_via_set_is_a_user_error(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path), "--set", "train.epoch=3"]) == 2
    assert "unknown config key 'train.epoch'" in capsys.readouterr().err


def test_parse_overrides_reads_yaml_values():
    assert parse_overrides(["train.epochs=3", "data.ratios=[0.8, 0.1, 0.1]", "model.freeze=stages:2"]) == {
        "train.epochs": 3, "data.ratios": [0.8, 0.1, 0.1], "model.freeze": "stages:2",
    }


def test_flags_override_set_which_overrides_the_config_file(tmp_path):
    config = tmp_path / "my.yaml"
    config.write_text("name: mine\ntrain:\n  epochs: 7\n  lr: 0.5\nmodel:\n  backbone: efficientnet_lite0\n"
                      "  weights: random\n")
    cfg, out = resolve_config(_args("run", "--data", "x", "--config", str(config), "--set", "train.lr=0.25",
                                    "--set", "train.epochs=9", "--epochs", "4", "--seed", "5", "--compile",
                                    "--no-feature-cache", "--precision", "fp32"))
    assert cfg.train.epochs == 4 and cfg.train.lr == 0.25 and cfg.model.backbone == "efficientnet_lite0"
    assert cfg.train.seed == 5 and cfg.data.split_seed == 5
    assert cfg.train.compile is True and cfg.train.feature_cache is False and cfg.train.precision == "fp32"
    assert cfg.name == "mine" and out == Path("runs/mine")
    cfg, out = resolve_config(_args("run", "--data", "x", "--out", str(tmp_path / "exp1")))
    assert cfg.name == "exp1" and out == tmp_path / "exp1" and cfg.train.epochs == 20
    assert cfg.train.compile is False and cfg.train.feature_cache is True


def test_resume_takes_the_run_config_unless_another_is_given(tmp_path):
    saved = RunConfig(name="old")
    saved.model.backbone = "efficientnet_lite0"
    saved.model.weights = "random"
    saved.train.epochs = 3
    (tmp_path / "old").mkdir()
    save_config(saved, tmp_path / "old" / "config.yaml")
    cfg, _ = resolve_config(_args("run", "--data", "x", "--out", str(tmp_path / "old"), "--resume", "--epochs", "6"))
    assert cfg.model.backbone == "efficientnet_lite0" and cfg.train.epochs == 6


def test_every_flag_of_every_command_is_explained():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("run", "train", "evaluate", "demo"):
        command = sub.choices[name]
        for action in command._actions:
            assert action.help, f"cxr {name} {action.option_strings} has no help text"
        text = command.format_help()
        assert "(default: None)" not in text


def test_help_exits_0(capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", "--help"])
    assert info.value.code == 0
    assert "--no-feature-cache" in capsys.readouterr().out


def test_evaluate_with_a_missing_checkpoint_exits_2(tmp_path, capsys):
    assert main(["evaluate", "--checkpoint", str(tmp_path / "none.pt"), "--data", str(tmp_path)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def _checkpoint(tmp_path: Path) -> Path:
    from cxr.models.build import build_model

    cfg = RunConfig()
    cfg.model.backbone = "efficientnet_lite0"
    cfg.model.weights = "random"
    cfg.model.head = (8,)
    cfg.data.num_workers = 0
    cfg.eval.bootstrap = 10
    model = build_model(cfg.model, len(CLASSES), load_weights=False)
    model.preprocessing = type(model.preprocessing)(model.preprocessing.mode, size=32)
    return save_checkpoint(tmp_path / "model.pt", model=model, config=cfg, classes=CLASSES,
                           preprocessing=model.preprocessing, epoch=1)


@pytest.mark.slow
def test_evaluate_command_scores_every_image_and_writes_its_outputs(tmp_path, capsys):
    data = generate_dataset(tmp_path / "data", n_per_class=2, size=32, seed=1)
    ckpt = _checkpoint(tmp_path)
    out = tmp_path / "eval"
    code = main(["evaluate", "--checkpoint", str(ckpt), "--data", str(data), "--out", str(out), "--tta"])
    stdout = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    assert stdout[0].startswith("test n=8: accuracy")
    assert stdout[-1] == str(out / "metrics.json")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["classes"] == CLASSES and metrics["tta"] is True and metrics["test"]["n"] == 8
    assert (out / "predictions.csv").is_file() and (out / "figures" / "roc.png").is_file()


def test_evaluate_command_refuses_classes_it_cannot_map(tmp_path, capsys):
    """Some of the classes are scored as an external set (tests/cli/test_evaluate_other_classes.py); a class
    that is none of the model's, under any known name, is refused naming it and the way to map it."""
    data = generate_dataset(tmp_path / "data", n_per_class=1, size=32, seed=1, classes=("COVID", "Normal"))
    (data / "Normal").rename(data / "Kitten")
    code = main(["evaluate", "--checkpoint", str(_checkpoint(tmp_path)), "--data", str(data)])
    last = capsys.readouterr().err.strip().splitlines()[-1]  # INFO lines (discovery) may come before it
    assert code == 2 and last.startswith("error:") and "'Kitten'" in last and "--label-map" in last
    assert ", ".join(CLASSES) in last


def test_run_config_errors_surface_before_any_work(tmp_path):
    with pytest.raises(CxrError, match="config file not found"):
        resolve_config(_args("run", "--data", "x", "--config", str(tmp_path / "missing.yaml")))


@pytest.mark.slow
def test_train_command_on_tiny_data_prints_the_best_checkpoint(tmp_path, capsys):
    data = generate_dataset(tmp_path / "data", n_per_class=10, size=32, seed=2)
    out = tmp_path / "run"
    code = main(["train", "--data", str(data), "--out", str(out), "--backbone", "efficientnet_lite0",
                 "--weights", "random", "--epochs", "1", "--batch-size", "8", "--no-feature-cache", "--set", "data.image_size=32",
                 "--set", "data.num_workers=0", "--set", "model.head=[8]"])
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert code == 0, captured.err
    assert lines[-1] == str(out / "checkpoints" / "best.pt")
    assert (out / "history.csv").is_file() and (out / "split.csv").is_file() and (out / "log.txt").is_file()
    assert not (out / "report.html").exists()
