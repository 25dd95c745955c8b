"""`cxr model ...` subcommands: layer table and parameter counts, the backbones and the available weights."""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from typing import TYPE_CHECKING

from cxr.cli._common import add_command, positive_int
from cxr.cli.flags import MODEL_FLAGS, add_flags, flag_overrides
from cxr.config import ModelConfig, RunConfig, apply_overrides
from cxr.errors import CxrError
from cxr.models import catalog

if TYPE_CHECKING:
    from torch import nn

DEFAULTS = ModelConfig()


def _emit(text: str = "") -> None:
    """One line of command output to stdout (results, not logs)."""
    sys.stdout.write(text + "\n")


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to the `cxr` parser."""
    group = add_command(sub, "model", None, "inspect model architectures and pretrained weights")
    model_sub = group.add_subparsers(dest="model_command", metavar="SUBCOMMAND", help="what to show")
    summary = add_command(
        model_sub, "summary", run_summary, "layer table with output shapes and parameter counts"
    )
    add_flags(summary, MODEL_FLAGS)
    summary.add_argument("--classes", type=positive_int, default=4, metavar="N", help="number of output classes")
    summary.add_argument(
        "--head", default=",".join(map(str, DEFAULTS.head)), metavar="W,...",
        help="hidden widths of the head, comma-separated",
    )
    summary.add_argument(
        "--input-size", type=positive_int, metavar="N", help="side of the dummy input (default: the weights' size)"
    )
    summary.add_argument(
        "--depth", type=positive_int, metavar="N", help="show modules down to this depth (default: every leaf)"
    )
    summary.add_argument("--json", action="store_true", help="print only the parameter counts as JSON")
    weights = add_command(
        model_sub, "weights", run_weights, "list weight specs per backbone and the cache state"
    )
    weights.add_argument("--json", action="store_true", help="print JSON instead of text")
    listing = add_command(
        model_sub, "list", run_list,
        "the backbones: built-in ones, the timm:/tv: families (their models with --family) and cached weights",
    )
    listing.add_argument("--family", choices=("timm", "tv", "xrv"),
                         help="list the models of one family (timm needs the extra cxr[timm])")
    listing.add_argument("--filter", metavar="TEXT",
                         help="only names containing TEXT (or matching it, with * and ? wildcards)")
    listing.add_argument("--json", action="store_true", help="print JSON instead of text")


def _parse_head(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise CxrError(f"--head must be comma-separated integers, got {text!r}") from None
    return widths


def run_summary(args: argparse.Namespace) -> int:
    """Build the model (loading its weights) and print the layer table and parameter counts."""
    from cxr.models.build import build_model, count_parameters

    overrides = {**flag_overrides(args, MODEL_FLAGS), "model.head": list(_parse_head(args.head))}
    cfg = apply_overrides(RunConfig(), overrides).model  # validated: backbone, weights, freeze, head
    model = build_model(cfg, num_classes=args.classes)
    counts = count_parameters(model)
    if args.json:
        _emit(json.dumps(counts))
        return 0
    size = args.input_size or model.preprocessing.size
    rows = layer_table(model, size, args.depth)
    _emit(format_table(rows))
    _emit()
    entry, _ = catalog.find_weights(cfg.weights, cfg.backbone)
    channels = model.preprocessing.channels
    _emit(f"backbone {cfg.backbone}, weights {cfg.weights}, freeze {cfg.freeze}, input 1x{channels}x{size}x{size}")
    _emit(f"backbone: {catalog.get_backbone(cfg.backbone).description}; weights: {entry.help}")
    _emit(f"preprocessing: {model.preprocessing.describe()}")
    describe = getattr(model.backbone, "describe_params", None)
    origin = describe() if callable(describe) else f"cxr {cfg.backbone}"
    _emit(f"backbone {count_parameters(model.backbone)['total']:,} ({origin})")
    widths = " -> ".join(str(w) for w in (*cfg.head, args.classes))
    _emit(f"head {count_parameters(model.head)['total']:,} (GAP -> {widths})")
    for key, label in (("total", "Total"), ("trainable", "Trainable"), ("non_trainable", "Non-trainable")):
        _emit(f"{label} params: {counts[key]:,}")
    return 0


def _selected(model: nn.Module, depth: int | None) -> list[tuple[str, nn.Module]]:
    """Leaves, or modules at exactly `depth` plus shallower leaves."""
    chosen = []
    for name, module in model.named_modules():
        if not name:
            continue
        level = name.count(".") + 1
        is_leaf = next(module.children(), None) is None
        if (depth is None and is_leaf) or (
            depth is not None and (level == depth or (level < depth and is_leaf))
        ):
            chosen.append((name, module))
    return chosen


def layer_table(model: nn.Module, size: int, depth: int | None = None) -> list[dict[str, str]]:
    """One row per module: name, type, output shape (from a dummy forward pass), params, trainable."""
    import torch

    chosen = _selected(model, depth)
    shapes: dict[str, str] = {}
    hooks = [
        module.register_forward_hook(
            lambda _m, _i, out, name=name: shapes.__setitem__(name, "x".join(map(str, out.shape)))
        )
        for name, module in chosen
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, getattr(model.preprocessing, "channels", 3), size, size))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    rows = []
    for name, module in chosen:
        params = list(module.parameters())
        count = sum(p.numel() for p in params)
        flags = {p.requires_grad for p in params}
        trainable = (
            "" if not params else ("yes" if flags == {True} else "no" if flags == {False} else "partial")
        )
        rows.append(
            {
                "name": name,
                "type": type(module).__name__,
                "output": shapes.get(name, "-"),
                "params": f"{count:,}",
                "trainable": trainable,
            }
        )
    return rows


def format_table(rows: list[dict[str, str]]) -> str:
    """Fixed-width text table with a header line."""
    headers = {
        "name": "layer",
        "type": "type",
        "output": "output shape",
        "params": "params",
        "trainable": "trainable",
    }
    widths = {key: max([len(title)] + [len(row[key]) for row in rows]) for key, title in headers.items()}
    right = {"params"}

    def line(values: dict[str, str]) -> str:
        cells = [values[k].rjust(widths[k]) if k in right else values[k].ljust(widths[k]) for k in headers]
        return "  ".join(cells).rstrip()

    rule = "-" * len(line(headers))
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def run_weights(args: argparse.Namespace) -> int:
    """The catalog: which weight specs fit which backbone, and whether the hub files are in the cache."""
    from cxr.models.weights import HUB_FILES, hub_checkpoint_path

    info = {
        "backbones": {
            name: {
                "weights": catalog.allowed_for(name),
                "description": bb.description,
                "variant": bb.variant,
                "preprocessing": bb.preprocessing,
                "entries": [
                    {"spec": e.spec, "kind": e.kind, "preprocessing": e.preprocessing or bb.preprocessing,
                     "help": e.help}
                    for e in bb.weights
                ],
            }
            for name, bb in catalog.BACKBONES.items()
        },
        "torchvision": {
            spec: {
                "url": hub.url,
                "path": str(hub_checkpoint_path(hub)),
                "cached": hub_checkpoint_path(hub).is_file(),
            }
            for spec, hub in HUB_FILES.items()
        },
    }
    if args.json:
        _emit(json.dumps(info, indent=2))
        return 0
    for name, entry in info["backbones"].items():
        _emit(f"{name}: {entry['description']} (variant {entry['variant']}, preprocessing {entry['preprocessing']})")
        for w in entry["entries"]:
            _emit(f"  {w['spec']:21s} {w['kind']:8s} {w['help']} [{w['preprocessing']}]")
    _emit()
    for spec, entry in info["torchvision"].items():
        state = "cached" if entry["cached"] else "not cached: download the URL to that path"
        _emit(f"{spec:12s} {entry['url']}\n{'':12s} {entry['path']} ({state})")
    return 0


def _matches(name: str, text: str | None) -> bool:
    if not text:
        return True
    return fnmatch.fnmatch(name, text) if any(c in text for c in "*?[") else text in name


def family_names(family: str) -> list[str]:
    """Every NAME of a family (xrv: the weights names)."""
    from cxr.models import families

    if family == "xrv":
        return list(families.XRV_WEIGHTS)
    return catalog.FAMILIES[f"{family}:"].names()  # type: ignore[misc]  # both families list their names


def run_list(args: argparse.Namespace) -> int:
    """Built-in backbones, families with examples, the weights caches; or one family's models."""
    from cxr.models.cache import cached_weights

    if args.family:
        names = [n for n in family_names(args.family) if _matches(n, args.filter)]
        prefix = f"{args.family}:"
        if args.json:
            _emit(json.dumps([prefix + n for n in names]))
        else:
            for name in names:
                _emit(prefix + name)
            _emit(f"{len(names)} {args.family} name(s)" + (f" matching {args.filter!r}" if args.filter else ""))
        return 0
    info = {
        "builtin": {name: {"description": bb.description, "weights": catalog.allowed_for(name)}
                    for name, bb in catalog.BACKBONES.items()},
        "families": {prefix: {"description": fam.description, "examples": [prefix + e for e in fam.examples],
                              "weights": "imagenet (the library's pretrained weights), file:PATH, random"}
                     for prefix, fam in catalog.FAMILIES.items()},
        "xrv": {"weights": [f"xrv:{n}" for n in family_names("xrv")], "backbones": ["tv:densenet121", "tv:resnet50"]},
        "cached": cached_weights(),
    }
    if args.json:
        _emit(json.dumps(info, indent=2))
        return 0
    _emit("built-in backbones:")
    for name, entry in info["builtin"].items():
        _emit(f"  {name:20s} {entry['description']}; weights {entry['weights']}")
    _emit("families (`cxr model list --family timm|tv [--filter TEXT]` lists their models):")
    for prefix, entry in info["families"].items():
        _emit(f"  {prefix + 'NAME':20s} {entry['description']}; e.g. {', '.join(entry['examples'])}; "
              f"weights {entry['weights']}")
    _emit(f"chest X-ray weights (for {', '.join(info['xrv']['backbones'])}, extra cxr[xrv]): "
          f"{', '.join(info['xrv']['weights'])}")
    _emit("cached weights:")
    for cache, entry in info["cached"].items():
        files = entry["files"]
        _emit(f"  {cache}: {entry['folder']}: " + (", ".join(files) if files else "(none)"))
    return 0
