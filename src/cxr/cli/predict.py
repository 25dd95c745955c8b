"""`cxr predict`, `cxr explain`, `cxr export` and `cxr serve`: the trained model in users' hands."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cxr.cli._common import add_command, existing_path, positive_int
from cxr.config import DEVICES
from cxr.errors import CxrError, ImageReadError
from cxr.serve.limits import ServeLimits, read_api_key

log = logging.getLogger(__name__)

OUTPUT_SUFFIXES = (".csv", ".json")
EXPORT_FORMATS = ("onnx", "torchscript")
DEVICE_HELP = f"where to compute: {' | '.join(DEVICES)}"


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to the `cxr` parser."""
    p = add_command(sub, "predict", cmd_predict, "class probabilities of images (files or folders)",
                    description="Predict every image given (folders are searched recursively for PNG, JPEG, "
                    "BMP, TIFF and DICOM files). Unreadable files are reported by name and skipped; the exit "
                    "status is 1 when any were skipped, 0 otherwise.")
    p.add_argument("checkpoint", type=existing_path, help="a cxr checkpoint (.pt), e.g. runs/NAME/checkpoints/best.pt")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders")
    p.add_argument("--out", type=Path, metavar="FILE",
                   help="write predictions to this .csv or .json file (default: a table on stdout)")
    p.add_argument("--tta", action="store_true", help="test-time augmentation: average over flip and small shifts")
    p.add_argument("--batch-size", type=positive_int, default=32, metavar="N", help="images per forward pass")
    p.add_argument("--device", default="auto", metavar="DEVICE", help=DEVICE_HELP)

    p = add_command(sub, "explain", cmd_explain, "Grad-CAM heatmap of one image, overlaid on the X-ray",
                    description="Write the Grad-CAM overlay at the image's size to --out, and beside it "
                    "OUT.figure.png/.svg: the X-ray and the overlay side by side, a colour bar, and the class "
                    "explained with its probability.")
    p.add_argument("checkpoint", type=existing_path, help="a cxr checkpoint (.pt)")
    p.add_argument("image", type=existing_path, help="the image file")
    p.add_argument("--out", type=Path, required=True, metavar="FILE", help="output PNG")
    p.add_argument("--class", dest="class_name", metavar="NAME", help="class to explain (default: the predicted one)")
    p.add_argument("--device", default="auto", metavar="DEVICE", help=DEVICE_HELP)

    p = add_command(sub, "export", cmd_export, "export a checkpoint to ONNX or TorchScript",
                    description="Export the classifier (input: the normalised tensor, output: class probabilities; "
                    "the preprocessing is recorded in the file's metadata). --check compares the export with "
                    "PyTorch on 16 images and exits 1 when probabilities differ by 1e-4 or more.")
    p.add_argument("checkpoint", type=existing_path, help="a cxr checkpoint (.pt)")
    p.add_argument("--format", dest="fmt", choices=EXPORT_FORMATS, required=True, metavar="FORMAT",
                   help=f"export format: {' | '.join(EXPORT_FORMATS)}")
    p.add_argument("--out", type=Path, required=True, metavar="FILE", help="output file (.onnx or .pt)")
    p.add_argument("--check", action="store_true", help="verify parity with PyTorch after exporting")
    p.add_argument("--opset", type=positive_int, default=17, metavar="N", help="ONNX opset version")
    p.add_argument("--int8", type=existing_path, metavar="CALIB_DIR",
                   help="onnx only: also write OUT with suffix .int8.onnx, ONNX Runtime static int8 quantization "
                   "calibrated on up to 64 images of CALIB_DIR (use training images)")
    p.add_argument("--eval", type=existing_path, metavar="DATA_DIR",
                   help="onnx only: measure the accuracy of PyTorch and of each ONNX file on this labelled folder")
    p.add_argument("--eval-limit", type=positive_int, metavar="N",
                   help="with --eval: use this many images, evenly spaced (default: all)")

    p = add_command(sub, "serve", cmd_serve, "serve a checkpoint over HTTP (API + web page)",
                    description="Start the HTTP API (POST /v1/predict, POST /v1/predict/batch, POST /v1/explain, "
                    "GET /v1/health, GET /v1/model), the web page at / and the API docs at /docs with uvicorn. "
                    "Needs the `serve` extra. The limits below keep a server reachable from other machines "
                    "safe: slow clients are dropped, decode cost and queue length are bounded.")
    p.add_argument("checkpoint", type=existing_path, help="a cxr checkpoint (.pt)")
    p.add_argument("--host", default="127.0.0.1", metavar="ADDRESS",
                   help="interface to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, metavar="N", help="TCP port")
    p.add_argument("--device", default="auto", metavar="DEVICE", help=DEVICE_HELP)
    p.add_argument("--api-key-file", type=Path, metavar="FILE",
                   help="require the key in FILE (first line, at least 16 characters) on every /v1/* request, "
                   "as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'")
    p.add_argument("--no-docs", action="store_true", help="do not serve the API docs at /docs")
    limits = p.add_argument_group("limits")
    defaults = ServeLimits()
    limits.add_argument("--max-body-mb", type=float, default=defaults.max_body_mb, metavar="MB",
                        help="largest request body in MB (a batch counts whole)")
    limits.add_argument("--max-pixels", type=int, default=defaults.max_pixels,
                        help="largest image, width x height; it may decode to at most 2 bytes per pixel")
    limits.add_argument("--max-files", type=int, default=defaults.max_files,
                        help="most images in one POST /v1/predict/batch")
    limits.add_argument("--max-queue", type=int, default=defaults.max_queue,
                        help="images accepted and not yet answered; more get 503 with a Retry-After header")
    limits.add_argument("--limit-concurrency", type=int, default=defaults.limit_concurrency,
                        help="open connections and requests; more get 503")
    limits.add_argument("--timeout", type=float, default=defaults.timeout_s,
                        help="seconds for a request's headers, and then for its whole body, to arrive; "
                        "slower clients are dropped")
    limits.add_argument("--idle-timeout", type=float, default=defaults.idle_timeout_s,
                        help="most seconds without a byte of a request body")


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


def read_chunks(files: list[Path], size: int) -> Iterator[tuple[list[str], list[Any], list[tuple[str, str]]]]:
    """Decode `files` in chunks of `size`: yields (paths, images, unreadable (path, reason)).

    The next chunk is decoded in a background thread while the caller runs the model on this one.
    """
    from concurrent.futures import ThreadPoolExecutor

    from cxr.io import read_image

    def read(chunk: list[Path]) -> tuple[list[str], list[Any], list[tuple[str, str]]]:
        paths, images, bad = [], [], []
        for path in chunk:
            try:
                images.append(read_image(path))
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
    from tqdm import tqdm

    from cxr.predict import Prediction, Predictor

    if args.out is not None and args.out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise CxrError(f"--out must end in {' or '.join(OUTPUT_SUFFIXES)}, got {args.out}")
    files, skipped = collect_images(args.inputs)
    for item, reason in skipped:
        log.warning("skipped %s: %s", item, reason)
    if not files:
        raise CxrError(f"no image files found in {', '.join(args.inputs)}")
    predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device)
    warn_if_synthetic(predictor)
    results: list[tuple[str, Prediction]] = []
    with tqdm(total=len(files), desc="predict", unit="img", disable=None) as bar:
        for paths, images, bad in read_chunks(files, args.batch_size):
            for path, reason in bad:
                log.warning("skipped %s: %s", path, reason)
            skipped.extend(bad)
            if images:
                preds = predictor.predict(images, batch_size=args.batch_size, tta=args.tta)
                results.extend(zip(paths, preds, strict=True))
            bar.update(len(paths) + len(bad))
    classes = predictor.classes
    if args.out is None:
        _print_table(results, classes)
    elif args.out.suffix.lower() == ".csv":
        _write_csv(args.out, results, classes)
    else:
        _write_json(args.out, results, skipped, predictor.name, classes)
    if args.out is not None:
        log.info("wrote %s", args.out)
    log.info("%d images predicted, %d skipped", len(results), len(skipped))
    if skipped:
        log.warning("skipped (unreadable): %s", ", ".join(item for item, _ in skipped))
    return 1 if skipped else 0


