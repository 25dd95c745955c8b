"""Run a trained checkpoint on new images: `Predictor.from_checkpoint(path).predict(images)`.

The preprocessing (input size, normalisation mode) is read from the checkpoint's record, never
chosen here, so predictions see exactly the input that training and evaluation saw:
decode -> grayscale uint8 -> `resize_gray(img, pre.size)` -> `to_input(img, pre)`.

Test-time augmentation (`tta=True`) averages the class probabilities over the fixed views of
`cxr.transforms.tta_probs`, the same function evaluation uses. The logits are divided by the
checkpoint's temperature (`cxr.temperature`, fitted on the validation split; 1 when absent), so the
probabilities are the calibrated ones the study reports.

The forward pass runs on an inference engine (`cxr.engine`): PyTorch (the default, and what
`explain` always uses, since it needs gradients) or, after `use_engine`, ONNX Runtime or OpenVINO.
Engines return logits; `postprocess` turns them into probabilities, whichever engine ran.

A multi-label checkpoint (`data.task: multilabel`) scores every finding with its own sigmoid; a
finding is called present at the threshold chosen for it on validation (`extra["thresholds"]`,
0.5 where none was chosen), and the prediction's label joins the present findings with '|' (NIH
style), `No Finding` when none is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from cxr.checkpoint import (
    config_of,
    is_multilabel,
    load_checkpoint,
    model_from_checkpoint,
    thresholds_of,
)
from cxr.data.masks import Region, crop_to_lungs
from cxr.data.multilabel import NO_FINDING, SEPARATOR
from cxr.engine.base import INT8_ENGINE, Engine, engine_precision
from cxr.engine.parity import synthetic_inputs
from cxr.engine.select import EngineSpec, select_engine
from cxr.errors import CxrError
from cxr.hashing import file_sha256
from cxr.io import pil_to_gray, read_image, read_image_bytes
from cxr.lungs.auto import AUTO, AutoLungs
from cxr.malloc import tune_malloc
from cxr.notices import synthetic_model_line
from cxr.ood.guard import OodGuard
from cxr.predict_inputs import as_gray_uint8, check_thresholds, is_single, per_image, source_of
from cxr.prediction_sets import SetMaker, set_maker
from cxr.runtime import autocast, resolve_device, scoring_precision
from cxr.suggest import did_you_mean
from cxr.temperature import check_temperature, synthetic_of, temperature_of
from cxr.transforms import Preprocessing, output_probs, resize_gray, to_input, tta_probs

log = logging.getLogger(__name__)

ImageInput = str | Path | bytes | np.ndarray | Image.Image


@dataclass(frozen=True)
class Prediction:
    """One image's result: the top class (`label`) and the probability of every class; for a
    multi-label model, the findings called present (`findings`, joined by '|' in `label`) and the
    probability of every finding."""

    label: str
    probabilities: dict[str, float]
    source: str | None = None  # the file path or upload name, when known
    findings: tuple[str, ...] | None = None  # multi-label: the findings over their thresholds; None: one class
    prediction_set: tuple[str, ...] | None = None  # conformal set at the predictor's coverage (None: not asked)
    in_distribution: bool | None = None  # False: not like the training X-rays (`reason` says why); None: not checked
    reason: str | None = None  # why the input is (not) in distribution (`cxr.ood.guard`)
    ood_score: float | None = None  # the feature detector's score / its threshold (over 1: out of distribution)

    @property
    def confidence(self) -> float:
        """Probability of the top class (multi-label: of the most likely finding)."""
        if self.findings is None:
            return self.probabilities[self.label]
        return max(self.probabilities.values())

    def to_dict(self, source: bool = True) -> dict[str, Any]:
        """label, probabilities (and `findings` for a multi-label model); `source` first unless left out."""
        out = {"source": self.source} if source else {}
        out.update(label=self.label, probabilities=dict(self.probabilities))
        if self.findings is not None:
            out["findings"] = list(self.findings)
        if self.prediction_set is not None:
            out["prediction_set"] = list(self.prediction_set)
        if self.in_distribution is not None:
            out.update(in_distribution=self.in_distribution, reason=self.reason, ood_score=self.ood_score)
        return out


@dataclass
class CheckpointInfo:
    """What a predictor knows about where its weights came from (for model cards and logs)."""

    path: str | None = None
    sha256: str | None = None
    epoch: int | None = None
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


class Predictor:
    """A classifier in eval mode plus its class names and preprocessing record."""

    def __init__(
        self,
        model: nn.Module,
        classes: Sequence[str],
        preprocessing: Preprocessing,
        *,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        name: str = "model",
        info: CheckpointInfo | None = None,
        engine: Engine | None = None,
        temperature: float = 1.0,
        multilabel: bool = False,
        thresholds: Sequence[float] | None = None,
    ) -> None:
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.requested_precision = precision  # exported engines take bf16 only when it is asked for by name
        self.precision = scoring_precision(precision, self.device)
        self.model = model.to(self.device).eval()
        self._classes = list(classes)
        self.preprocessing = preprocessing
        self.name = name
        self.info = info or CheckpointInfo()
        self.lung_crop: float | None = None  # the crop margin of a model trained on lung crops (data.lung_crop)
        self.auto_lungs: AutoLungs | None = None  # data.lungs auto: lungs where the caller gives none (cxr.lungs)
        self.engine = engine  # None: PyTorch eager on self.model
        self.temperature = check_temperature(temperature, name)  # the logits are divided by it
        # multi-label: the threshold each finding is called present at; None: one class per image
        self.thresholds = check_thresholds(thresholds, self._classes) if multilabel else None
        self.sets: SetMaker | None = None  # prediction sets at a coverage (`set_coverage`); None: none
        self.ood = OodGuard.from_extra(self.info.extra)  # image checks, and the feature detector best.pt stores

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str = "auto", precision: str = "auto", engine: str = "torch",
        batch_size: int = 32, hint: str = "throughput", lungs: str | None = None,
        coverage: float | None = None,
    ) -> Predictor:
        """Load a `cxr` checkpoint (safely, weights only) and rebuild its model for inference.

        precision 'auto': fp32 on a CPU (bf16 changes some labels: `cxr.runtime.scoring_precision`), bf16
        autocast on a GPU that has it.
        engine: 'torch' (default), 'onnxruntime', 'openvino', 'openvino-int8' or 'auto' (see
        `use_engine`; `batch_size` and `hint` are what the engine is tuned and measured for).
        lungs: the checkpoint's `data.lungs` unless given; auto: a lung-crop model given no lung region
        crops to the built-in segmenter's mask (`cxr.lungs.auto`).
        coverage: give every prediction its conformal set at this coverage (`set_coverage`).
        """
        tune_malloc()
        path = Path(path)
        ckpt = load_checkpoint(path)
        model = model_from_checkpoint(ckpt, source=path)
        pre = Preprocessing.from_dict(ckpt["preprocessing"])
        cfg = config_of(ckpt)
        sha = file_sha256(path)
        info = CheckpointInfo(
            path=str(path),
            sha256=sha,
            epoch=ckpt.get("epoch"),
            config=ckpt.get("config") or {},
            metrics=ckpt.get("metrics") or {},
            history=ckpt.get("history") or [],
            extra=ckpt.get("extra") or {},
        )
        name = f"{cfg.name}/{cfg.model.backbone}@{sha[:12]}"
        multilabel = is_multilabel(ckpt)
        predictor = cls(model, ckpt["classes"], pre, device=device, precision=precision, name=name, info=info,
                        temperature=temperature_of(ckpt, path), multilabel=multilabel,
                        thresholds=thresholds_of(ckpt) if multilabel else None)
        predictor.lung_crop = cfg.data.lung_crop_margin if cfg.data.lung_crop else None
        predictor.auto_lungs = AutoLungs() if (lungs or cfg.data.lungs) == AUTO else None
        predictor.set_coverage(coverage)
        log.info("loaded %s (%d %s, %s on %s)", name, len(predictor.classes), "findings" if multilabel else "classes",
                 predictor.precision, predictor.device)
        if predictor.synthetic:  # whoever loads it hears it: the CLI, the server, a notebook
            log.warning(synthetic_model_line(name))
        if engine != "torch":
            predictor.use_engine(engine, batch_size=batch_size, hint=hint)
        return predictor

    def use_engine(self, name: str, *, sample: torch.Tensor | None = None, batch_size: int = 32,
                   images: int | None = None, hint: str = "throughput") -> str:
        """Run the forward pass on engine `name` from now on; returns the engine's description.

        'auto' picks the fastest engine installed here (measured once per machine, `cxr.engine.select`;
        PyTorch for jobs under a few hundred `images`). Exports are checked against PyTorch on
        `sample` (normalised inputs: give a few of the images to be predicted), else on synthetic
        images. 'openvino-int8' needs the run's split.csv and images (`cxr.engine.int8`).
        """
        spec = EngineSpec(self.ood.engine_output(name), precision=self.precision, export_precision=engine_precision(self.requested_precision),
                          batch_size=batch_size, hint=hint, device=str(self.device), channels_last=False)
        if name == INT8_ENGINE:
            from cxr.engine.int8 import int8_engine_for_run

            if self.info.path is None:
                raise CxrError(f"engine {INT8_ENGINE!r} needs a checkpoint file (its run's images calibrate it)")
            if self.multilabel:
                raise CxrError(f"engine {INT8_ENGINE!r} is accepted by the validation macro-F1 of a single-label "
                               "model; this checkpoint is multi-label: use --engine openvino or onnxruntime")
            root = (self.info.config.get("data") or {}).get("root")
            chosen = int8_engine_for_run(self.model, spec, self.info.path, root, self._classes, self.preprocessing)
        else:
            if sample is None and name != "torch":
                sample = synthetic_inputs(self.preprocessing)
            chosen = select_engine(name, self.model, spec, sample=sample, images=images)
        self.engine = None if chosen.name == "torch" else chosen
        log.info("%s: inference on %s", self.name, chosen.describe())
        return chosen.describe()

    def set_coverage(self, coverage: float | None) -> None:
        """From now on every Prediction carries its prediction set at `coverage` (None: no sets), from the
        checkpoint's conformal calibration (`cxr.prediction_sets`); a CxrError when it has none."""
        self.sets = set_maker(self.info.extra, coverage, self.name, multilabel=self.multilabel)

    @property
    def multilabel(self) -> bool:
        """Whether the model scores findings (one sigmoid each) instead of one class (a softmax)."""
        return self.thresholds is not None

    @property
    def engine_name(self) -> str:
        """The engine the forward pass runs on ('torch' unless `use_engine` chose another)."""
        return "torch" if self.engine is None else self.engine.name

    @property
    def synthetic(self) -> bool:
        """Whether the checkpoint says its model was trained on synthetic images (no medical meaning)."""
        return synthetic_of({"extra": self.info.extra})

    @property
    def classes(self) -> list[str]:
        """Class names in the model's output order."""
        return list(self._classes)

    def class_index(self, name: str) -> int:
        """Position of class `name`; a CxrError lists the allowed names."""
        if name not in self._classes:
            raise CxrError(
                f"unknown class {name!r}; this model's classes: {', '.join(self._classes)}"
                f"{did_you_mean(name, self._classes)}"
            )
        return self._classes.index(name)

    # ----------------------------------------------------------------------------------- inputs

    def load(self, image: ImageInput, name: str | None = None) -> np.ndarray:
        """Any accepted input (path, encoded bytes, PIL image, array) as a uint8 grayscale (H, W) array."""
        if isinstance(image, str | Path):
            return read_image(image)
        if isinstance(image, bytes | bytearray | memoryview):
            return read_image_bytes(bytes(image), name or "<bytes>")
        if isinstance(image, np.ndarray):
            return as_gray_uint8(image)
        if isinstance(image, Image.Image):
            return pil_to_gray(image)
        raise CxrError(
            f"cannot predict on a {type(image).__name__}; give a file path, encoded image bytes, a PIL image "
            "or a uint8 array"
        )

    def preprocess(self, gray: np.ndarray, box: Region | None = None) -> torch.Tensor:
        """uint8 (H, W) -> normalised network input (C, S, S) following the checkpoint's record; a model
        trained on lung crops crops to `box` (lung boxes or a mask) first and refuses an image without one."""
        pre = self.preprocessing
        return to_input(resize_gray(self.lung_input(gray, box), pre.size, pre.interpolation), pre)

    def lung_input(self, gray: np.ndarray, box: Region | None = None) -> np.ndarray:
        """The image as the network sees it before resizing: cropped to `box` for a lung-crop model
        (given none, to its automatic lung mask with `auto_lungs`)."""
        if box is None and self.lung_crop is not None and self.auto_lungs is not None:
            box = self.auto_lungs.crop_region(gray)
        return crop_to_lungs(gray, self.lung_crop, box)

    # ------------------------------------------------------------------------------- inference

    def predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        batch_size: int = 32,
        tta: bool = False,
        progress: Callable[[int], Any] | None = None,
        box: Region | None = None,
        boxes: Sequence[Region | None] | None = None,
    ) -> Prediction | list[Prediction]:
        """Predict: one image gives its `Prediction`; a list gives one `Prediction` per image, in order.

        `images` is a list of file paths, encoded image bytes, PIL images (any mode; 16-bit is scaled)
        or uint8 arrays ((H, W) gray or (H, W, 3|4) colour), or a single one of those. An unreadable file raises
        `ImageReadError` naming it (the CLI catches it per file and goes on). `progress(n)` is
        called after each batch with the number of images it held. `box`: the lung region of every image
        (boxes in image pixels, (x0, y0, x1, y1) or a list of them, or a mask array); `boxes`: one region
        per image. A model trained on lung crops needs one for each image (others ignore them); with
        `auto_lungs` an image without one is cropped to its automatic lung mask.
        """
        if batch_size < 1:
            raise CxrError(f"batch_size must be >= 1, got {batch_size}")
        single = is_single(images)
        items = [images] if single else list(images)
        regions = per_image(box, boxes, len(items))
        results: list[Prediction] = []
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            given = regions[start : start + batch_size]
            if self.lung_crop is not None and self.auto_lungs is not None:  # files: cached automatic lungs
                given = self.auto_lungs.fill_regions(chunk, given)
            grays = [self.load(item) for item in chunk]
            batch = torch.stack([self.preprocess(gray, given[i]) for i, gray in enumerate(grays)])
            probs = self.predict_tensor(batch, tta=tta)
            results.extend(self.ood.judge([self.to_prediction(p, source_of(item)) for p, item in zip(probs, chunk, strict=True)],
                                          [self.ood.input_reasons(item, gray) for item, gray in zip(chunk, grays, strict=True)]))
            if progress is not None:
                progress(len(chunk))
        return results[0] if single else results

    @torch.no_grad()
    def predict_tensor(self, batch: torch.Tensor, tta: bool = False) -> np.ndarray:
        """Class probabilities (N, C) float64 for a batch of normalised inputs (N, 3, S, S); the
        out-of-distribution guard keeps the batch's pooled features (`self.ood.judge` reads them)."""
        self.ood.begin()
        if self.engine is None:
            batch = batch.to(self.device, non_blocking=True)
        if tta:
            probs = tta_probs(self._logits, batch, self.multilabel)
        else:
            probs = self.postprocess(self._logits(batch))
        return probs.cpu().numpy().astype(np.float64)

    def postprocess(self, logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities from logits (N, C), softmax (multi-label: a sigmoid per finding): the one
        place every engine's output passes."""
        return output_probs(logits, self.multilabel)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """Calibrated logits: the model's (on its engine) divided by the temperature."""
        if self.engine is not None:
            logits = self.ood.forward(self.model, x, self.engine) if self.engine.output == "features" else self.engine(x)
        else:
            with autocast(self.device, self.precision):
                logits = self.ood.forward(self.model, x) if self.ood.wants_features else self.model(x)
        return logits if self.temperature == 1.0 else logits.float() / self.temperature

    def to_prediction(self, probs: np.ndarray, source: str | None = None) -> Prediction:
        """A `Prediction` from one row of class (multi-label: finding) probabilities."""
        table = {c: float(p) for c, p in zip(self._classes, probs, strict=True)}
        if self.thresholds is None:
            return Prediction(label=self._classes[int(np.argmax(probs))], probabilities=table, source=source,
                              prediction_set=self.sets(probs) if self.sets is not None else None)
        present = tuple(c for c, p, t in zip(self._classes, probs, self.thresholds, strict=True) if p >= t)
        return Prediction(label=SEPARATOR.join(present) or NO_FINDING, probabilities=table, source=source,
                          findings=present)

