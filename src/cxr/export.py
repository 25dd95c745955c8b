"""Export a checkpoint to ONNX or TorchScript, and check the export against PyTorch.

Both exports take the *normalised* input tensor (N, 3, S, S), float32, and return the class
probabilities (softmax inside the graph; the ONNX graph also outputs the logits). The preprocessing
that makes that tensor from an X-ray is written into the file so a consumer can reproduce it: ONNX
`metadata_props` and TorchScript extra file `cxr.json` hold the classes, the preprocessing mode,
input size, per-channel mean/std (on 0..255 pixels), channel order, the temperature and, when best.pt has
one, the conformal calibration (`conformal`: method, thresholds per class at the default coverage and a
few others, how to form a set from the probabilities; `cxr.prediction_sets`). The logits
are divided by the checkpoint's temperature inside the graph (`cxr.temperature`; 1 when it has none),
so the exported probabilities are the calibrated ones `cxr predict` gives. The batch axis is dynamic.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cxr import __version__
from cxr.checkpoint import config_of, is_multilabel, load_checkpoint, model_from_checkpoint, thresholds_of
from cxr.data.discover import discover
from cxr.engine.exports import write_onnx
from cxr.errors import CxrError
from cxr.io import IMAGE_EXTENSIONS, read_image
from cxr.logs import RESULT
from cxr.predict import Predictor
from cxr.prediction_sets import export_metadata
from cxr.temperature import TemperatureScaled, temperature_of
from cxr.transforms import Preprocessing, output_probs, resize_gray, to_input

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
PARITY_TOLERANCE = 1e-4  # max abs difference of probabilities accepted by the checks
PARITY_IMAGES = 16
INPUT_NAME = "input"
OUTPUT_NAMES = ("probabilities", "logits")
TORCHSCRIPT_META = "cxr.json"
ORT_LOG_ERRORS = 3  # onnxruntime severity: 0 verbose, 1 info, 2 warning, 3 error


class ProbabilityModel(nn.Module):
    """Wraps a classifier so the exported graph ends with its probabilities: x -> (probabilities,
    logits), a softmax over the classes or (`multilabel`) one sigmoid per finding."""

    def __init__(self, model: nn.Module, multilabel: bool = False) -> None:
        super().__init__()
        self.model = model
        self.multilabel = multilabel

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)
        return (torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=1)), logits


_INTENSITY_TEXT = {"equalize": "histogram equalisation (skimage.exposure.equalize_hist, 256 bins)",
                   "clahe": "CLAHE (skimage.exposure.equalize_adapthist, clip limit 0.01, 1/8-side tiles)"}


def describe_input(classes: list[str], pre: Preprocessing, temperature: float = 1.0,
                   thresholds: list[float] | None = None) -> dict[str, Any]:
    """How to build the model input from an X-ray, and what the outputs mean (stored in the export);
    `thresholds`: a multi-label model's, one per finding."""
    mean, std = pre.mean_std()
    probabilities = ("probabilities (N, C) softmax over `classes`" if thresholds is None else
                     "probabilities (N, C) one sigmoid per finding of `classes`, present at or over its `thresholds`")
    order = "BGR" if pre.bgr else "RGB"
    return {
        "classes": list(classes),
        "preprocessing_mode": pre.mode,
        "input_size": pre.size,
        **({"intensity": pre.intensity} if pre.intensity != "none" else {}),
        "channel_order": order,
        "mean": list(mean),
        "std": list(std),
        "input": (
            f"float32 (N, {pre.channels}, {pre.size}, {pre.size}): the X-ray decoded to 8-bit grayscale, resized "
            f"to {pre.size}x{pre.size} ({pre.interpolation}), "
            + (f"standardised by {_INTENSITY_TEXT[pre.intensity]}, " if pre.intensity != "none" else "")
            + (f"repeated to 3 channels ({order}), " if pre.channels == 3 else "as one channel, ")
            + "then (pixel - mean) / std per channel with pixel in 0..255"
        ),
        "outputs": f"{probabilities}; logits (N, C), already divided by the temperature",
        "temperature": float(temperature),
        **({} if thresholds is None else {"task": "multilabel", "thresholds": list(thresholds)}),
        "cxr_version": __version__,
    }


