"""Training a lung model: pairs resized to the model's size, BCE + Dice loss, AdamW with one cycle.

Everything is held in memory at the model's input size (704 pairs at 128 px are 11 MB). Training
images are augmented on the fly, image and mask together: a random affine (rotation +-10 degrees,
scale 0.9-1.1, shift +-6%), then random contrast and gamma on the image, so the model sees other
hospitals' exposures. One thread count, one seed, no global seeding (a local generator).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from cxr.io import read_image
from cxr.lungs.model import LungModelSpec, TrainSettings, build_model, load_imagenet_encoder, normalise
from cxr.lungs.pairs import Pair
from cxr.lungs.segmenter import resize_gray
from cxr.progress import Progress

log = logging.getLogger(__name__)


def read_mask(path: str, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A mask file as booleans (> half its range), resized (nearest) to `shape` (H, W) when given."""
    from cxr.data.masks import binarise

    mask = read_image(path)
    if shape is not None and mask.shape != shape:
        mask = np.asarray(Image.fromarray(mask).resize((shape[1], shape[0]), Image.BILINEAR))
        return mask >= 128 if mask.max(initial=0) > 1 else mask > 0
    return binarise(mask)


def load_tensors(pairs: Sequence[Pair], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, S, S) uint8 and masks (N, 1, S, S) float 0/1 at the model's size."""
    images = np.stack([resize_gray(read_image(p.image), size) for p in pairs])
    masks = np.stack([read_mask(str(p.mask), (size, size)) for p in pairs])
    return torch.from_numpy(images)[:, None], torch.from_numpy(masks.astype(np.float32))[:, None]


def augment(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random affine of images (normalised) and masks together, then contrast and gamma of the images."""
    n = x.shape[0]
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(10)
    scale = 0.9 + 0.2 * torch.rand(n, generator=gen)
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * 0.06
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    y = F.grid_sample(y, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    unit = ((x + 1) / 2).clamp(0, 1)
    gamma = torch.exp((torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * 0.4)
    contrast = 0.75 + 0.5 * torch.rand(n, 1, 1, 1, generator=gen)
    unit = ((unit ** gamma - 0.5) * contrast + 0.5).clamp(0, 1)
    return unit * 2 - 1, (y > 0.5).float()


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy plus soft Dice loss (per image, averaged)."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum((1, 2, 3))
    soft_dice = (2 * inter + 1) / (prob.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1)
    return bce + (1 - soft_dice).mean()


def fit(pairs: Sequence[Pair], spec: LungModelSpec, settings: TrainSettings,
        on_epoch: Callable[[int, float], None] | None = None,
        init: nn.Module | None = None) -> tuple[nn.Module, list[dict[str, float]]]:
    """A model of `spec` trained on `pairs` (from `init`'s weights when given: fine-tuning); returns
    it (eval mode) and one history row per epoch."""
    gen = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)  # the initialisation of the decoder (smp draws from the global RNG)
    model = build_model(spec)
    if init is not None:
        model.load_state_dict(init.state_dict())
    elif settings.pretrained:
        load_imagenet_encoder(model, spec)
    model = model.to(memory_format=torch.channels_last)  # 1.3-1.5x faster depthwise convolutions on CPUs
    images, masks = load_tensors(pairs, spec.size)
    steps_per_epoch = max(1, math.ceil(len(pairs) / settings.batch_size))
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.lr, total_steps=settings.epochs * steps_per_epoch,
                                                pct_start=0.15)
    history = []
    with Progress(settings.epochs * len(pairs), "lungs: training", unit="img") as bar:
        for epoch in range(1, settings.epochs + 1):
            model.train()
            start, total, seen = time.perf_counter(), 0.0, 0
            order = torch.randperm(len(pairs), generator=gen)
            for i in range(0, len(pairs), settings.batch_size):
                idx = order[i:i + settings.batch_size]
                if len(idx) < 2 and len(pairs) > 1:  # BatchNorm needs two samples
                    continue
                x, y = normalise(images[idx]), masks[idx]
                if settings.augment:
                    x, y = augment(x, y, gen)
                loss = loss_fn(model(x.contiguous(memory_format=torch.channels_last)), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step() if sched.last_epoch + 1 < sched.total_steps else None
                total += float(loss.detach()) * len(idx)
                seen += len(idx)
                bar.update(len(idx))
                bar.postfix(epoch=epoch, loss=f"{total / max(seen, 1):.4f}")
            row = {"epoch": epoch, "loss": total / max(seen, 1), "seconds": time.perf_counter() - start}
            history.append(row)
            log.info("lungs: epoch %d/%d loss %.4f (%.0f s)", epoch, settings.epochs, row["loss"], row["seconds"])
            if on_epoch is not None:
                on_epoch(epoch, row["loss"])
    return model.to(memory_format=torch.contiguous_format).eval(), history
