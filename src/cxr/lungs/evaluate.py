"""Scoring a lung model on image/mask pairs: masks predicted at the reference's size, scores, QC.

The predicted probability map is resized to the reference mask's size (a mask may be smaller than
its image, as Kaggle's v4 masks are), thresholded at 0.5 and compared with the reference: Dice, IoU
and HD95 per image (`cxr.lungs.scores`), their means with bootstrap intervals, and the share of
held-out X-rays the QC flags `suspect` (they are all real X-rays: each flag is a false alarm).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cxr.io import read_image
from cxr.lungs.pairs import Pair
from cxr.lungs.qc import THRESHOLD, LungQC, lung_qc
from cxr.lungs.scores import per_image, summarise
from cxr.lungs.segmenter import LungSegmenter, resize_prob
from cxr.lungs.train import read_mask
from cxr.progress import Progress

Shown = tuple[np.ndarray, np.ndarray, np.ndarray, str]  # image, predicted mask, reference mask, title


@dataclass
class Evaluation:
    """Scores of one model on pairs (per image and summarised)."""

    pairs: list[Pair]
    values: dict[str, np.ndarray]  # dice, iou, hd95 per pair
    qc: list[LungQC]  # the QC of each predicted mask
    summary: dict[str, Any] = field(default_factory=dict)  # n, then per score mean/median/ci; suspect share

    def rows(self) -> list[dict[str, Any]]:
        """One row per pair for per_image.csv."""
        return [{"image": str(p.image), "mask": str(p.mask), **{k: float(v[i]) for k, v in self.values.items()},
                 **{f"qc_{k}": val for k, val in q.to_dict().items()}}
                for i, (p, q) in enumerate(zip(self.pairs, self.qc, strict=True))]


def predict_pairs(segmenter: LungSegmenter, pairs: Sequence[Pair], progress: bool = True
                  ) -> tuple[list[np.ndarray], list[np.ndarray], list[LungQC], list[np.ndarray]]:
    """(predicted masks at the references' sizes, references, QC, images) of `pairs`."""
    preds, refs, qcs, images = [], [], [], []
    step = segmenter.batch_size
    with Progress(len(pairs), "lungs: evaluating", unit="img", enabled=progress) as bar:
        for start in range(0, len(pairs), step):
            chunk = pairs[start:start + step]
            batch = [read_image(p.image) for p in chunk]
            probs = segmenter.probabilities(batch)
            for pair, image, prob in zip(chunk, batch, probs, strict=True):
                ref = read_mask(str(pair.mask))
                preds.append(resize_prob(prob, ref.shape) >= THRESHOLD)
                refs.append(ref)
                qcs.append(lung_qc(prob))
                images.append(image)
            bar.update(len(chunk))
    return preds, refs, qcs, images


def evaluate(segmenter: LungSegmenter, pairs: Sequence[Pair], *, n_boot: int = 1000, progress: bool = True,
             keep_images: int = 0) -> tuple[Evaluation, list[Shown]]:
    """Scores of `segmenter` on `pairs`, and up to `keep_images` (image, prediction, reference, title)
    for the overlay grid (the worst by Dice first half, then the rest in order)."""
    preds, refs, qcs, images = predict_pairs(segmenter, pairs, progress)
    values = per_image(preds, refs)
    summary = summarise(values, n_boot=n_boot)
    suspect = sum(not q.ok for q in qcs)
    summary["suspect"] = {"n": suspect, "share": suspect / max(len(qcs), 1)}
    evaluation = Evaluation(list(pairs), values, qcs, summary)
    order = np.argsort(values["dice"], kind="stable")
    worst = list(order[: keep_images // 2])
    rest = [i for i in range(len(pairs)) if i not in set(worst)][: keep_images - len(worst)]
    shown = [(images[i], preds[i], refs[i], f"{pairs[i].name[:18]} Dice {values['dice'][i]:.3f}") for i in worst + rest]
    return evaluation, shown
