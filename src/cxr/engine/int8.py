"""Optional int8: OpenVINO post-training quantisation (NNCF), accepted only where it stays accurate.

`--engine openvino-int8` quantises the classifier's OpenVINO IR with `nncf.quantize`, calibrated on
up to CALIBRATION_IMAGES images of the run's training split (split.csv beside the checkpoint, images
under the run's data root), and then scores PyTorch fp32 and the int8 model on up to
VALIDATION_IMAGES images of the validation split. The int8 engine is used only when its validation
macro-F1 is at most INT8_F1_BOUND below fp32's; otherwise a CxrError refuses it and gives both
numbers. The quantised file and the verdict are cached beside the fp32 export (by weights digest
and the digest of the images used), so a second call neither quantises nor scores again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cxr.data.discover import discover
from cxr.engine.base import INT8_ENGINE, require_installed
from cxr.engine.exports import openvino_export
from cxr.engine.parity import reference_output
from cxr.engine.select import EngineSpec
from cxr.errors import CxrError, ImageReadError
from cxr.io import read_image
from cxr.metrics import macro_f1
from cxr.progress import Progress
from cxr.rundir import RunDir, read_split_csv, write_json
from cxr.transforms import Preprocessing, resize_gray, to_input

log = logging.getLogger(__name__)

INT8_F1_BOUND = 0.01  # most validation macro-F1 that int8 may lose against fp32
CALIBRATION_IMAGES = 128
VALIDATION_IMAGES = 512


@dataclass(frozen=True)
class Int8Verdict:
    """Validation macro-F1 of fp32 and int8 on the same images, and whether int8 is accepted."""

    f1_fp32: float
    f1_int8: float
    images: int
    bound: float = INT8_F1_BOUND

    @property
    def drop(self) -> float:
        return self.f1_fp32 - self.f1_int8

    @property
    def accepted(self) -> bool:
        return self.drop <= self.bound + 1e-9  # float rounding of an exact-bound drop

    def message(self) -> str:
        verb = "accepted" if self.accepted else "refused"
        return (f"int8 {verb}: validation macro-F1 {self.f1_int8:.4f} (int8) vs {self.f1_fp32:.4f} (fp32) on "
                f"{self.images} images, a drop of {self.drop:.4f} (allowed: {self.bound:g})")


def require_accepted(verdict: Int8Verdict) -> None:
    """A CxrError with the numbers when int8 loses more macro-F1 than the bound allows."""
    if not verdict.accepted:
        raise CxrError(f"{verdict.message()}; use --engine openvino (fp32) or auto")


@dataclass
class LabelledInputs:
    """Normalised inputs of one split and their class indices."""

    x: torch.Tensor
    y: np.ndarray


def split_inputs(ckpt: str | Path, data_root: str | Path | None, classes: list[str], pre: Preprocessing,
                 split: str, limit: int) -> LabelledInputs:
    """Up to `limit` images (evenly spaced) of `split` of the run that wrote checkpoint `ckpt`."""
    split_csv = RunDir.of_checkpoint(ckpt).split
    if data_root is None or not split_csv.is_file():
        raise CxrError(f"int8 needs the run's training and validation images: {ckpt} has "
                       f"{'no data root in its config' if data_root is None else f'no split.csv beside it ({split_csv})'}")
    if not Path(data_root).exists():
        raise CxrError(f"int8 needs the run's images, but its data root {data_root} does not exist here")
    every = read_split_csv(split_csv)
    foreign = sorted({r.label for r in every} - set(classes))
    if foreign:  # a single-label run's split.csv holds its classes only; a multi-label one holds 'A|B', 'No Finding'
        raise CxrError(f"int8 is accepted by the validation macro-F1 of a single-label model, but {split_csv} holds "
                       f"labels that are not classes ({', '.join(foreign[:3])}): a multi-label run; use --engine "
                       "openvino or onnxruntime")
    rows = [r for r in every if r.split == split]
    if not rows:
        raise CxrError(f"int8 needs images of the {split} split; {split_csv} has none")
    if len(rows) > limit:
        rows = [rows[i] for i in np.linspace(0, len(rows) - 1, limit).round().astype(int)]
    root = discover(data_root).root
    inputs, labels = [], []
    with Progress(len(rows), f"int8 {split} images") as bar:
        for row in rows:
            try:
                inputs.append(to_input(resize_gray(read_image(root / row.path), pre.size), pre))
                labels.append(classes.index(row.label))
            except ImageReadError as exc:
                log.warning("int8: skipped %s: %s", row.path, exc.reason)
            bar.update(1)
    if not inputs:
        raise CxrError(f"none of the {len(rows)} {split} images under {root} could be read")
    return LabelledInputs(torch.stack(inputs), np.array(labels, dtype=np.int64))


def _digest(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def quantize(fp32_xml: Path, calibration: torch.Tensor, out: Path) -> Path:
    """`nncf.quantize` of an OpenVINO IR on `calibration` inputs (one at a time), saved to `out`."""
    import nncf
    import openvino as ov

    from cxr.engine.openvino import kept_signal_stack

    items = [row[None] for row in calibration.numpy()]
    with kept_signal_stack():  # nncf compiles models to collect statistics
        model = ov.Core().read_model(str(fp32_xml))
        quantized = nncf.quantize(model, nncf.Dataset(items), subset_size=len(items))
    tmp = out.with_name(f".tmp-{os.getpid()}-{out.name}")
    ov.save_model(quantized, str(tmp), compress_to_fp16=False)
    os.replace(tmp.with_suffix(".bin"), out.with_suffix(".bin"))
    os.replace(tmp, out)
    log.info("engine: int8 model calibrated on %d training images: %s", len(items), out)
    return out


def batched(fn: Any, x: torch.Tensor, batch_size: int) -> np.ndarray:
    return np.concatenate([fn(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def int8_engine(model: nn.Module, spec: EngineSpec, calibration: LabelledInputs, validation: LabelledInputs) -> Any:
    """The OpenVINO int8 engine of `model` (logits), or a CxrError when validation macro-F1 drops too much."""
    from cxr.engine.openvino import OpenVinoEngine

    require_installed(INT8_ENGINE)
    size = int(validation.x.shape[-1])
    fp32_xml = openvino_export(model, "logits", size)
    tag = _digest(calibration.x.numpy())
    int8_xml = fp32_xml.with_name(f"{fp32_xml.stem}-int8-{tag}.xml")
    if not (int8_xml.is_file() and int8_xml.with_suffix(".bin").is_file()):
        quantize(fp32_xml, calibration.x, int8_xml)
    engine = OpenVinoEngine(int8_xml, "logits", spec.threads, "int8", spec.hint, name=INT8_ENGINE)
    verdict_file = int8_xml.with_suffix(f".verdict-{_digest(validation.x.numpy(), validation.y)}.json")
    verdict = _cached_verdict(verdict_file)
    if verdict is None:
        fp32 = batched(lambda x: reference_output(model, "logits", x), validation.x, spec.batch_size)
        int8 = batched(engine.run, validation.x, spec.batch_size)
        verdict = Int8Verdict(macro_f1(validation.y, fp32.argmax(1)), macro_f1(validation.y, int8.argmax(1)),
                              len(validation.y))
        write_json(verdict_file, asdict(verdict))
    log.info("engine: %s", verdict.message())
    require_accepted(verdict)
    return engine


def _cached_verdict(path: Path) -> Int8Verdict | None:
    try:
        data = json.loads(path.read_text())
        return Int8Verdict(float(data["f1_fp32"]), float(data["f1_int8"]), int(data["images"]))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def int8_engine_for_run(model: nn.Module, spec: EngineSpec, ckpt: str | Path, data_root: str | Path | None,
                        classes: list[str], pre: Preprocessing) -> Any:
    """`int8_engine` calibrated on the training split and checked on the validation split of the run
    that wrote checkpoint `ckpt` (its split.csv, images under `data_root`)."""
    require_installed(INT8_ENGINE)
    if not ckpt:
        raise CxrError(f"engine {INT8_ENGINE!r} needs a checkpoint file: its run's images calibrate and check it")
    calibration = split_inputs(ckpt, data_root, classes, pre, "train", CALIBRATION_IMAGES)
    validation = split_inputs(ckpt, data_root, classes, pre, "val", VALIDATION_IMAGES)
    return int8_engine(model, spec, calibration, validation)
