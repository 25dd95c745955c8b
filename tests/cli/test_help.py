"""Help texts from the flag table: real defaults, allowed values, no '(default: None)', and fast to build."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

import pytest

from cxr.cli import build_parser
from cxr.cli.flags import DEMO_FLAGS, FLAGS, MODEL_FLAGS, RUN_FLAGS, flag_overrides
from cxr.config import RunConfig, field_of, get_value


def _commands(parser: argparse.ArgumentParser, prefix: str = "cxr") -> dict[str, argparse.ArgumentParser]:
    """Every (sub)command parser by its full name."""
    found = {prefix: parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(_commands(sub, f"{prefix} {name}"))
    return found


def _option_help(text: str) -> list[str]:
    """The help of each option, joined over its wrapped lines."""
    entries: list[str] = []
    for line in text.splitlines():
        if re.match(r"^  -", line):
            entries.append(line)
        elif entries and line.startswith("     "):
            entries[-1] += " " + line.strip()
    return entries


def test_every_command_has_clean_help():
    commands = _commands(build_parser())
    assert {"cxr run", "cxr train", "cxr demo", "cxr data split", "cxr model summary", "cxr serve"} <= set(commands)
    for name, parser in commands.items():
        text = parser.format_help()
        assert "default: None" not in text and "default: False" not in text, name
        for entry in _option_help(text):
            assert entry.count("(default") <= 1, f"{name}: {entry}"
        for action in parser._actions:
            assert action.help, f"{name} {action.option_strings} has no help text"


def test_run_help_shows_the_seed_defaults_and_allowed_values():
    text = " ".join(_commands(build_parser())["cxr run"].format_help().split())
    assert "training epochs: >= 1 (default: 20, the seed's)" in text
    assert "(default: 123, the seed's)" in text  # --seed: train.seed and data.split_seed alike
    assert "resnet50 | resnet50-keras | efficientnet_lite0 | timm:NAME | tv:NAME (default: resnet50, the seed's)" in text
    assert "lite0-imagenet (efficientnet_lite0)" in text and "auto | fp32 | bf16 | fp16" in text
    assert "(default: the --out folder's name, else the config's name)" in text
    for new_setting in ("tensorboard | mlflow (default: none)", "auto | torch | onnxruntime | openvino | openvino-int8 (default: auto)",
                        "(a busy machine is not oversubscribed): >= 0 (default: 0)"):
        assert new_setting in text  # settings the seed never had: no "the seed's" default
    assert text.count("the seed's") == 7  # backbone, weights, freeze, epochs, batch size, lr, seed (dropout: model)


def test_demo_help_shows_the_demo_defaults():
    text = " ".join(_commands(build_parser())["cxr demo"].format_help().split())
    from cxr.study.presets import DEMO_IMAGES_PER_CLASS, demo_config

    assert f"(default: {demo_config().train.epochs}, the demo's)" in text
    assert "(default: auto)" in text and "auto, the demo's" not in text  # the demo keeps the engine's default
    assert f"synthetic images per class (default: {DEMO_IMAGES_PER_CLASS})" in text


def test_the_flag_table_maps_flags_to_config_keys():
    for flag in FLAGS.values():
        for key in flag.keys:
            field_of(key)  # every key exists
    parser = build_parser()
    args = parser.parse_args(["run", "--data", "x", "--epochs", "3", "--seed", "7", "--no-feature-cache",
                              "--compile", "--weights", "imagenet"])
    assert flag_overrides(args, RUN_FLAGS) == {
        "train.epochs": 3, "train.seed": 7, "data.split_seed": 7, "train.feature_cache": False,
        "train.compile": True, "model.weights": "imagenet",
    }
    assert flag_overrides(parser.parse_args(["run", "--data", "x"]), RUN_FLAGS) == {}
    args = parser.parse_args(["demo", "--epochs", "2", "--device", "cpu"])
    assert flag_overrides(args, DEMO_FLAGS) == {"train.epochs": 2, "train.device": "cpu"}
    args = parser.parse_args(["model", "summary", "--dropout", "0.5"])
    assert flag_overrides(args, MODEL_FLAGS) == {"model.dropout": 0.5}
    for flag in RUN_FLAGS:  # a flag's value parses to its key's type (given where the default is None)
        if flag.sets is None and not flag.entries:
            action = next(a for a in _commands(parser)["cxr run"]._actions if flag.option in a.option_strings)
            assert action.type is (flag.kind or type(get_value(RunConfig(), flag.keys[0])))
    args = parser.parse_args(["run", "--data", "x", "--external", "b=/d/b", "--external", "c=/d/c,boxes=/d/c.csv",
                              "--label-map", "m.yaml", "--lung-crop"])
    assert flag_overrides(args, RUN_FLAGS) == {  # NAME=PATH entries set entries of the mapping key
        "eval.external.b": "/d/b", "eval.external.c": {"data": "/d/c", "boxes": "/d/c.csv"},
        "eval.label_map": "m.yaml", "data.lung_crop": True,
    }


@pytest.mark.parametrize("command", [[], ["run"], ["train"], ["model", "summary"], ["predict"], ["data", "split"]])
def test_building_and_showing_help_does_not_import_torch(command):
    code = (
        "import sys\n"
        "from cxr.cli import build_parser\n"
        "parser = build_parser()\n"
        f"for name in {command!r}:\n"
        "    parser = next(a for a in parser._actions if hasattr(a, '_name_parser_map')).choices[name]\n"
        "parser.format_help()\n"
        "sys.exit(1 if 'torch' in sys.modules else 0)\n"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
