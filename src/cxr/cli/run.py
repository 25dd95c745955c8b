"""`cxr run`, `cxr train`, `cxr evaluate` and `cxr demo`: the main job from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from cxr.cli._common import add_command, positive_int
from cxr.errors import CxrError
from cxr.rank import is_main_process

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show a flag's default only where it has one (flags that override the config default to None)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, []):
            return action.help or ""
        return super()._get_help_string(action)


FREEZE_HELP = "base (train the head only, the seed) | stages:N (also train the last N backbone stages) | none"


def _say(text: object) -> None:
    """A result line on stdout (logs go to stderr); under torchrun only rank 0 prints."""
    if is_main_process():
        sys.stdout.write(f"{text}\n")


def register(sub: argparse._SubParsersAction) -> None:
    """Add run, train, evaluate and demo to the `cxr` parser."""
    run = add_command(
        sub, "run", cmd_run, "inspect, split, train, evaluate and report: one complete study",
        description=(
            "Run a complete study on a data folder (or CSV manifest): audit and split the images, draw "
            "the dataset figures, train, evaluate best.pt on the test split and write report.md/html. "
            "Settings come from the seed recipe, then --config, then --set, then the flags below. "
            "The last line printed is the path of report.html."
        ),
    )
    _training_flags(run)
    train = add_command(
        sub, "train", cmd_train, "split and train only (no test evaluation, no report)",
        description=(
            "Train on a data folder (or CSV manifest) and stop: writes config.yaml, split.csv, history.csv, "
            "checkpoints/{last,best}.pt and log.txt. Prints the path of best.pt last."
        ),
    )
    _training_flags(train)
    train.add_argument("--split-csv", type=Path, metavar="FILE",
                       help="train on the rows of this split.csv (paths relative to --data) instead of a new split")

    evaluate = add_command(
        sub, "evaluate", cmd_evaluate, "score a checkpoint on a data folder",
        description=(
            "Evaluate a checkpoint on a data folder: loss, accuracy, Keras precision/recall, macro-F1 with "
            "bootstrap CIs, per-class metrics, ROC-AUC, calibration. The rows are the --split of the run's "
            "split.csv when the checkpoint was trained on this data (folder or manifest); on other data, "
            "--split test (the default) scores every image and train/val are refused. "
            "The data's classes must equal the checkpoint's."
        ),
    )
    evaluate.add_argument("--checkpoint", required=True, type=Path, metavar="CKPT", help="a cxr checkpoint (.pt)")
    evaluate.add_argument("--data", required=True, type=Path, metavar="PATH", help="data folder or CSV manifest")
    evaluate.add_argument("--split", default="test", choices=("train", "val", "test", "all"),
                          help="which rows of the run's split.csv to score; 'all' scores every image of --data")
    evaluate.add_argument("--split-csv", type=Path, metavar="FILE", help="take the rows from this split.csv")
    evaluate.add_argument("--out", type=Path, metavar="DIR",
                          help="write metrics.json, predictions.csv and figures/ here")
    evaluate.add_argument("--tta", action="store_true",
                          help="test-time augmentation: average the horizontal flip and four small shifts")
    evaluate.add_argument("--batch-size", type=positive_int, metavar="N", help="batch size (default: the run's)")
    evaluate.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    evaluate.add_argument("--precision", default="auto", choices=PRECISIONS,
                          help="compute precision; auto = bf16 where native, else fp32 (fp16 on older GPUs)")

    demo = add_command(
        sub, "demo", cmd_demo, "the main job on built-in synthetic images (a few minutes on a CPU)",
        description=(
            "Generate a small synthetic chest-X-ray-like dataset into DIR/data and run a complete study on "
            "it in DIR (EfficientNet-Lite0, ImageNet weights, frozen base). Not medical data: it shows "
            "what `cxr run` produces. The last line printed is the path of report.html."
        ),
    )
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), metavar="DIR", help="run directory")
    demo.add_argument("--n-per-class", type=positive_int, metavar="N", help="synthetic images per class")
    demo.add_argument("--epochs", type=positive_int, metavar="N", help="training epochs")
    demo.add_argument("--no-feature-cache", action="store_true", help="train on images every epoch")
    demo.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    for parser in (run, train, evaluate, demo):
        parser.formatter_class = _HelpFormatter


def _training_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, metavar="PATH",
                        help="data folder (Kaggle COVID-19 Radiography layout, class-per-folder) or CSV manifest")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="YAML config (e.g. configs/seed.yaml); with --resume the run's config.yaml by default")
    parser.add_argument("--backbone", help="resnet50 | resnet50-keras | efficientnet_lite0")
    parser.add_argument("--weights",
                        help="imagenet | imagenet-v1 | keras-imagenet:PATH | file:PATH | lite0-imagenet | random")
    parser.add_argument("--freeze", help=FREEZE_HELP)
    parser.add_argument("--epochs", type=positive_int, metavar="N", help="training epochs (seed: 20)")
    parser.add_argument("--batch-size", type=positive_int, metavar="N", help="batch size (seed: 32)")
    parser.add_argument("--lr", type=float, metavar="X", help="head learning rate (seed: 1e-4)")
    parser.add_argument("--seed", type=int, metavar="N",
                        help="seed of the split and of training (use --set train.seed=N to vary training only)")
    parser.add_argument("--out", type=Path, metavar="DIR", help="run directory (default: runs/<name>)")
    parser.add_argument("--name", help="run name (default: the --out folder's name, else the config's name)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from checkpoints/last.pt (same split, same result)")
    parser.add_argument("--no-feature-cache", action="store_true",
                        help="with freeze=base, still run the backbone on images every epoch (the direct path)")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="compute precision; auto = bf16 where native, else fp32 (fp16 on older GPUs)")
    parser.add_argument("--compile", action="store_true", default=None, help="torch.compile the trained module")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set train.schedule=cosine --set data.image_size=128 "
                             "(repeatable; values are parsed as YAML)")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """['train.epochs=3', ...] -> {'train.epochs': 3}; values parsed as YAML scalars/lists."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CxrError(f"--set expects KEY=VALUE (e.g. train.epochs=3), got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise CxrError(f"--set {item!r}: the value is not valid YAML") from None
    return out


