"""`cxr predict`, `cxr explain` and `cxr export`: the trained model in users' hands (`cxr serve`: cli/serve.py)."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cxr.cli._common import (
    ENGINE_HELP,
    THREADS_HELP,
    add_command,
    existing_path,
    non_negative_int,
    positive_int,
    writable_output,
)
from cxr.cli.table import table_lines
from cxr.config import DEVICES, EVAL_ENGINES, LUNGS_CHOICES, PRECISIONS
from cxr.errors import CxrError, ImageReadError
from cxr.notices import SYNTHETIC_WARNING

log = logging.getLogger(__name__)

OUTPUT_SUFFIXES = (".csv", ".json")
EXPORT_FORMATS = ("onnx", "torchscript")
EXPORT_SUFFIXES = {"onnx": (".onnx",), "torchscript": (".pt", ".pth", ".pts", ".torchscript")}  # --out per --format
DEVICE_HELP = f"where to compute: {' | '.join(DEVICES)}"
LUNGS_HELP = (f"{' | '.join(LUNGS_CHOICES)}: without --box/--mask, auto takes the lungs from the built-in lung "
              "segmenter (cached by image bytes; a suspect mask: the whole image, with a warning), for a lung-crop "
              "model's crop and explain's lung outline; masks/none: only --box/--mask (default: the checkpoint's "
              "data.lungs, auto)")
PRECISION_HELP = (f"compute precision: {' | '.join(PRECISIONS)}; auto = fp32 on a CPU, every engine alike (bf16 only "
                  "when asked for: it changes some labels), bf16 autocast on a GPU that has it")


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to the `cxr` parser."""
    _register_use(sub)