def warn_if_synthetic(predictor: Any) -> None:
    """One WARNING line when the model was trained on synthetic images (the demo's)."""
    if predictor.synthetic:
        log.warning("WARNING: %s was trained on synthetic images (cxr demo): its predictions have no medical "
                    "meaning", predictor.name)


def _rows(results: list[tuple[str, Any]], classes: list[str]) -> list[list[str]]:
    return [[path, p.label, *(f"{p.probabilities[c]:.6f}" for c in classes)] for path, p in results]


def _write_csv(out: Path, results: list[tuple[str, Any]], classes: list[str]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", *(f"prob_{c}" for c in classes)])
        writer.writerows(_rows(results, classes))


def _write_json(out: Path, results: list[tuple[str, Any]], skipped: list[tuple[str, str]], model: str,
                classes: list[str]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "model": model,
        "classes": classes,
        "predictions": [{"path": path, "label": p.label, "probabilities": p.probabilities} for path, p in results],
        "skipped": [{"path": item, "reason": reason} for item, reason in skipped],
    }
    out.write_text(json.dumps(doc, indent=2) + "\n")


def _print_table(results: list[tuple[str, Any]], classes: list[str]) -> None:
    header = ["path", "label", *classes]
    rows = [[path, p.label, *(f"{p.probabilities[c]:.4f}" for c in classes)] for path, p in results]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        _echo("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


# ------------------------------------------------------------------------------------------ explain


def cmd_explain(args: argparse.Namespace) -> int:
    from PIL import Image

    from cxr.explain import explain
    from cxr.predict import Predictor

    if args.out.suffix.lower() != ".png":
        raise CxrError(f"--out must be a .png file, got {args.out}")
    predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device)
    warn_if_synthetic(predictor)
    if args.class_name is not None:
        predictor.class_index(args.class_name)  # fails early, listing the classes
    result = explain(predictor, args.image, args.class_name)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(result.overlay()).save(args.out)
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
    ckpt = load_checkpoint(args.checkpoint)
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


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from cxr.serve.app import serve
    except ImportError as exc:
        raise CxrError(f"cxr serve needs the serve extra (pip install 'cxr[serve]'): {exc}") from None
    from cxr.predict import Predictor

    if not 0 < args.port < 65536:
        raise CxrError(f"--port must be 1..65535, got {args.port}")
    limits = ServeLimits(max_body_mb=args.max_body_mb, max_pixels=args.max_pixels, max_files=args.max_files,
                         max_queue=args.max_queue, limit_concurrency=args.limit_concurrency,
                         timeout_s=args.timeout, idle_timeout_s=args.idle_timeout)
    api_key = read_api_key(args.api_key_file) if args.api_key_file is not None else None
    predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device)
    warn_if_synthetic(predictor)
    log.info("serving %s on http://%s:%d/ (Ctrl-C to stop)", predictor.name, args.host, args.port)
    serve(predictor, host=args.host, port=args.port, limits=limits, api_key=api_key, docs_ui=not args.no_docs)
    return 0
