"""Every setting of a run, as dataclasses. The defaults are the seed recipe.

A run's configuration is built from these defaults, then a YAML file, then command-line overrides
(dotted keys such as `train.epochs=3`), and the fully resolved result is saved in the run directory.
The allowed values of each field sit beside it (`setting(default, check)`, checks from `cxr.checks`;
backbones and weights from `cxr.models.catalog`), and `load_config`/`from_dict` check every field
once, before any work starts. Torch-free.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cxr.checks import (
    FRACTION,
    Check,
    Choice,
    Each,
    ExternalSets,
    Matches,
    NonEmpty,
    OptionalPath,
    Range,
    Ratios,
    Span,
    above,
    at_least,
)
from cxr.errors import CxrError
from cxr.models import catalog
from cxr.models.spec import FREEZE_MODES
from cxr.suggest import did_you_mean

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("none", "step", "cosine")
CLASS_WEIGHTS = ("none", "balanced")  # balanced: sklearn's compute_class_weight('balanced')
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # auto: bf16 where native, fp16 on older GPUs, else fp32
DEVICES = ("auto", "cpu", "cuda", "cuda:N")
ENGINES = ("auto", "torch", "onnxruntime", "openvino")  # auto: the fastest installed here, measured once (cxr.engine)
EVAL_ENGINES = (*ENGINES, "openvino-int8")  # int8: only where validation macro-F1 stays within 0.01 of fp32
HEAD_INITS = ("glorot", "zeros")  # the initial weights of the head's last layer
FINETUNE_FREEZE_MODES = ("stages:N", "none")
FILL_MODES = ("nearest", "constant", "reflect", "wrap")  # Keras fill_mode values (SciPy modes)
TRACKERS = ("none", "tensorboard", "mlflow")  # experiment tracking backends (cxr.tracking)
MODULE_PATH = Matches(r"[A-Za-z_0-9]+(\.[A-Za-z_0-9]+)*", "a module path such as layer4 or features.denseblock4")
MIN_IMAGE_SIZE = 32  # the backbones downsample 32x: a smaller input leaves no feature map
SWITCHES = ("auto", "on", "off")  # auto: on where it helps (see the field)
TASKS = ("auto", "multiclass", "multilabel")  # auto: multilabel for a manifest with '|' labels or 0/1/-1 columns
UNCERTAIN_POLICIES = ("ignore", "zeros", "ones")  # what a CheXpert-style -1 (uncertain) finding becomes
OCCLUDE_CHOICES = ("lungs", "outside")  # the masked-region test blanks the lungs, or everything outside them
FILL_CHOICES = ("median", "zero")  # what blanked pixels become: the image's median pixel value, or black
LUNGS_CHOICES = ("auto", "masks", "none")  # lung regions: given ones else the default segmenter's | given only | none
CONFORMAL_METHODS = ("lac", "aps", "raps")  # prediction-set scores (cxr.metrics.conformal.METHODS)
INTENSITY_METHODS = ("none", "equalize", "clahe")  # intensity standardisation (cxr.intensity)
SCANNER_OPS = ("crop", "resample", "blur", "sharpen", "gamma", "contrast", "noise", "jpeg")  # cxr.scanner_augment, in order


def setting(default: Any, check: Check | None = None, *, describe: Callable[[], str] | None = None) -> Any:
    """A config field with its allowed values: `check` runs at load (`validate_config`); `describe`
    (or the check's own description) says what is allowed in --help."""
    metadata: dict[str, Any] = {}
    if check is not None:
        metadata["check"] = check
    if describe is not None:
        metadata["describe"] = describe
    return field(default=default, metadata=metadata)


@dataclass
class DataConfig:
    root: str | None = None  # data folder or CSV manifest; None means "given on the command line"
    ratios: tuple[float, float, float] = setting((0.7, 0.1, 0.2), Ratios())  # train/val/test fractions (seed: 70/10/20)
    split_seed: int = setting(123, at_least(0))  # seed of the split (seed: splitfolders seed 123)
    near_duplicate_threshold: int = setting(28, at_least(0))  # max Hamming distance of 256-bit pHashes joined into one group
    image_size: int = setting(224, at_least(MIN_IMAGE_SIZE))  # side of the square network input (seed: 224)
    num_workers: int = setting(-1, at_least(-1))  # DataLoader decoding workers; -1 = one per core, capped at 32
    # training on images: decode each image once into a uint8 memory map and augment whole batches on the
    # compute device (the GPU input pipeline); auto = on for CUDA, off on the CPU
    decoded_cache: str = setting("auto", Choice(SWITCHES))
    task: str = setting("auto", Choice(TASKS))  # multiclass (one class per image, softmax) | multilabel (findings, sigmoid)
    uncertain: str = setting("ignore", Choice(UNCERTAIN_POLICIES))  # multilabel: -1 labels ignored, or taken as 0 / 1
    masks: str | None = setting(None, OptionalPath())  # folder of lung masks matched to images by path or file name
    boxes: str | None = setting(None, OptionalPath())  # CSV path,x0,y0,x1,y1 of lung boxes (a box = a rectangular mask)
    lung_crop: bool = False  # crop each image to its lung mask's or boxes' bounding box (+ margin) before resizing
    lung_crop_margin: float = setting(0.05, FRACTION)  # the crop's margin, a fraction of the box's width/height
    # where lung regions come from: auto = the given masks/boxes, else the built-in segmenter's masks (cached);
    # masks = only the given ones; none = no lung regions at all (no shortcut audit, no lung crop)
    lungs: str = setting("auto", Choice(LUNGS_CHOICES))
    intensity: str = setting("none", Choice(INTENSITY_METHODS))  # standardise each image (training and scoring): none | equalize | clahe; stored in the checkpoint


@dataclass
class AugmentConfig:
    enabled: bool = True  # apply the training augmentation below (val/test are never augmented)
    rotation: float = setting(5.0, at_least(0))  # max rotation in degrees, uniform in [-r, r] (seed: rotation_range=5)
    width_shift: float = setting(0.05, FRACTION)  # max horizontal shift as a fraction of width (seed: 0.05)
    height_shift: float = setting(0.05, FRACTION)  # max vertical shift as a fraction of height (seed: 0.05)
    brightness: tuple[float, float] = setting((0.9, 1.1), Span())  # multiplicative brightness range (seed: [0.9, 1.1])
    zoom: tuple[float, float] = setting((0.9, 1.1), Span())  # zoom range, independent per axis as in Keras (seed)
    horizontal_flip: bool = True  # flip left-right with p=0.5 (seed: horizontal_flip=True)
    fill_mode: str = setting("nearest", Choice(FILL_MODES))  # how pixels outside the image are filled
    scanner: str = setting("none", Matches(rf"none|all|({'|'.join(SCANNER_OPS)})(,({'|'.join(SCANNER_OPS)}))*",
                                           f"none, all, or a comma list of {', '.join(SCANNER_OPS)}"))  # scanner-imitating augmentations after the above (cxr.scanner_augment)
    scanner_p: float = setting(0.5, Range(0.0, 1.0))  # probability of each scanner augmentation, drawn independently per image


@dataclass
class ModelConfig:
    backbone: str = setting("resnet50", describe=catalog.backbones_help)  # a name of cxr.models.catalog
    weights: str = setting("imagenet", describe=catalog.weights_help)  # a weights spec of that backbone (seed: ImageNet)
    freeze: str = setting("base", Choice(FREEZE_MODES))  # base: head only | stages:N: also the last N stages | none
    head: tuple[int, ...] = setting((2048, 512, 128), Each(at_least(1)))  # hidden widths of the MLP head (seed: 2048, 512, 128)
    dropout: float = setting(0.0, FRACTION)  # dropout before each hidden Linear of the head (seed: none)
    # the head's last layer starts Glorot-uniform (Keras Dense, the seed) or at zero (as a logistic regression
    # does: a linear head's random start is a random projection that few epochs on a small set never remove)
    head_init: str = setting("glorot", Choice(HEAD_INITS))
    cam_layer: str = setting("", MODULE_PATH)  # Grad-CAM layer, a module path of the backbone (layer4, features.denseblock4); "": the map the head pools


@dataclass
class TrainConfig:
    epochs: int = setting(20, at_least(1))  # passes over the training split (seed: 20)
    batch_size: int = setting(32, at_least(1))  # global batch size (seed: 32)
    optimizer: str = setting("adam", Choice(OPTIMIZERS, ignore_case=True))  # optimizer of every trained parameter (seed: adam)
    lr: float = setting(1e-4, above(0))  # learning rate of the head (seed: 1e-4)
    backbone_lr_ratio: float = setting(0.1, at_least(0))  # backbone lr = lr * ratio, for unfrozen stages
    weight_decay: float = setting(0.0, at_least(0))  # decoupled for adamw, L2 for adam/sgd
    schedule: str = setting("none", Choice(SCHEDULES))  # lr schedule, per optimizer step
    step_epochs: int = setting(20, at_least(1))  # step schedule: multiply lr by step_gamma every step_epochs epochs
    step_gamma: float = setting(0.1, above(0))  # step schedule factor (notebook: 10x drop after epoch 20)
    warmup_epochs: float = setting(0.0, at_least(0))  # linear warmup before the cosine schedule, in epochs
    label_smoothing: float = setting(0.0, FRACTION)  # cross-entropy label smoothing
    class_weights: str = setting("none", Choice(CLASS_WEIGHTS))  # loss weight per class
    grad_accum: int = setting(1, at_least(1))  # micro-batches accumulated per optimizer step
    early_stopping: int = setting(0, at_least(0))  # stop after this many epochs without val-loss improvement; 0 = off
    seed: int = setting(123, at_least(0))  # seeds Python, NumPy and torch for the run
    device: str = setting("auto", Choice(DEVICES, ignore_case=True))  # where to compute; auto: the first GPU, else the CPU
    precision: str = setting("auto", Choice(PRECISIONS, ignore_case=True))  # compute precision
    channels_last: bool = True  # NHWC memory format for convolutions
    compile: bool = False  # torch.compile the model
    # extracts the feature cache: torch = PyTorch, the reference (a study's result does not depend on the
    # engines installed); onnxruntime/openvino/auto are faster on a CPU, but their features differ in the last
    # bits and so may the metrics (each engine has its own cache entries). Not `--engine`: that is eval.engine
    engine: str = setting("torch", Choice(ENGINES))
    threads: int = setting(0, at_least(0))  # intra-op threads; 0 = $OMP_NUM_THREADS, else one per core free at start
    feature_cache: bool = True  # with freeze=base, train the head on cached backbone features
    feature_views: int = setting(2, at_least(1))  # augmented views per training image in the feature cache (2: measured, bench/README.md)
    finetune_epochs: int = setting(0, at_least(0))  # after the head phase, unfreeze (finetune_freeze) and train this many epochs
    finetune_freeze: str = setting("none", Choice(FINETUNE_FREEZE_MODES))  # freeze mode of the fine-tuning phase
    finetune_lr: float = setting(1e-4, above(0))  # head lr in the fine-tuning phase
    # multi-label studies: settings left at the seed's defaults take the multi-label recipe's (a linear head,
    # balanced positive weights, lr 1e-3, weight decay; cxr.study.multilabel_recipe); false keeps the seed's
    multilabel_recipe: bool = True


@dataclass
class EvalConfig:
    tta: bool = False  # test-time augmentation: average over flip and small shifts
    engine: str = setting("auto", Choice(EVAL_ENGINES))  # runs the model for evaluation on images (CPU; torch on GPUs)
    bootstrap: int = setting(1000, at_least(0))  # bootstrap resamples for the 95% confidence intervals
    ece_bins: int = setting(15, at_least(1))  # bins of the expected calibration error
    aug_samples: int = setting(20, at_least(0))  # augmented training images saved to aug_images/
    grid_per_class: int = setting(5, at_least(1))  # images per class in the sample grid
    external: dict[str, Any] = field(default_factory=dict, metadata={"check": ExternalSets()})  # NAME: PATH (or {data, masks, boxes, label_map}) scored after the test split
    label_map: str | None = setting(None, OptionalPath())  # YAML 'their class name: our class | ignore' for external sets
    shortcut_audit: bool = True  # with lung masks/boxes (given, else automatic: data.lungs): Grad-CAM share in the lungs, masked-region test
    shortcut_max_images: int = setting(200, at_least(1))  # images per set the shortcut audit looks at (evenly per class)
    shortcut_gallery: int = setting(8, at_least(0))  # overlays of the images whose attention lies most outside the lungs
    occlude_fill: str = setting("median", Choice(FILL_CHOICES))  # blanked pixels: each image's median value, or zero
    coverage: float = setting(0.9, Range(0.0, 1.0, low_open=True, high_open=True))  # prediction sets: share of images whose set holds the true class (cxr predict --coverage)
    conformal_method: str = setting("lac", Choice(CONFORMAL_METHODS))  # prediction-set score: lac (smallest sets) | aps (adaptive) | raps (APS + rank penalty)
    conformal_mondrian: bool = False  # calibrate the sets per class, so every class gets the coverage (larger sets)
    raps_k_reg: int = setting(1, at_least(0))  # RAPS: labels ranked past this many pay the penalty
    raps_lambda: float = setting(0.01, at_least(0))  # RAPS: penalty per rank past raps_k_reg


@dataclass
class TrackConfig:
    backend: str = setting("none", Choice(TRACKERS))  # none | tensorboard (<run>/tensorboard/) | mlflow
    uri: str = setting("", Matches(r"\S+", "a tracking URI (sqlite:///PATH, file:///PATH, http://HOST:PORT)"))  # mlflow tracking URI; "": sqlite:///<folder of the run folder>/mlflow.db
    experiment: str = setting("cxr", NonEmpty())  # mlflow experiment name


@dataclass
class RunConfig:
    name: str = setting("seed", NonEmpty())  # run name; the run directory defaults to runs/<name>
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    track: TrackConfig = field(default_factory=TrackConfig)  # experiment tracking (off by default)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) for YAML, JSON and checkpoints."""
    return _plain(dataclasses.asdict(cfg))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def from_dict(data: dict[str, Any], *, check_files: bool = True) -> RunConfig:
    """Build a RunConfig from a (partial) nested dict and validate it (`validate_config`).

    Unknown keys are refused by name, with the closest known key. `check_files=False` skips the
    existence check of weights files (a checkpoint's config, read on another machine).
    """
    cfg = _build(data, RunConfig, "")
    return validate_config(cfg, check_files=check_files)


def _build(data: Any, cls: type, where: str) -> Any:
    if not isinstance(data, dict):
        raise CxrError(f"config section '{where.rstrip('.') or 'top'}' must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise CxrError(
                f"unknown config key '{where}{key}'{did_you_mean(where + str(key), [where + name for name in fields])}; "
                f"allowed: {', '.join(sorted(fields))}"
            )
        kwargs[key] = _coerce(fields[key], value, where + key)
    return cls(**kwargs)


def _coerce(f: dataclasses.Field, value: Any, where: str) -> Any:
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if dataclasses.is_dataclass(default):
        return _build(value, type(default), where + ".")
    if value is None or default is None:
        return value
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise CxrError(f"config key '{where}' must be a mapping (NAME: VALUE), got {value!r}")
        return {str(k): v for k, v in value.items()}
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


# ------------------------------------------------------------------------------------ validation


def validate_config(cfg: RunConfig, *, check_files: bool = True) -> RunConfig:
    """Check every field of `cfg` against its allowed values, and the backbone and weights against
    the model catalog; the first problem is a CxrError naming the key, the value and what is allowed.
    Returns `cfg`. `check_files=False` skips the existence check of a weights PATH."""
    check_section(cfg, check_files=check_files)
    if cfg.data.lung_crop and cfg.data.lungs == "none":
        raise CxrError("data.lung_crop needs lung regions but data.lungs is 'none'; with lung_crop use: auto, masks")
    return cfg


def check_section(section: Any, prefix: str = "", *, check_files: bool = True) -> None:
    """`validate_config` for one (nested) section, its keys named `prefix.field`; library code that
    takes a section from any caller (e.g. `SeedAugment`) checks it with the same table."""
    for f in dataclasses.fields(section):
        key = f"{prefix}.{f.name}" if prefix else f.name
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            check_section(value, key, check_files=check_files)
        elif "check" in f.metadata:
            f.metadata["check"](key, value)
    if isinstance(section, ModelConfig):
        _check_model(section, prefix or "model", check_files=check_files)


def _check_model(model: ModelConfig, prefix: str, *, check_files: bool) -> None:
    """The backbone must be in the catalog and the weights must be one of its specs (a PATH must exist)."""
    for key, check in (
        ("backbone", lambda: catalog.get_backbone(model.backbone)),
        ("weights", lambda: catalog.check_weights(model.weights, model.backbone, check_files=check_files)),
    ):
        try:
            check()
        except CxrError as exc:
            raise CxrError(f"{prefix}.{key}: {exc}") from None


def field_of(key: str) -> dataclasses.Field:
    """The dataclass field of a dotted key ('train.epochs'); a CxrError names an unknown key."""
    cls: Any = RunConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if part not in fields:
            where = ".".join(parts[:i])
            known = [f"{where}.{name}" if where else name for name in fields]
            raise CxrError(f"unknown config key {key!r}{did_you_mean(key, known)}")
        found = fields[part]
        if i == len(parts) - 1:
            return found
        cls = type(found.default_factory()) if found.default_factory is not dataclasses.MISSING else None
        if cls is None or not dataclasses.is_dataclass(cls):
            raise CxrError(f"config key {'.'.join(parts[: i + 1])!r} has no sub-keys (got {key!r})")
    raise CxrError(f"empty config key {key!r}")


def allowed_values(key: str) -> str | None:
    """What a key allows, for help texts ('adam | adamw | sgd', '>= 1'); None when unconstrained."""
    metadata = field_of(key).metadata
    if "describe" in metadata:
        return metadata["describe"]()
    return metadata["check"].describe() if "check" in metadata else None


def get_value(cfg: Any, key: str) -> Any:
    """The value of a dotted key in a config ('train.epochs' -> cfg.train.epochs)."""
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


# ---------------------------------------------------------------------------------------- files


def merge_overrides(data: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Set dotted-key `overrides` ({'train.epochs': 3}) in the nested dict `data` (changed in place);
    None values are skipped."""
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise CxrError(f"config key {'.'.join(parts[: i + 1])!r} has no sub-keys (got {key!r})")
        node[parts[-1]] = value
    return data


def apply_overrides(cfg: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """A validated copy of `cfg` with dotted-key `overrides` applied (e.g. the demo's settings plus flags)."""
    return from_dict(merge_overrides(to_dict(cfg), overrides))


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Defaults, then the YAML file at `path`, then dotted-key `overrides` (e.g. {'train.epochs': 3});
    the result is validated (`validate_config`) before anything else happens."""
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
    return from_dict(merge_overrides(data, overrides))


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the fully resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