def _register_use(sub: argparse._SubParsersAction) -> None:
    """predict, explain and export."""
    p = add_command(sub, "predict", cmd_predict, "class probabilities of images (files or folders)",
                    description="Predict every image given (folders are searched recursively for PNG, JPEG, "
                    "BMP, TIFF and DICOM files). Unreadable files are reported by name and skipped; the exit "
                    "status is 1 when any were skipped, 0 otherwise.")
    p.add_argument("checkpoint", type=existing_path, help="a cxr checkpoint (.pt), e.g. runs/NAME/checkpoints/best.pt")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders")
    p.add_argument("--out", type=Path, metavar="FILE",
                   help="write predictions to this .csv or .json file (default: a table on stdout, cells "
                   "with spaces in double quotes, so shlex.split reads each line back)")
    p.add_argument("--tta", action="store_true", help="test-time augmentation: average over flip and small shifts")
    p.add_argument("--batch-size", type=positive_int, default=32, metavar="N", help="images per forward pass")
    p.add_argument("--device", default="auto", metavar="DEVICE", help=DEVICE_HELP)
    _region_arguments(p, "every image's lung region, which a model trained on lung crops (data.lung_crop) needs")
    p.add_argument("--engine", choices=EVAL_ENGINES, default="auto", metavar="NAME", help=ENGINE_HELP)
    p.add_argument("--precision", choices=PRECISIONS, default="auto", metavar="MODE", help=PRECISION_HELP)
    p.add_argument("--threads", type=non_negative_int, default=0, metavar="N", help=THREADS_HELP)
    p.add_argument("--coverage", type=float, metavar="P",
                   help="also give each image's prediction set: classes that hold the true one for a share P of "
                   "images like the validation split's (e.g. 0.9; conformal, stored in best.pt; default: no sets)")

    p = add_command(sub, "explain", cmd_explain, "Grad-CAM heatmap of one image, overlaid on the X-ray",
                    description="Write the Grad-CAM overlay at the image's size to --out, and beside it "
                    "OUT.figure.png/.svg: the X-ray and the overlay side by side, a colour bar, and the class "
                    "explained with its probability.")
    p.add_argument("checkpoint", type=existing_path, help="a cxr checkpoint (.pt)")
    p.add_argument("image", type=existing_path, help="the image file")
    p.add_argument("--out", type=Path, required=True, metavar="FILE", help="output PNG")
    p.add_argument("--class", dest="class_name", metavar="NAME", help="class to explain (default: the predicted one)")
    p.add_argument("--cam-layer", metavar="LAYER",
                   help="backbone layer to explain, e.g. layer3 or features.denseblock3 (default: the checkpoint's "
                        "model.cam_layer, else the feature map the head pools)")
    p.add_argument("--device", default="auto", metavar="DEVICE", help=DEVICE_HELP)
    _region_arguments(p, "the lung region: its outline is drawn on the overlay (and a lung-crop model crops to it)")

    p = add_command(sub, "export", cmd_export, "export a checkpoint to ONNX or TorchScript",
                    description="Export the classifier (input: the normalised tensor, output: class probabilities; "
                    "the preprocessing is recorded in the file's metadata). --check compares the export with "
                    "PyTorch on 16 images and exits 1 when probabilities differ by 1e-4 or more.")
    p.add_argument("checkpoint", type=existing_path, help="a cxr checkpoint (.pt)")
    p.add_argument("--format", dest="fmt", choices=EXPORT_FORMATS, required=True, metavar="FORMAT",
                   help=f"export format: {' | '.join(EXPORT_FORMATS)}")
    p.add_argument("--out", type=Path, required=True, metavar="FILE",
                   help="output file: .onnx for onnx; .pt, .pth, .pts or .torchscript for torchscript")
    p.add_argument("--check", action="store_true", help="verify parity with PyTorch after exporting")
    p.add_argument("--opset", type=positive_int, default=17, metavar="N", help="ONNX opset version")
    p.add_argument("--int8", type=existing_path, metavar="CALIB_DIR",
                   help="onnx only: also write OUT with suffix .int8.onnx, ONNX Runtime static int8 quantization "
                   "calibrated on up to 64 images of CALIB_DIR (use training images)")
    p.add_argument("--eval", type=existing_path, metavar="DATA_DIR",
                   help="onnx only: measure the accuracy of PyTorch and of each ONNX file on this labelled folder")
    p.add_argument("--eval-limit", type=positive_int, metavar="N",
                   help="with --eval: use this many images, evenly spaced (default: all)")


def _region_arguments(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--box", action="append", metavar="X0,Y0,X1,Y1",
                   help=f"a lung bounding box in image pixels (repeatable: one per lung): {what}")
    p.add_argument("--mask", type=existing_path, metavar="FILE", help=f"a lung mask image: {what}")
    p.add_argument("--lungs", choices=LUNGS_CHOICES, metavar="MODE", help=LUNGS_HELP)


def _region(args: argparse.Namespace) -> Any:
    """The --box boxes or the --mask array of the command line; None when neither is given."""
    if args.box and args.mask:
        raise CxrError("give --box or --mask, not both")
    if args.mask:
        from cxr.io import read_image

        return read_image(args.mask)
    if args.box:
        from cxr.data.regions import parse_boxes

        return [b for text in args.box for b in parse_boxes(text, "--box")]
    return None


def _echo(text: str) -> None:
    """A result line on stdout (logs go to stderr)."""
    sys.stdout.write(text + "\n")


# ------------------------------------------------------------------------------------------ predict


