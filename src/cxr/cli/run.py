"""`cxr run`, `cxr train`, `cxr evaluate` and `cxr demo`: the main job from the command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import yaml

from cxr.cli._common import (
    ENGINE_HELP,
    THREADS_HELP,
    add_command,
    non_negative_int,
    positive_int,
    writable_output,
)
from cxr.cli.external import add_arguments as add_external_arguments
from cxr.cli.external import cmd_run_dir, run_extras, wants_extras
from cxr.cli.flags import DEMO_FLAGS, RUN_FLAGS, add_flags, flag_overrides
from cxr.config import DEVICES, EVAL_ENGINES, PRECISIONS
from cxr.errors import CxrError
from cxr.rank import is_main_process
from cxr.report.format import fmt

log = logging.getLogger(__name__)

DEVICE_HELP = " | ".join(DEVICES)
FORCE_HELP = ("replace the run in --out: its checkpoints, history, metrics, predictions, split, audit, "
              "config, report, figures, aug_images and log.txt are deleted first (nothing else is)")


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
        sub, "evaluate", cmd_evaluate, "score a checkpoint on a data folder, on external sets, for shortcuts",
        description=(
            "Evaluate a checkpoint on a data folder: loss, accuracy, Keras precision/recall, macro-F1 with "
            "bootstrap CIs, per-class metrics, ROC-AUC, calibration. The rows are the --split of the run's "
            "split.csv when the checkpoint was trained on this data (folder or manifest); on other data, "
            "--split test (the default) scores every image and train/val are refused. "
            "Data holding other classes (some of the checkpoint's, or other names for them: --label-map) is "
            "scored as an external set, on the classes it holds. "
            "`cxr evaluate RUN_DIR --external NAME=PATH --shortcut` adds external sets (any subset of the "
            "classes, names mapped with --label-map) and the shortcut audit to a finished run's metrics.json "
            "and report; --external/--shortcut/--occlude also work beside --checkpoint (and --data)."
        ),
    )
    evaluate.add_argument("--checkpoint", type=Path, metavar="CKPT",
                          help="a cxr checkpoint (.pt); with RUN_DIR, instead of its best.pt")
    evaluate.add_argument("--data", type=Path, metavar="PATH",
                          help="data folder or CSV manifest (with RUN_DIR: instead of the run's data)")
    evaluate.add_argument("--split", default="test", choices=("train", "val", "test", "all"),
                          help="which rows of the run's split.csv to score; 'all' scores every image of --data")
    evaluate.add_argument("--split-csv", type=Path, metavar="FILE", help="take the rows from this split.csv")
    evaluate.add_argument("--out", type=Path, metavar="DIR",
                          help="write metrics.json, predictions.csv and figures/ here")
    evaluate.add_argument("--tta", action="store_true",
                          help="test-time augmentation: average the horizontal flip and four small shifts")
    evaluate.add_argument("--batch-size", type=positive_int, metavar="N", help="batch size (default: the run's)")
    evaluate.add_argument("--device", default="auto", metavar="DEVICE", help=f"where to compute: {DEVICE_HELP}")
    evaluate.add_argument("--precision", default="auto", choices=PRECISIONS, metavar="MODE",
                          help="compute precision: auto (fp32 on a CPU: bf16 changes some labels; bf16 on GPUs "
                               "that have it, else fp16) | "
                               + " | ".join(PRECISIONS[1:]))
    add_external_arguments(evaluate)
    evaluate.add_argument("--engine", choices=EVAL_ENGINES, metavar="NAME",
                          help=f"{ENGINE_HELP} (default: the checkpoint's eval.engine, auto)")
    evaluate.add_argument("--threads", type=non_negative_int, default=0, metavar="N", help=THREADS_HELP)
    evaluate.add_argument("--fit-ood", action="store_true",
                          help="first fit the out-of-distribution detector of the checkpoint (RUN_DIR: its best.pt) on "
                               "its run's training split, threshold on validation, and store it in the checkpoint")

    demo = add_command(
        sub, "demo", cmd_demo, "the main job on built-in synthetic images (a few minutes on a CPU)",
        description=(
            "Generate a small synthetic chest-X-ray-like dataset into DIR/data and run a complete study on "
            "it in DIR (EfficientNet-Lite0, ImageNet weights, frozen base). Not medical data: it shows "
            "what `cxr run` produces. The last line printed is the path of report.html."
        ),
    )
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), metavar="DIR", help="run directory")
    demo.add_argument("--resume", action="store_true",
                      help="continue the demo in DIR from checkpoints/last.pt, with its own settings and images")
    demo.add_argument("--force", action="store_true", help=FORCE_HELP.replace("--out", "DIR") + "; DIR/data is kept")
    n_per_class = demo.add_argument("--n-per-class", type=positive_int, metavar="N", help="synthetic images per class")
    n_per_class.default_text = _demo_images_per_class  # type: ignore[attr-defined]
    demo.add_argument("--task", choices=("multiclass", "multilabel"), default="multiclass",
                      help="multiclass: the four classes, one per image (default); multilabel: the three disease "
                           "patterns as findings, none, one or several per image, NIH-style manifest")
    add_flags(demo, DEMO_FLAGS, base=_demo_config, whose="the demo's")


def _demo_config() -> Any:
    from cxr.study.presets import demo_config  # imports torch: only called when the demo's help is shown

    return demo_config()


def _demo_images_per_class() -> str:
    from cxr.study.presets import DEMO_IMAGES_PER_CLASS

    return str(DEMO_IMAGES_PER_CLASS)


def _training_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, metavar="PATH",
                        help="data folder (Kaggle COVID-19 Radiography layout, class-per-folder) or CSV manifest")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="YAML config (e.g. configs/seed.yaml); with --resume the run's config.yaml by default")
    parser.add_argument("--out", type=Path, metavar="DIR", help="run directory (default: runs/<name>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from checkpoints/last.pt (same split, same result)")
    parser.add_argument("--force", action="store_true", help=FORCE_HELP)
    add_flags(parser, RUN_FLAGS)
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
    overrides.update(flag_overrides(args, RUN_FLAGS))
    if args.out is not None and args.name is None:
        overrides["name"] = args.out.name
    config_file = args.config
    if config_file is None and args.resume and args.out is not None and (args.out / "config.yaml").is_file():
        config_file = args.out / "config.yaml"
    cfg = load_config(config_file, overrides)
    out = args.out if args.out is not None else Path("runs") / cfg.name
    return cfg, out


def cmd_run(args: argparse.Namespace) -> int:
    from cxr.study import run_study

    cfg, out = resolve_config(args)
    run_dir = run_study(cfg, args.data, out, resume=args.resume, force=args.force).run_dir
    _print_summary(run_dir)
    _say(run_dir / "report.html")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from cxr.study import train

    cfg, out = resolve_config(args)
    run_dir = train(cfg, args.data, out, resume=args.resume, force=args.force, split_csv=args.split_csv).run_dir
    _say(run_dir / "checkpoints" / "best.pt")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.fit_ood and fit_ood(args):  # nothing else asked for
        return 0
    if args.run_dir is not None:
        return cmd_run_dir(args)
    if args.checkpoint is None:
        raise CxrError("give RUN_DIR (a finished run) or --checkpoint CKPT with --data PATH and/or --external NAME=PATH")
    writable_output(args.out, folder=True)
    metrics = _evaluate_data(args) if args.data is not None else None
    if metrics is not None:
        _say(_metrics_line(metrics))
        _say_calibration(metrics)
        _say(ood_line(metrics.get("ood")))
        _say(metrics.get("classification_report", "").rstrip())
    elif not wants_extras(args):
        raise CxrError("give --data PATH (the images to score) and/or --external NAME=PATH")
    if wants_extras(args):
        run_extras(args, args.out, create=True)
    if args.out is not None:
        _say(args.out / "metrics.json")
    return 0


def fit_ood(args: argparse.Namespace) -> bool:
    """`cxr evaluate --fit-ood`: fit and store the detector; True when nothing else was asked for."""
    from cxr.ood.fit import fit_checkpoint
    from cxr.rundir import RunDir

    ckpt = args.checkpoint or (RunDir(args.run_dir).best if args.run_dir is not None else None)
    if ckpt is None:
        raise CxrError("--fit-ood needs RUN_DIR or --checkpoint CKPT")
    detector = fit_checkpoint(ckpt, args.data, device=args.device)
    _say(f"out-of-distribution detector ({detector.method}, threshold {detector.threshold:.4g}, accepts "
         f"{detector.accept:.0%} of {detector.info.get('val_images')} validation images) stored in {ckpt}")
    return args.data is None and not wants_extras(args)


def ood_line(entry: dict[str, Any] | None) -> str:
    """'out of distribution: 12 of 700 images flagged (1.7%; ...)' from metrics.json's `ood` entry."""
    if not entry:
        return "out of distribution: not checked"
    share = f"{100 * entry['share']:.1f}%" if entry.get("share") is not None else "n/a"
    return (f"out of distribution: {entry['flagged']} of {entry['n']} images flagged ({share}; image checks "
            f"{entry['image_checks']}, {entry.get('method') or 'no feature detector'} {entry['detector']})")


