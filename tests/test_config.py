"""Config validation at load: every field checked once, errors name key, value, allowed values and a guess."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from cxr.checkpoint import config_of
from cxr.config import (
    RunConfig,
    allowed_values,
    apply_overrides,
    check_section,
    field_of,
    from_dict,
    load_config,
    to_dict,
    validate_config,
)
from cxr.errors import CxrError

UNCHECKED = {"data.root"}  # where the data is: checked by the study when it starts (it must exist)
CATALOG_KEYS = {"model.backbone", "model.weights"}  # checked against cxr.models.catalog


def _keys(cls: type = RunConfig, prefix: str = "") -> list[tuple[str, dataclasses.Field]]:
    out = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            out.extend(_keys(type(default), key + "."))
        else:
            out.append((key, f))
    return out


def test_every_non_boolean_field_has_its_allowed_values_beside_it():
    for key, f in _keys():
        if key in UNCHECKED or isinstance(f.default, bool):
            continue
        assert "check" in f.metadata or key in CATALOG_KEYS, f"{key} has no check"
        assert allowed_values(key), key


@pytest.mark.parametrize(
    "override,needles",
    [
        ({"train.schedule": "cosin"}, ["train.schedule", "'cosin'", "none, step, cosine", "did you mean 'cosine'"]),
        ({"train.optimizer": "adan"}, ["train.optimizer", "adam, adamw, sgd", "did you mean 'adam'"]),
        ({"train.class_weights": "balance"}, ["train.class_weights", "did you mean 'balanced'"]),
        ({"train.precision": "fp23"}, ["train.precision", "auto, fp32, bf16, fp16", "did you mean 'fp32'"]),
        ({"train.device": "cdua"}, ["train.device", "cuda:N", "did you mean 'cuda'"]),
        ({"train.device": "cuda:x"}, ["train.device", "'cuda:x'"]),
        ({"model.freeze": "stage:2"}, ["model.freeze", "base, stages:N, none", "did you mean 'stages:2'"]),
        ({"train.finetune_freeze": "base"}, ["train.finetune_freeze", "stages:N, none"]),
        ({"augment.fill_mode": "mirror"}, ["augment.fill_mode", "nearest, constant, reflect, wrap"]),
        ({"data.ratios": [0.7, 0.3]}, ["data.ratios", "3 positive numbers", "[0.7, 0.3]"]),
        ({"data.ratios": [0.7, 0.2, 0.2]}, ["data.ratios", "sum to 1"]),
        ({"train.epochs": 0}, ["train.epochs", ">= 1", "got 0"]),
        ({"train.batch_size": -4}, ["train.batch_size", ">= 1"]),
        ({"train.lr": 0}, ["train.lr", "> 0"]),
        ({"train.lr": float("nan")}, ["train.lr", "> 0"]),
        ({"train.grad_accum": 0}, ["train.grad_accum", ">= 1"]),
        ({"train.feature_views": 0}, ["train.feature_views", ">= 1"]),
        ({"train.label_smoothing": 1.0}, ["train.label_smoothing", "in [0, 1)"]),
        ({"train.seed": -1}, ["train.seed", ">= 0"]),
        ({"data.image_size": 16}, ["data.image_size", ">= 32"]),
        ({"data.num_workers": -2}, ["data.num_workers", ">= -1"]),
        ({"eval.bootstrap": -1}, ["eval.bootstrap", ">= 0"]),
        ({"eval.ece_bins": 0}, ["eval.ece_bins", ">= 1"]),
        ({"augment.zoom": [1.1, 0.9]}, ["augment.zoom", "0 < low <= high"]),
        ({"augment.width_shift": 1.5}, ["augment.width_shift", "in [0, 1)"]),
        ({"model.head": [64, 0]}, ["model.head[1]", ">= 1"]),
        ({"model.dropout": 1.0}, ["model.dropout", "in [0, 1)"]),
        ({"name": "  "}, ["name", "non-empty"]),
        ({"model.backbone": "resnet5"}, ["model.backbone", "'resnet5'", "efficientnet_lite0", "did you mean 'resnet50'"]),
        ({"model.weights": "imagnet"}, ["model.weights", "'imagnet'", "lite0-imagenet", "did you mean 'imagenet'"]),
        ({"model.weights": "lite0-imagenet"}, ["model.weights", "for backbone 'efficientnet_lite0'"]),
    ],
)
def test_bad_values_are_refused_at_load(override, needles):
    with pytest.raises(CxrError) as info:
        load_config(None, override)
    message = str(info.value)
    for needle in needles:
        assert needle in message, message


@pytest.mark.parametrize(
    "override",
    [{"train.optimizer": "AdamW"}, {"train.device": "cuda:3"}, {"train.device": "CPU"}, {"model.freeze": "stages:2"},
     {"train.finetune_freeze": "stages:1"}, {"model.backbone": "efficientnet_lite0", "model.weights": "lite0-imagenet"},
     {"model.head": []}, {"eval.bootstrap": 0}],
)
def test_good_values_load(override):
    load_config(None, override)


def test_unknown_keys_suggest_the_closest(tmp_path):
    with pytest.raises(CxrError, match=r"unknown config key 'train.epoch' \(did you mean 'train.epochs'\?\)"):
        load_config(None, {"train.epoch": 3})
    with pytest.raises(CxrError, match=r"unknown config key 'trian' \(did you mean 'train'\?\)"):
        from_dict({"trian": {"epochs": 3}})
    with pytest.raises(CxrError, match="'train' has no sub-keys"):
        load_config(None, {"train": 3, "train.epochs": 3})
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  backbon: resnet50\n")
    with pytest.raises(CxrError, match="did you mean 'model.backbone'"):
        load_config(path)


def test_weights_files_must_exist_at_load_but_not_in_a_checkpoint(tmp_path):
    missing = tmp_path / "absent.pth"
    for spec, backbone in ((f"file:{missing}", "resnet50"), (f"keras-imagenet:{missing}", "resnet50-keras")):
        with pytest.raises(CxrError, match=f"model.weights.*file not found: {missing}"):
            load_config(None, {"model.weights": spec, "model.backbone": backbone})
        raw = to_dict(RunConfig())
        raw["model"].update(weights=spec, backbone=backbone)
        assert config_of({"config": raw}).model.weights == spec  # read elsewhere: no file needed
        assert from_dict(raw, check_files=False).model.weights == spec
    present = tmp_path / "w.pth"
    present.write_bytes(b"")
    assert load_config(None, {"model.weights": f"file:{present}"}).model.weights == f"file:{present}"


def test_validate_and_check_section_cover_configs_made_in_code():
    cfg = RunConfig()
    assert validate_config(cfg) is cfg
    cfg.train.schedule = "cosin"
    with pytest.raises(CxrError, match="train.schedule"):
        validate_config(cfg)
    check_section(cfg.model, "model")  # the model section alone is fine
    with pytest.raises(CxrError, match="augment.rotation must be >= 0"):
        check_section(dataclasses.replace(cfg.augment, rotation=-1.0), "augment")


def test_apply_overrides_returns_a_validated_copy():
    base = RunConfig()
    cfg = apply_overrides(base, {"train.epochs": 3, "train.device": "cpu"})
    assert cfg.train.epochs == 3 and base.train.epochs == 20 and cfg.train.device == "cpu"
    with pytest.raises(CxrError, match="train.device"):
        apply_overrides(base, {"train.device": "gpu"})


def test_allowed_values_and_fields_for_help():
    assert allowed_values("train.optimizer") == "adam | adamw | sgd"
    assert allowed_values("train.epochs") == ">= 1"
    assert "efficientnet_lite0" in allowed_values("model.backbone")
    assert "keras-imagenet:PATH (resnet50-keras)" in allowed_values("model.weights")
    assert allowed_values("data.root") is None
    assert field_of("train.epochs").name == "epochs"
    with pytest.raises(CxrError, match="did you mean 'train.epochs'"):
        field_of("train.epoch")


def test_config_and_catalog_do_not_import_torch():
    code = "import sys, cxr.config, cxr.models.catalog, cxr.checks; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
