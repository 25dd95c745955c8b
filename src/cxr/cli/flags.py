"""The command-line flags that set config keys, in one table: each record yields its parser entry,
its part of the overrides dict and its --help text (allowed values from the config and the model
catalog, the real default from the config the command starts from).

Torch-free: `cxr --help` builds every parser without loading PyTorch. A command whose base config
needs torch to build (`cxr demo`) passes it as a callable, evaluated only when its help is shown.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cxr.config import RunConfig, allowed_values, get_value


@dataclass(frozen=True)
class Flag:
    """One option and the config keys it sets."""

    option: str  # "--epochs"
    keys: tuple[str, ...]  # config keys it sets; the first one's allowed values are shown
    help: str  # what it does; the allowed values and the default are appended
    metavar: str | None = None
    sets: Any = None  # a switch (takes no value): what it sets the keys to when given
    default: str | None = None  # the default to show instead of the config's values
    allowed: bool = True  # append the key's allowed values to the help
    kind: type | None = None  # the value's type when the config's default (None) does not tell it
    entries: bool = False  # repeatable NAME=VALUE: each sets the entry NAME of the mapping key
    seed: bool = False  # the seed recipe had this setting: its default is shown as "the seed's"

    @property
    def dest(self) -> str:
        return self.option.lstrip("-").replace("-", "_")


FLAGS: dict[str, Flag] = {
    f.option: f
    for f in (
        Flag("--backbone", ("model.backbone",), "backbone network", "NAME", seed=True),
        Flag("--weights", ("model.weights",),
             "pretrained weights, which fix the preprocessing (`cxr model weights` lists them)", "SPEC", seed=True),
        Flag("--freeze", ("model.freeze",), "what trains besides the head: base = nothing (the seed), "
             "stages:N = the last N backbone stages, none = the whole backbone", "MODE", allowed=False, seed=True),
        Flag("--epochs", ("train.epochs",), "training epochs", "N", seed=True),
        Flag("--batch-size", ("train.batch_size",), "global batch size", "N", seed=True),
        Flag("--lr", ("train.lr",), "head learning rate", "X", seed=True),
        Flag("--seed", ("train.seed", "data.split_seed"),
             "seed of the split and of training (--set train.seed=N varies training only)", "N", seed=True),
        Flag("--name", ("name",), "run name", "NAME", default="the --out folder's name, else the config's name",
             allowed=False),
        Flag("--device", ("train.device",), "where to compute", "DEVICE"),
        Flag("--precision", ("train.precision",),
             "compute precision (auto: bf16 where native, else fp32; fp16 on older GPUs)", "MODE"),
        Flag("--compile", ("train.compile",), "torch.compile the trained module", sets=True),
        Flag("--no-feature-cache", ("train.feature_cache",),
             "with freeze=base, still run the backbone on images every epoch (the direct path)", sets=False),
        Flag("--dropout", ("model.dropout",), "dropout before each hidden layer of the head", "P", seed=True),
        Flag("--task", ("data.task",), "one class per image (softmax) or several findings per image (sigmoid; "
             "a manifest with '|' labels or 0/1/-1 finding columns)", "TASK"),
        Flag("--uncertain", ("data.uncertain",), "multi-label: what an uncertain (-1) finding becomes", "POLICY"),
        Flag("--track", ("track.backend",), "experiment tracking besides the run folder: tensorboard event "
             "files in RUN/tensorboard/, or an mlflow run", "BACKEND"),
        Flag("--track-uri", ("track.uri",), "mlflow tracking URI (default: sqlite:///<folder of the run "
             "folder>/mlflow.db)", "URI", allowed=False),
        Flag("--external", ("eval.external",), "score best.pt on this other data set too (repeatable): a folder or "
             "CSV manifest named NAME in the report; add ,masks=DIR ,boxes=FILE ,label_map=FILE for its lung masks, "
             "lung boxes or class names", "NAME=PATH", default="none", allowed=False, entries=True),
        Flag("--label-map", ("eval.label_map",), "YAML file mapping the external sets' class names to this model's "
             "('NORMAL: Normal', 'PNEUMONIA: Viral_Pneumonia', 'Other: ignore')", "FILE", kind=str, allowed=False,
             default="built-in aliases only"),
        Flag("--masks", ("data.masks",), "folder of lung masks, matched to the images by relative path or file name "
             "(Kaggle v4 masks beside the images are found without it)", "DIR", kind=str, allowed=False,
             default="masks found beside the images"),
        Flag("--boxes", ("data.boxes",), "CSV path,x0,y0,x1,y1 of lung bounding boxes in image pixels (several rows "
             "per image for several boxes); a box is used as a rectangular lung mask", "FILE", kind=str,
             allowed=False, default="none"),
        Flag("--lung-crop", ("data.lung_crop",), "crop every image to its lung mask's or boxes' bounding box plus "
             "data.lung_crop_margin before resizing (train, evaluate, predict and serve)", sets=True),
        Flag("--lungs", ("data.lungs",), "where lung regions come from (shortcut audit, external sets, lung crop): "
             "auto = the given masks/boxes, else masks made by the built-in lung segmenter (cached under "
             "$CXR_CACHE_DIR/lungs); masks = only given ones; none = no lungs (no audit, no lung crop)", "MODE"),
        Flag("--engine", ("eval.engine",), "what scores images after training (TTA, --no-feature-cache, external "
             "sets; later cxr evaluate): auto = the fastest installed here, measured once per machine; torch = "
             "PyTorch eager. The feature cache is always PyTorch's (train.engine), so it does not change the metrics",
             "NAME"),
        Flag("--threads", ("train.threads",), "intra-op threads; 0 = $OMP_NUM_THREADS, else one per core free "
             "at start (a busy machine is not oversubscribed)", "N"),
    )
}
RUN_FLAGS = tuple(FLAGS[o] for o in (
    "--backbone", "--weights", "--freeze", "--epochs", "--batch-size", "--lr", "--seed", "--name", "--device",
    "--precision", "--compile", "--no-feature-cache", "--task", "--uncertain", "--track", "--track-uri",
    "--external", "--label-map", "--masks", "--boxes", "--lung-crop", "--lungs", "--engine", "--threads",
))
DEMO_FLAGS = tuple(FLAGS[o] for o in ("--epochs", "--no-feature-cache", "--lungs", "--device", "--engine", "--threads"))
MODEL_FLAGS = tuple(FLAGS[o] for o in ("--backbone", "--weights", "--freeze", "--dropout"))


def add_flags(
    parser: argparse.ArgumentParser,
    flags: Iterable[Flag],
    base: Callable[[], RunConfig] = RunConfig,
    whose: str = "the seed's",
) -> None:
    """Add `flags` to `parser`; their help shows the defaults of `base()` ("(default: 20, the seed's)"):
    `whose` names them where `base()` differs from RunConfig(), or for the seed's own settings (Flag.seed),
    and nothing else claims a default the seed never had (--engine, --track)."""
    for flag in flags:
        if flag.sets is not None:
            action = parser.add_argument(flag.option, action="store_true", help=flag.help)
            continue
        if flag.entries:
            action = parser.add_argument(flag.option, action="append", type=entry_value(flag.option),
                                         metavar=flag.metavar, help=flag.help)
            action.default_text = _default_text(flag, base, whose)  # type: ignore[attr-defined]
            continue
        kind = flag.kind or type(get_value(RunConfig(), flag.keys[0]))
        allowed = allowed_values(flag.keys[0]) if flag.allowed else None
        action = parser.add_argument(
            flag.option, type=kind, metavar=flag.metavar, help=f"{flag.help}: {allowed}" if allowed else flag.help
        )
        action.default_text = _default_text(flag, base, whose)  # type: ignore[attr-defined]


def _default_text(flag: Flag, base: Callable[[], RunConfig], whose: str) -> Callable[[], str]:
    def text() -> str:
        if flag.default is not None:
            return flag.default
        cfg, plain = base(), RunConfig()
        values = list(dict.fromkeys(str(get_value(cfg, key)) for key in flag.keys))
        own = any(get_value(cfg, key) != get_value(plain, key) for key in flag.keys)
        if own or (flag.seed and whose == "the seed's"):
            return f"{', '.join(values)}, {whose}"
        return ", ".join(values)

    return text


def flag_overrides(args: argparse.Namespace, flags: Iterable[Flag]) -> dict[str, Any]:
    """The dotted-key overrides of the flags given on the command line (flags not given set nothing)."""
    out: dict[str, Any] = {}
    for flag in flags:
        value = getattr(args, flag.dest, None)
        if flag.sets is not None:
            value = flag.sets if value else None
        if flag.entries:
            for name, entry in value or ():
                out[f"{flag.keys[0]}.{name}"] = entry
        elif value is not None:
            out.update(dict.fromkeys(flag.keys, value))
    return out


def entry_value(option: str) -> Callable[[str], tuple[str, Any]]:
    """The argparse type of a NAME=PATH[,key=value...] option: (NAME, PATH) or (NAME, {data: PATH, key: value})."""

    def parse(text: str) -> tuple[str, Any]:
        name, sep, rest = text.partition("=")
        parts = rest.split(",")
        if not sep or not name.strip() or not parts[0].strip():
            raise argparse.ArgumentTypeError(f"{option} expects NAME=PATH, got {text!r}")
        extra = {}
        for part in parts[1:]:
            key, sep, value = part.partition("=")
            if not sep or not key.strip() or not value.strip():
                raise argparse.ArgumentTypeError(f"{option}: {part!r} in {text!r} is not key=value")
            extra[key.strip()] = value.strip()
        path = parts[0].strip()
        return name.strip(), {"data": path, **extra} if extra else path

    return parse