def _evaluate_data(args: argparse.Namespace) -> dict[str, Any] | None:
    """`evaluate_checkpoint` on --data; None when the data holds other classes than a single-label checkpoint
    and was put among the external sets instead (partial classes, names mapped with --label-map)."""
    from cxr.errors import ClassMismatch
    from cxr.study import evaluate_checkpoint

    try:
        return evaluate_checkpoint(args.checkpoint, args.data, args.split, out_dir=args.out, tta=args.tta,
                                   device=args.device, precision=args.precision, batch_size=args.batch_size,
                                   split_csv=args.split_csv, engine=args.engine, threads=args.threads,
                                   lungs=args.lungs)
    except ClassMismatch as exc:
        if exc.multilabel or args.split_csv is not None:
            raise
        name = args.data.stem or "data"
        log.warning("%s holds other classes than the checkpoint: scored as an external set (the classes it "
                    "holds, names mapped by --label-map), as --external %s=%s does", args.data, name, args.data)
        args.external = [*(args.external or []), (name, str(args.data))]
        return None


def cmd_demo(args: argparse.Namespace) -> int:
    from cxr.config import apply_overrides
    from cxr.study import demo_config, run_demo
    from cxr.study.presets import DEMO_IMAGES_PER_CLASS

    overrides = flag_overrides(args, DEMO_FLAGS)
    overrides["name"] = args.out.name or "demo"
    cfg, task = apply_overrides(demo_config(), overrides), args.task
    if args.resume and (args.out / "config.yaml").is_file():  # the run's own settings, as `cxr run --resume`
        from cxr.config import load_config

        cfg = load_config(args.out / "config.yaml", overrides)
        task = cfg.data.task
    run_dir = run_demo(args.out, n_per_class=args.n_per_class or DEMO_IMAGES_PER_CLASS, cfg=cfg,
                       force=args.force, task=task, resume=args.resume).run_dir
    _print_summary(run_dir)
    _say(run_dir / "report.html")
    return 0