def _load(checkpoint: str | Path | dict[str, Any]) -> tuple[dict[str, Any], nn.Module]:
    """The checkpoint dict and its classifier (fp32, eval), its logits divided by the temperature."""
    if isinstance(checkpoint, dict):
        ckpt, source = checkpoint, "checkpoint"
    else:
        ckpt, source = load_checkpoint(checkpoint), checkpoint
    model = model_from_checkpoint(ckpt, source=source).float().eval()
    return ckpt, TemperatureScaled(model, temperature_of(ckpt, source)).eval()


def export_onnx(
    checkpoint: str | Path | dict[str, Any], out: str | Path, opset: int = 17, check: bool = False
) -> Path:
    """Write `out` (.onnx) with a dynamic batch axis and the preprocessing in `metadata_props`.

    With `check=True` the ONNX Runtime outputs are compared with PyTorch on `PARITY_IMAGES` images
    and a CxrError is raised when the probabilities differ by `PARITY_TOLERANCE` or more.
    """
    import onnx

    ckpt, model = _load(checkpoint)
    pre = Preprocessing.from_dict(ckpt["preprocessing"])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, pre.channels, pre.size, pre.size)
    multilabel = is_multilabel(ckpt)
    write_onnx(ProbabilityModel(model, multilabel), example, out, INPUT_NAME, OUTPUT_NAMES, opset)
    proto = onnx.load(str(out))
    meta = describe_input(ckpt["classes"], pre, temperature_of(ckpt), _thresholds(ckpt))
    meta["backbone"] = config_of(ckpt).model.backbone
    meta.update(export_metadata(ckpt))  # conformal: the prediction sets' thresholds, when calibrated
    _set_metadata(proto, meta)
    proto.doc_string = "cxr chest X-ray classifier. " + meta["input"]
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))
    log.info("wrote %s (opset %d, %d classes)", out, opset, len(ckpt["classes"]), extra=RESULT)
    if check:
        diff = check_onnx(model, out, pre, multilabel=multilabel)
        _require_parity(diff, out)
    return out


def _ignore_tracer_warnings() -> None:
    """Shape arithmetic on the input size (e.g. 'same' padding) is frozen by tracing. That is
    correct here: the spatial size is fixed by the preprocessing record; only the batch axis varies
    (and the parity checks run a different batch size than the trace)."""
    warnings.simplefilter("ignore", category=torch.jit.TracerWarning)


def _set_metadata(proto: Any, meta: dict[str, Any]) -> None:
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key = f"cxr.{key}"
        entry.value = value if isinstance(value, str) else json.dumps(value)


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The `cxr.*` metadata of an exported ONNX file, JSON values decoded (keys without the prefix)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    meta: dict[str, Any] = {}
    for entry in proto.metadata_props:
        if entry.key.startswith("cxr."):
            try:
                meta[entry.key[4:]] = json.loads(entry.value)
            except json.JSONDecodeError:
                meta[entry.key[4:]] = entry.value
    return meta


def export_torchscript(checkpoint: str | Path | dict[str, Any], out: str | Path, check: bool = False) -> Path:
    """Write a traced TorchScript module (x -> (probabilities, logits)) with `cxr.json` metadata."""
    ckpt, model = _load(checkpoint)
    pre = Preprocessing.from_dict(ckpt["preprocessing"])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    multilabel = is_multilabel(ckpt)
    wrapped = ProbabilityModel(model, multilabel).eval()
    example = parity_inputs(pre, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        _ignore_tracer_warnings()
        with torch.no_grad():
            traced = torch.jit.trace(wrapped, (example,), check_trace=False)
        meta = describe_input(ckpt["classes"], pre, temperature_of(ckpt), _thresholds(ckpt))
        meta["backbone"] = config_of(ckpt).model.backbone
        meta.update(export_metadata(ckpt))
        torch.jit.save(traced, str(out), _extra_files={TORCHSCRIPT_META: json.dumps(meta)})
    log.info("wrote %s (TorchScript, %d classes)", out, len(ckpt["classes"]), extra=RESULT)
    if check:
        diff = check_torchscript(model, out, pre, multilabel=multilabel)
        _require_parity(diff, out)
    return out


def parity_inputs(pre: Preprocessing, n: int = PARITY_IMAGES, seed: int = 0) -> torch.Tensor:
    """`n` normalised inputs from seeded images (smooth random shapes plus noise), for parity checks."""
    rng = np.random.default_rng(seed)
    size = pre.size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    images = []
    for _ in range(n):
        cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.4)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        img = 255.0 * (0.6 * blob + 0.2 * xx) + rng.normal(0, 12, (size, size))
        images.append(to_input(np.clip(img, 0, 255).astype(np.float32), pre))
    return torch.stack(images)


