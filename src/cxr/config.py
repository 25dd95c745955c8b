"""Every setting of a run, as dataclasses. The defaults are the seed recipe.

A run's configuration is built from these defaults, then a YAML file, then command-line overrides
(dotted keys such as `train.epochs=3`), and the fully resolved result is saved in the run directory.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cxr.errors import CxrError


@dataclass
class DataConfig:
    root: str | None = None  # data folder or CSV manifest; None means "given on the command line"
    ratios: tuple[float, float, float] = (0.7, 0.1, 0.2)  # train/val/test fractions (seed: 70/10/20)
    split_seed: int = 123  # seed of the split (seed: splitfolders seed 123)
    near_duplicate_threshold: int = 28  # max Hamming distance of 256-bit pHashes joined into one group
    image_size: int = 224  # side of the square network input (seed: 224)
    num_workers: int = -1  # DataLoader decoding workers; -1 = one per core, capped at 8


@dataclass
class AugmentConfig:
    enabled: bool = True  # apply the training augmentation below (val/test are never augmented)
    rotation: float = 5.0  # max rotation in degrees, uniform in [-r, r] (seed: rotation_range=5)
    width_shift: float = 0.05  # max horizontal shift as a fraction of width (seed: 0.05)
    height_shift: float = 0.05  # max vertical shift as a fraction of height (seed: 0.05)
    brightness: tuple[float, float] = (0.9, 1.1)  # multiplicative brightness range (seed: [0.9, 1.1])
    zoom: tuple[float, float] = (0.9, 1.1)  # zoom range, independent per axis as in Keras (seed)
    horizontal_flip: bool = True  # flip left-right with p=0.5 (seed: horizontal_flip=True)
    fill_mode: str = "nearest"  # how pixels outside the image are filled: nearest|constant|reflect|wrap


@dataclass
class ModelConfig:
    backbone: str = "resnet50"  # resnet50 | resnet50-keras | efficientnet_lite0
    weights: str = "random"  # imagenet | imagenet-v1 | keras-imagenet:PATH | file:PATH | lite0-imagenet | random
    freeze: str = "base"  # base | stages:N | none
    head: tuple[int, ...] = (2048, 512, 128)  # hidden widths of the MLP head (seed: 2048, 512, 128)
    dropout: float = 0.0  # dropout before each hidden Linear of the head (seed: none)


@dataclass
class TrainConfig:
    epochs: int = 20  # passes over the training split (seed: 20)
    batch_size: int = 32  # global batch size (seed: 32)
    optimizer: str = "adam"  # adam | adamw | sgd (seed: adam)
    lr: float = 1e-4  # learning rate of the head (seed: 1e-4)
    backbone_lr_ratio: float = 0.1  # backbone lr = lr * ratio, for unfrozen stages
    weight_decay: float = 0.0  # decoupled for adamw, L2 for adam/sgd
    schedule: str = "none"  # none | step | cosine
    step_epochs: int = 20  # step schedule: multiply lr by step_gamma every step_epochs epochs
    step_gamma: float = 0.1  # step schedule factor (notebook: 10x drop after epoch 20)
    warmup_epochs: float = 0.0  # linear warmup before the cosine schedule, in epochs
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    class_weights: str = "none"  # none | balanced (sklearn's compute_class_weight('balanced'))
    grad_accum: int = 1  # micro-batches accumulated per optimizer step
    early_stopping: int = 0  # stop after this many epochs without val-loss improvement; 0 = off
    seed: int = 123  # seeds Python, NumPy and torch for the run
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (auto: bf16 where native, fp16 on older GPUs)
    channels_last: bool = True  # NHWC memory format for convolutions
    compile: bool = False  # torch.compile the model
    feature_cache: bool = True  # with freeze=base, train the head on cached backbone features
    feature_views: int = 2  # augmented views per training image in the feature cache (2: measured, bench/README.md)
    finetune_epochs: int = 0  # after the head phase, unfreeze (finetune_freeze) and train this many epochs
    finetune_freeze: str = "none"  # freeze mode of the fine-tuning phase: stages:N | none
    finetune_lr: float = 1e-4  # head lr in the fine-tuning phase


@dataclass
class EvalConfig:
    tta: bool = False  # test-time augmentation: average over flip and small shifts
    bootstrap: int = 1000  # bootstrap resamples for the 95% confidence intervals
    ece_bins: int = 15  # bins of the expected calibration error
    aug_samples: int = 20  # augmented training images saved to aug_images/
    grid_per_class: int = 5  # images per class in the sample grid


@dataclass
class RunConfig:
    name: str = "seed"  # run name; the run directory defaults to runs/<name>
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) for YAML, JSON and checkpoints."""
    return _plain(dataclasses.asdict(cfg))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def from_dict(data: dict[str, Any], cls: type = RunConfig, where: str = "") -> Any:
    """Build a (nested) config dataclass from a dict, refusing unknown keys by name."""
    if not isinstance(data, dict):
        raise CxrError(f"config section '{where or 'top'}' must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise CxrError(
                f"unknown config key '{where + key}'; allowed: {', '.join(sorted(fields))}"
            )
        kwargs[key] = _coerce(fields[key], value, where + key)
    return cls(**kwargs)


def _coerce(f: dataclasses.Field, value: Any, where: str) -> Any:
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if dataclasses.is_dataclass(default):
        return from_dict(value, type(default), where + ".")
    if value is None or default is None:
        return value
    if isinstance(default, tuple):
        if not isinstance(value, list | tuple):
            raise CxrError(f"config key '{where}' must be a list, got {value!r}")
        kind = type(default[0]) if default else float
        return tuple(_scalar(kind, v, where) for v in value)
    return _scalar(type(default), value, where)


def _scalar(kind: type, value: Any, where: str) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false", "1", "0", "yes", "no"}:
            return value.lower() in {"true", "1", "yes"}
        raise CxrError(f"config key '{where}' must be true or false, got {value!r}")
    try:
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return kind(value)
    except (TypeError, ValueError):
        raise CxrError(f"config key '{where}' must be {kind.__name__}, got {value!r}") from None


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Defaults, then the YAML file at `path`, then dotted-key `overrides` (e.g. {'train.epochs': 3})."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise CxrError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise CxrError(f"config file {p} is not valid YAML: {exc}") from None
        data = loaded or {}
        if not isinstance(data, dict):
            raise CxrError(f"config file {p} must hold a mapping, got {type(data).__name__}")
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return from_dict(data)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the fully resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