def resolve_config(args: argparse.Namespace) -> tuple[Any, Path]:
    """The run config (defaults < --config < --set < flags) and the run directory."""
    from cxr.config import load_config

    overrides = parse_overrides(args.overrides)
    flags = {
        "model.backbone": args.backbone,
        "model.weights": args.weights,
        "model.freeze": args.freeze,
        "train.epochs": args.epochs,
        "train.batch_size": args.batch_size,
        "train.lr": args.lr,
        "train.seed": args.seed,
        "data.split_seed": args.seed,
        "train.device": args.device,
        "train.precision": args.precision,
        "train.compile": args.compile,
        "train.feature_cache": False if args.no_feature_cache else None,
        "name": args.name,
    }
    if args.out is not None and args.name is None:
        flags["name"] = args.out.name
    overrides.update({k: v for k, v in flags.items() if v is not None})
    config_file = args.config
    if config_file is None and args.resume and args.out is not None and (args.out / "config.yaml").is_file():
        config_file = args.out / "config.yaml"
    cfg = load_config(config_file, overrides)
    out = args.out if args.out is not None else Path("runs") / cfg.name
    return cfg, out


def cmd_run(args: argparse.Namespace) -> int:
    from cxr.study import run_study

    cfg, out = resolve_config(args)
    run_dir = run_study(cfg, args.data, out, resume=args.resume).run_dir
    _print_summary(run_dir)
    _say(run_dir / "report.html")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from cxr.study import train

    cfg, out = resolve_config(args)
    run_dir = train(cfg, args.data, out, resume=args.resume, split_csv=args.split_csv).run_dir
    _say(run_dir / "checkpoints" / "best.pt")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cxr.study import evaluate_checkpoint

    metrics = evaluate_checkpoint(args.checkpoint, args.data, args.split, out_dir=args.out, tta=args.tta,
                                  device=args.device, precision=args.precision, batch_size=args.batch_size,
                                  split_csv=args.split_csv)
    _say(_metrics_line(metrics))
    _say(metrics["classification_report"].rstrip())
    if args.out is not None:
        _say(args.out / "metrics.json")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from cxr.study import demo_config, run_demo
    from cxr.study.presets import DEMO_IMAGES_PER_CLASS

    cfg = demo_config()
    if args.epochs:
        cfg.train.epochs = args.epochs
    if args.device:
        cfg.train.device = args.device
    if args.no_feature_cache:
        cfg.train.feature_cache = False
    cfg.name = args.out.name or cfg.name
    run_dir = run_demo(args.out, n_per_class=args.n_per_class or DEMO_IMAGES_PER_CLASS, cfg=cfg).run_dir
    _print_summary(run_dir)
    _say(run_dir / "report.html")
    return 0


def _metrics_line(test: dict[str, Any]) -> str:
    ci = test.get("ci") or {}

    def with_ci(name: str) -> str:
        bounds = ci.get(name)
        text = f"{test[name]:.4f}"
        return text + (f" [{bounds[0]:.4f}, {bounds[1]:.4f}]" if bounds else "")

    return (f"test n={test['n']}: accuracy {with_ci('accuracy')}, macro-F1 {with_ci('macro_f1')}, "
            f"precision {test['precision']:.4f}, recall {test['recall']:.4f}, loss {test['loss']:.4f}")


def _print_summary(run_dir: Path) -> None:
    metrics_path = run_dir / "metrics.json"
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
        _say(f"{_metrics_line(metrics['test'])}; wall time {metrics['wall_seconds']:.1f} s")