@torch.no_grad()
def _torch_probs(model: nn.Module, x: torch.Tensor, multilabel: bool = False) -> np.ndarray:
    return output_probs(model(x), multilabel).numpy()


def _thresholds(ckpt: dict[str, Any]) -> list[float] | None:
    return thresholds_of(ckpt) if is_multilabel(ckpt) else None


def ort_session(path: str | Path) -> Any:
    """A CPU ONNX Runtime session that logs errors only (graph clean-up notes are not for users)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = ORT_LOG_ERRORS
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def check_onnx(model: nn.Module, path: str | Path, pre: Preprocessing, n: int = PARITY_IMAGES,
               multilabel: bool = False) -> float:
    """Max abs difference of probabilities between PyTorch (fp32) and ONNX Runtime on `n` images,
    run as one batch of `n` (which also exercises the dynamic batch axis)."""
    x = parity_inputs(pre, n)
    session = ort_session(path)
    onnx_probs = session.run([OUTPUT_NAMES[0]], {INPUT_NAME: x.numpy()})[0]
    diff = float(np.abs(onnx_probs - _torch_probs(model.float().eval(), x, multilabel)).max())
    log.info("ONNX Runtime vs PyTorch: max abs probability difference %.3g on %d images", diff, n, extra=RESULT)
    return diff


def check_torchscript(model: nn.Module, path: str | Path, pre: Preprocessing, n: int = PARITY_IMAGES,
                      multilabel: bool = False) -> float:
    """Max abs difference of probabilities between PyTorch and the saved TorchScript module."""
    x = parity_inputs(pre, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        ts_probs = loaded(x)[0].numpy()
    diff = float(np.abs(ts_probs - _torch_probs(model.float().eval(), x, multilabel)).max())
    log.info("TorchScript vs PyTorch: max abs probability difference %.3g on %d images", diff, n, extra=RESULT)
    return diff


def check_export(checkpoint: str | Path | dict[str, Any], path: str | Path, fmt: str, n: int = PARITY_IMAGES) -> float:
    """Max abs probability difference between a checkpoint and its export in format `fmt`."""
    ckpt, model = _load(checkpoint)
    pre = Preprocessing.from_dict(ckpt["preprocessing"])
    multilabel = is_multilabel(ckpt)
    if fmt == "onnx":
        return check_onnx(model, path, pre, n, multilabel)
    if fmt == "torchscript":
        return check_torchscript(model, path, pre, n, multilabel)
    raise CxrError(f"unknown export format {fmt!r}; allowed: {', '.join(FORMATS)}")


def _require_parity(diff: float, path: Path) -> None:
    if not diff < PARITY_TOLERANCE:
        raise CxrError(f"{path}: exported model differs from PyTorch by {diff:.3g} (tolerance {PARITY_TOLERANCE})")


def export(checkpoint: str | Path, fmt: str, out: str | Path, check: bool = False, opset: int = 17) -> Path:
    """Dispatch on `fmt` ('onnx' | 'torchscript')."""
    if fmt == "onnx":
        return export_onnx(checkpoint, out, opset=opset, check=check)
    if fmt == "torchscript":
        return export_torchscript(checkpoint, out, check=check)
    raise CxrError(f"unknown export format {fmt!r}; allowed: {', '.join(FORMATS)}")


# ------------------------------------------------------------------------------ int8 quantization


def quantize_onnx_int8(onnx_path: str | Path, out: str | Path, calibration: torch.Tensor) -> Path:
    """ONNX Runtime static int8 quantization (QDQ, per-channel int8 weights, uint8 activations).

    `calibration` holds normalised inputs (N, 3, S, S), ideally real training images: activation
    ranges are taken from them. The `cxr.*` metadata is carried over and the method is recorded.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._rows = iter(calibration.numpy()[:, None])

        def get_next(self) -> dict[str, np.ndarray] | None:
            row = next(self._rows, None)
            return None if row is None else {INPUT_NAME: row}

    if calibration.shape[0] < 1:
        raise CxrError("int8 quantization needs at least one calibration image")
    out = Path(out)
    quantize_static(str(onnx_path), str(out), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    meta = read_onnx_metadata(onnx_path)
    meta["quantization"] = f"onnxruntime static int8 (QDQ, per-channel weights), {calibration.shape[0]} calibration images"
    proto = onnx.load(str(out))
    _set_metadata(proto, meta)
    onnx.save(proto, str(out))
    log.info("wrote %s (int8, calibrated on %d images)", out, calibration.shape[0], extra=RESULT)
    return out


def evaluate_variants(
    checkpoint: str | Path | dict[str, Any],
    onnx_files: dict[str, Path],
    folder: str | Path,
    limit: int | None = None,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Accuracy of the PyTorch model and of each ONNX file on a labelled folder, and their changes.

    Classes are matched by name; images of classes the model does not know are left out. With
    `limit`, an evenly spaced subset of that many images is used. Returns a JSON-ready dict with, per
    variant: accuracy, accuracy change vs PyTorch, top-1 agreement with PyTorch, max abs probability
    difference, and seconds per image (CPU, this machine).
    """

    ckpt, model = _load(checkpoint)
    if is_multilabel(ckpt):
        raise CxrError("evaluating int8 variants by accuracy is for single-label models; this checkpoint is "
                       "multi-label (its exports' parity is still checked with --check)")
    classes = list(ckpt["classes"])
    pre = Preprocessing.from_dict(ckpt["preprocessing"])
    found = discover(folder)
    samples = [s for s in found.samples if s.label in classes]
    if not samples:
        raise CxrError(f"no images of the model's classes ({', '.join(classes)}) in {folder}")
    if limit is not None and limit < len(samples):
        samples = [samples[i] for i in np.linspace(0, len(samples) - 1, limit).round().astype(int)]
    predictor = Predictor(model, classes, pre, device="cpu", precision="fp32")
    labels = np.array([classes.index(s.label) for s in samples])
    inputs = torch.stack([predictor.preprocess(read_image(found.root / s.path)) for s in samples])

    def run(fn: Any) -> tuple[np.ndarray, float]:
        start = time.perf_counter()
        probs = np.concatenate([fn(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)])
        return probs, (time.perf_counter() - start) / len(inputs)

    reference, ref_time = run(lambda x: _torch_probs(model, x))
    ref_acc = float((reference.argmax(1) == labels).mean())
    report: dict[str, Any] = {"n": len(samples), "folder": Path(folder).name,
                              "pytorch_fp32": {"accuracy": ref_acc, "seconds_per_image": ref_time}}
    for name, path in onnx_files.items():
        session = ort_session(path)
        probs, seconds = run(lambda x, s=session: s.run([OUTPUT_NAMES[0]], {INPUT_NAME: x.numpy()})[0])
        accuracy = float((probs.argmax(1) == labels).mean())
        report[name] = {
            "accuracy": accuracy,
            "accuracy_change": accuracy - ref_acc,
            "agreement_with_pytorch": float((probs.argmax(1) == reference.argmax(1)).mean()),
            "max_abs_prob_diff": float(np.abs(probs - reference).max()),
            "seconds_per_image": seconds,
        }
    return report


def calibration_inputs(checkpoint: str | Path | dict[str, Any], folder: str | Path, n: int = 64) -> torch.Tensor:
    """Normalised inputs of up to `n` images of `folder` (recursive, evenly spaced over the sorted list)."""

    ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    pre = Preprocessing.from_dict(ckpt["preprocessing"])
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise CxrError(f"no images found in {folder} for int8 calibration")
    if len(files) > n:
        files = [files[i] for i in np.linspace(0, len(files) - 1, n).round().astype(int)]
    return torch.stack([to_input(resize_gray(read_image(f), pre.size, pre.interpolation), pre) for f in files])
