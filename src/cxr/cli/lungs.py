"""`cxr lungs train | predict | eval`: the built-in lung segmenter (see `cxr.lungs`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cxr.cli._common import add_command, existing_path, positive_int, writable_output
from cxr.config import ENGINES
from cxr.errors import CxrError

ENGINE_HELP = "what runs the lung model: auto (OpenVINO, else ONNX Runtime, else PyTorch) | torch | onnxruntime | openvino"


def register(sub: argparse._SubParsersAction) -> None:
    """Add `cxr lungs` and its subcommands to the `cxr` parser."""
    group = add_command(sub, "lungs", None, "lung masks: the built-in segmenter, train your own, score one",
                        description="Lung segmentation. `cxr lungs predict IMAGES --out DIR` draws both lungs on "
                        "every X-ray with the packaged model (trained on the Montgomery and Shenzhen sets; "
                        "its masks' licence is CC BY-NC-SA 4.0, non-commercial); the masks it writes are what "
                        "`--masks DIR` reads.")
    lsub = group.add_subparsers(dest="lungs_command", metavar="COMMAND", help="what to do with lungs")
    _register_train(lsub)
    _register_predict(lsub)
    _register_eval(lsub)


def _add_pairs(p: argparse.ArgumentParser, flag: bool) -> None:
    help_ = "image folder (with --masks) or CSV manifest path,mask"
    if flag:
        p.add_argument("--data", type=existing_path, required=True, metavar="PAIRS", help=help_)
    else:
        p.add_argument("data", type=existing_path, metavar="PAIRS", help=help_)
    p.add_argument("--masks", type=existing_path, metavar="DIR",
                   help="mask folder (0/255 PNGs, same names as the images); default: a masks/ folder beside --data")


def _add_engine(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=ENGINES, default="auto", help=ENGINE_HELP)
    p.add_argument("--threads", type=int, default=0, help="threads; 0 = $OMP_NUM_THREADS, else every core")


def _register_train(lsub: argparse._SubParsersAction) -> None:
    from cxr.lungs.model import ARCHITECTURES, LungModelSpec, TrainSettings

    spec, settings = LungModelSpec(), TrainSettings()
    p = add_command(lsub, "train", cmd_train, "train a lung model on image/mask pairs and report held-out scores",
                    description="Train a U-Net (segmentation-models-pytorch) on X-rays with lung masks, hold out "
                    "a random share or a whole site (file-name prefix, e.g. MCUCXR), and write model.safetensors, "
                    "split.csv, metrics.json (Dice, IoU, HD95 with 95%% bootstrap intervals), overlays.png and "
                    "report.md to --out.")
    _add_pairs(p, flag=True)
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the model and its report")
    p.add_argument("--holdout", type=float, default=0.2, help="random share of pairs held out for scoring")
    p.add_argument("--holdout-site", metavar="PREFIX", help="hold out every pair whose file name starts with PREFIX")
    p.add_argument("--epochs", type=positive_int, default=settings.epochs, help="training epochs")
    p.add_argument("--batch-size", type=positive_int, default=8, help="images per step")
    p.add_argument("--lr", type=float, default=settings.lr, help="peak learning rate (AdamW, one cycle)")
    p.add_argument("--size", type=positive_int, default=spec.size, help="model input size in px (a multiple of 32)")
    p.add_argument("--arch", choices=ARCHITECTURES, default=spec.arch, help="smp architecture")
    p.add_argument("--encoder", default=spec.encoder, help="smp encoder ('tu-' + a timm model); "
                   "tu-tf_efficientnet_lite0 starts from ImageNet, others from scratch")
    p.add_argument("--no-pretrained", action="store_true", help="start the Lite0 encoder from scratch")
    p.add_argument("--init", type=existing_path, metavar="MODEL",
                   help="fine-tune this lung model file (its settings win over --arch, --encoder, --size) instead of starting anew")
    p.add_argument("--no-augment", action="store_true", help="train on the images as they are")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, initialisation and augmentation")
    _add_engine(p)


def _register_predict(lsub: argparse._SubParsersAction) -> None:
    p = add_command(lsub, "predict", cmd_predict, "write lung masks (and qc.csv) for a folder of X-rays",
                    description="Masks (0/255 PNG at each image's size) under --out in the images' own "
                    "relative layout, which `--masks DIR` reads, and --out/qc.csv: lung area fraction, "
                    "connected parts, left/right balance, mean confidence and a flag ok | suspect.")
    p.add_argument("paths", nargs="+", type=existing_path, metavar="[MODEL] IMAGES",
                   help="a lung model file (default: the packaged model), then an image folder or file")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the masks and qc.csv")
    _add_engine(p)


def _register_eval(lsub: argparse._SubParsersAction) -> None:
    p = add_command(lsub, "eval", cmd_eval, "score a lung model on image/mask pairs (Dice, IoU, HD95)",
                    description="Dice, IoU and 95%% Hausdorff distance (pixels) with bootstrap intervals, and the "
                    "share of masks QC flags suspect. MODEL 'default' is the packaged model.")
    p.add_argument("model", metavar="MODEL", help="a lung model file, or 'default'")
    _add_pairs(p, flag=False)
    p.add_argument("--out", type=Path, metavar="DIR", help="also write metrics.json, per_image.csv, overlays, report.md")
    _add_engine(p)


def _model_arg(value: str | Path | None) -> Path | None:
    if value is None or str(value) == "default":
        return None
    path = Path(value)
    if not path.is_file():
        raise CxrError(f"lung model file not found: {path} (give a .safetensors file from `cxr lungs train`, or 'default')")
    return path


def cmd_train(args: argparse.Namespace) -> int:
    from cxr.lungs.model import LungModelSpec, TrainSettings
    from cxr.lungs.pairs import find_pairs, split_pairs
    from cxr.lungs.report import summary_lines
    from cxr.lungs.run import train_and_report

    spec = LungModelSpec(arch=args.arch, encoder=args.encoder, size=args.size)
    settings = TrainSettings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                             pretrained=not args.no_pretrained, seed=args.seed, augment=not args.no_augment)
    pairs = find_pairs(args.data, args.masks)
    train, test = split_pairs(pairs, holdout_site=args.holdout_site, holdout=args.holdout, seed=args.seed)
    writable_output(args.out, folder=True)
    split = f"site {args.holdout_site} held out" if args.holdout_site else f"random {args.holdout:.0%} held out (seed {args.seed})"
    print(f"lungs: {len(train)} training pairs, {len(test)} held out ({split})")
    path, evaluation = train_and_report(train, test, args.out, spec, settings, engine=args.engine, split=split,
                                        threads=args.threads or 1, init=args.init)
    print(f"model: {path}")
    if evaluation is not None:
        print(f"held out (n = {evaluation.summary['n']}): " + "; ".join(summary_lines(evaluation.summary)))
        print(f"report: {args.out / 'report.md'}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from cxr.lungs.predict import list_images, write_masks
    from cxr.lungs.segmenter import LungSegmenter

    if len(args.paths) > 2:
        raise CxrError(f"expected [MODEL] IMAGES, got {len(args.paths)} paths")
    model = _model_arg(args.paths[0]) if len(args.paths) == 2 else None
    root, files = list_images(args.paths[-1])
    out = writable_output(args.out, folder=True)
    files = [f for f in files if out.resolve() not in f.resolve().parents]  # never the masks of a previous run
    if not files:
        raise CxrError(f"{args.paths[-1]} holds no images outside --out {out}")
    seg = LungSegmenter.default(args.engine, threads=args.threads) if model is None else \
        LungSegmenter.from_file(model, args.engine, threads=args.threads)
    rows = write_masks(seg, root, files, out)
    suspect = [r["path"] for r in rows if r["flag"] == "suspect"]
    unreadable = sum(r["flag"] == "unreadable" for r in rows)
    print(f"{len(rows) - unreadable} masks in {out} ({seg.describe()}); qc: {out / 'qc.csv'}")
    print(f"suspect: {len(suspect)}" + (f" (e.g. {', '.join(map(str, suspect[:3]))})" if suspect else "")
          + (f"; unreadable: {unreadable}" if unreadable else ""))
    return 1 if unreadable else 0


def cmd_eval(args: argparse.Namespace) -> int:
    from cxr.lungs.pairs import find_pairs
    from cxr.lungs.report import summary_lines
    from cxr.lungs.run import evaluate_and_report

    model = _model_arg(args.model)
    pairs = find_pairs(args.data, args.masks)
    out = writable_output(args.out, folder=True) if args.out else None
    evaluation = evaluate_and_report(model, pairs, out, engine=args.engine, threads=args.threads)
    print(f"{len(pairs)} pairs: " + "; ".join(summary_lines(evaluation.summary)))
    if out is not None:
        print(f"report: {out / 'report.md'}")
    return 0