def collect_images(inputs: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files from files and folders (recursive, sorted; hidden entries skipped).

    Returns (files, missing) where missing holds (input, reason) for inputs that do not exist.
    Files named explicitly are kept whatever their extension (an unreadable one is reported later).
    """
    from cxr.io import IMAGE_EXTENSIONS

    files: list[Path] = []
    missing: list[tuple[str, str]] = []
    ignored = 0
    for item in inputs:
        path = Path(item)
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(filenames):
                    if name.startswith("."):
                        continue
                    if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                        files.append(Path(dirpath) / name)
                    else:
                        ignored += 1
        else:
            missing.append((item, "no such file or folder"))
    if ignored:
        log.info("ignored %d files without an image extension", ignored)
    return files, missing


def read_chunks(
    files: list[Path], size: int, prepare: Callable[[Any, Path], Any] | None = None
) -> Iterator[tuple[list[str], list[Any], list[tuple[str, str]]]]:
    """Decode `files` in chunks of `size`: yields (paths, images, unreadable (path, reason)).

    The next chunk is decoded (and `prepare(image, path)`d, e.g. preprocessed, when given) in a
    background thread while the caller runs the model on this one.
    """
    from concurrent.futures import ThreadPoolExecutor

    from cxr.io import read_image

    def read(chunk: list[Path]) -> tuple[list[str], list[Any], list[tuple[str, str]]]:
        paths, images, bad = [], [], []
        for path in chunk:
            try:
                image = read_image(path)
                images.append(prepare(image, path) if prepare is not None else image)
                paths.append(str(path))
            except ImageReadError as exc:
                bad.append((str(path), exc.reason))
        return paths, images, bad

    chunks = [files[i : i + size] for i in range(0, len(files), size)]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cxr-read") as pool:
        pending = pool.submit(read, chunks[0]) if chunks else None
        for i in range(len(chunks)):
            result = pending.result()
            pending = pool.submit(read, chunks[i + 1]) if i + 1 < len(chunks) else None
            yield result


def cmd_predict(args: argparse.Namespace) -> int:
    import torch

    from cxr.engine.parity import PARITY_IMAGES
    from cxr.ood.image_checks import colour_reason, gray_reasons
    from cxr.predict import Prediction, Predictor
    from cxr.progress import Progress
    from cxr.runtime import set_threads

    if args.out is not None and args.out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise CxrError(f"--out must end in {' or '.join(OUTPUT_SUFFIXES)}, got {args.out}")
    writable_output(args.out)
    files, skipped = collect_images(args.inputs)
    for item, reason in skipped:
        log.warning("skipped %s: %s", item, reason)
    if not files:
        raise CxrError(f"no image files found in {', '.join(args.inputs)}")
    set_threads(args.threads)
    predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device, precision=args.precision,
                                          lungs=args.lungs, coverage=args.coverage)
    region = _region(args)
    prepare = auto_crop(predictor, files, region)
    results: list[tuple[str, Prediction]] = []
    engine_chosen = False
    with Progress(len(files), "predict") as bar:
        for paths, inputs, bad in read_chunks(files, args.batch_size, lambda image, path: (
                prepare(image, path), gray_reasons(image, predictor.ood.checks))):
            for path, reason in bad:
                log.warning("skipped %s: %s", path, reason)
            skipped.extend(bad)
            if inputs:
                batch = torch.stack([x for x, _ in inputs])
                if not engine_chosen:  # checked against PyTorch on the first images to predict
                    predictor.use_engine(args.engine, sample=batch[:PARITY_IMAGES], batch_size=args.batch_size,
                                         images=len(files))
                    engine_chosen = True
                probs = predictor.predict_tensor(batch, tta=args.tta)
                checks = [[*filter(None, [colour_reason(path, predictor.ood.checks)]), *r] for path, (_, r) in zip(paths, inputs, strict=True)]
                judged = predictor.ood.judge([predictor.to_prediction(p) for p in probs], checks)
                results.extend(zip(paths, judged, strict=True))
            bar.update(len(paths) + len(bad))
    classes = predictor.classes
    if args.out is None:
        _print_table(results, classes, predictor.thresholds)
    elif args.out.suffix.lower() == ".csv":
        _write_csv(args.out, results, classes)
    else:
        _write_json(args.out, results, skipped, predictor.name, classes, predictor.thresholds, predictor.sets,
                    warning=SYNTHETIC_WARNING if predictor.synthetic else None)
    if args.out is not None:
        log.info("wrote %s", args.out)
    log.info("%d images predicted, %d skipped", len(results), len(skipped))
    if skipped:
        log.warning("skipped (unreadable): %s", ", ".join(item for item, _ in skipped))
    return 1 if skipped else 0


def auto_crop(predictor: Any, files: list[Path], region: Any) -> Callable[[Any, Path], Any]:
    """Each image's preprocessing: cropped to `region` (--box/--mask) or, for a lung-crop model given
    none with automatic lungs, to its cached automatic mask (all segmented first, in batches)."""
    if region is not None or predictor.lung_crop is None or predictor.auto_lungs is None:
        return lambda image, path: predictor.preprocess(image, region)
    masks = dict(zip(map(str, files), predictor.auto_lungs.crop_masks(files), strict=True))
    return lambda image, path: predictor.preprocess(image, predictor.auto_lungs.region(masks.get(str(path))))


def _rows(results: list[tuple[str, Any]], classes: list[str]) -> list[list[str]]:
    return [[path, p.label, *(f"{p.probabilities[c]:.6f}" for c in classes), *_set_cell(p), *ood_cells(p)] for path, p in results]


def _set_cell(prediction: Any) -> list[str]:
    """[the prediction set as '{A, B}'] when one was asked for (--coverage), else []."""
    from cxr.prediction_sets import format_set

    return [] if prediction.prediction_set is None else [format_set(prediction.prediction_set)]


def _with_sets(results: list[tuple[str, Any]]) -> bool:
    return bool(results) and results[0][1].prediction_set is not None


def _write_csv(out: Path, results: list[tuple[str, Any]], classes: list[str]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh:
        writer = csv.writer(fh)
        sets = ["prediction_set"] if _with_sets(results) else []
        writer.writerow(["path", "predicted_label", *(f"prob_{c}" for c in classes), *sets, *OOD_COLUMNS])  # as a run's predictions.csv
        writer.writerows(_rows(results, classes))


def _write_json(out: Path, results: list[tuple[str, Any]], skipped: list[tuple[str, str]], model: str,
                classes: list[str], thresholds: list[float] | None = None, sets: Any = None,
                warning: str | None = None) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"model": model, **({"warning": warning} if warning else {}), "classes": classes}
    if sets is not None:  # --coverage: how each prediction's `prediction_set` was made
        cal = sets.calibration
        doc["prediction_sets"] = {"coverage": sets.coverage, "method": cal.method, "mondrian": cal.mondrian,
                                  "calibration_images": cal.n}
    if thresholds is not None:  # multi-label: `label` joins the findings at or over their thresholds
        doc.update(task="multilabel", thresholds=dict(zip(classes, thresholds, strict=True)))
    doc["predictions"] = [{"path": path, **p.to_dict(source=False)} for path, p in results]
    doc["skipped"] = [{"path": item, "reason": reason} for item, reason in skipped]
    out.write_text(json.dumps(doc, indent=2) + "\n")


OOD_COLUMNS = ("in_distribution", "reason")  # `cxr.ood.guard`: false when the input is not like the training X-rays


def ood_cells(p: Any) -> list[str]:
    """The in_distribution and reason cells of a prediction ('' when it was not checked)."""
    return ["" if p.in_distribution is None else str(p.in_distribution).lower(), p.reason or ""]


def _print_table(results: list[tuple[str, Any]], classes: list[str], thresholds: list[float] | None = None) -> None:
    """One row per image: its label and the probability of every class; a multi-label model's table
    names its column `findings` and shows, under the header, the threshold each finding is called at.
    Cells with spaces are quoted (cxr.cli.table), so `No Finding` is one cell for a person and a parser."""
    sets = ["set"] if _with_sets(results) else []
    header = ["path", "label" if thresholds is None else "findings", *classes, *sets, *OOD_COLUMNS]
    rows = [[path, p.label, *(f"{p.probabilities[c]:.4f}" for c in classes), *_set_cell(p), *ood_cells(p)]
            for path, p in results]
    if thresholds is not None:
        rows.insert(0, ["(threshold)", "-", *(f"{t:.4f}" for t in thresholds),
                        *["-"] * (len(header) - 2 - len(thresholds))])
    for line in table_lines(header, rows):  # "No Finding" in quotes: shlex.split reads a line back
        _echo(line)


# ------------------------------------------------------------------------------------------ explain


def cmd_explain(args: argparse.Namespace) -> int:
    from PIL import Image

    from cxr.explain import explain
    from cxr.predict import Predictor

    if args.out.suffix.lower() != ".png":
        raise CxrError(f"--out must be a .png file, got {args.out}")
    writable_output(args.out)
    predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device, lungs=args.lungs)
    if args.class_name is not None:
        predictor.class_index(args.class_name)  # fails early, listing the classes
    region = _region(args)
    if region is None and predictor.auto_lungs is not None:  # the automatic lungs (None when suspect: warned)
        region = predictor.auto_lungs.outline_region(args.image)
    result = explain(predictor, args.image, args.class_name, layer=args.cam_layer, box=region)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    picture = result.overlay()
    if region is not None:
        from cxr.explain_masks import lungs_on_explanation

        picture = lungs_on_explanation(picture, predictor, args.image, region)
    Image.fromarray(picture).save(args.out)
    figure = result.save_figure(args.out.with_suffix(".figure.png"))
    pred = result.prediction
    _echo(f"{args.image}: predicted {pred.label} ({pred.confidence:.3f}); heatmap for {result.class_name} "
          f"({pred.probabilities[result.class_name]:.3f}) -> {args.out}; figure -> {figure}")
    return 0


# ------------------------------------------------------------------------------------------- export


def cmd_export(args: argparse.Namespace) -> int:
    from cxr import export as ex
    from cxr.checkpoint import load_checkpoint

    if args.fmt != "onnx" and (args.int8 or args.eval):
        raise CxrError("--int8 and --eval need --format onnx")
    suffixes = EXPORT_SUFFIXES[args.fmt]
    if args.out.suffix.lower() not in suffixes:  # an ONNX file named model.pt misleads whoever loads it
        raise CxrError(f"--out {args.out} does not fit --format {args.fmt}: name it {args.out.stem}{suffixes[0]} "
                       f"(allowed suffixes: {', '.join(suffixes)})")
    ckpt = load_checkpoint(args.checkpoint)
    writable_output(args.out)
    if args.fmt == "onnx":
        out = ex.export_onnx(ckpt, args.out, opset=args.opset)
    else:
        out = ex.export_torchscript(ckpt, args.out)
    _echo(f"wrote {out} ({args.fmt}, {out.stat().st_size / 1e6:.1f} MB)")
    ok = True
    if args.check:
        diff = ex.check_export(ckpt, out, args.fmt)
        ok = diff < ex.PARITY_TOLERANCE
        _echo(f"parity on {ex.PARITY_IMAGES} images: max abs probability difference {diff:.3g} "
              f"({'ok' if ok else 'FAILED'}, tolerance {ex.PARITY_TOLERANCE:g})")
    variants = {"onnx_fp32": out}
    if args.int8:
        int8 = out.with_suffix(".int8.onnx")
        ex.quantize_onnx_int8(out, int8, ex.calibration_inputs(ckpt, args.int8))
        variants["onnx_int8"] = int8
        _echo(f"wrote {int8} (int8, {int8.stat().st_size / 1e6:.1f} MB)")
    if args.eval:
        report = ex.evaluate_variants(ckpt, variants, args.eval, limit=args.eval_limit)
        _echo(json.dumps(report, indent=2))
    return 0 if ok else 1


# -------------------------------------------------------------------------------------------- serve