def _say_calibration(metrics: dict[str, Any]) -> None:
    """The ECE before and after the stored temperature, when the metrics have them."""
    calibration = metrics.get("calibration") or {}
    if calibration:
        before, after = calibration["before"], calibration["after"]
        _say(f"calibration: temperature {metrics['temperature']:.4g}; ECE {before['ece']:.4f} uncalibrated, "
             f"{after['ece']:.4f} calibrated; NLL {before['nll']:.4f} -> {after['nll']:.4f}")


def _metrics_line(test: dict[str, Any]) -> str:
    if test.get("task") == "multilabel":
        return _multilabel_line(test)
    ci = test.get("ci") or {}

    def with_ci(name: str) -> str:
        bounds = ci.get(name)
        text = f"{test[name]:.4f}"
        return text + (f" [{bounds[0]:.4f}, {bounds[1]:.4f}]" if bounds else "")

    return (f"test n={test['n']}: accuracy {with_ci('accuracy')}, macro-F1 {with_ci('macro_f1')}, "
            f"precision {test['precision']:.4f}, recall {test['recall']:.4f}, loss {test['loss']:.4f}")


def _multilabel_line(test: dict[str, Any]) -> str:
    """'test n=48: mean AUROC 0.91 [0.86, 0.95], mean AP ...; AUROC COVID 0.93, ...' (n/a: one outcome only)."""
    def with_ci(name: str) -> str:
        bounds = test.get(f"{name}_ci")
        return fmt(test.get(name), 4) + (f" [{bounds[0]:.4f}, {bounds[1]:.4f}]" if bounds else "")

    per = ", ".join(f"{name} {fmt(row.get('auroc'), 4)}" for name, row in (test.get("per_label") or {}).items())
    return f"test n={test['n']}: mean AUROC {with_ci('mean_auroc')}, mean AP {with_ci('mean_ap')}; AUROC {per}"


def _print_summary(run_dir: Path) -> None:
    metrics_path = run_dir / "metrics.json"
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
        _say(f"{_metrics_line(metrics['test'])}; wall time {metrics['wall_seconds']:.1f} s")
