"""A torch Dataset over the rows of one split, and a reproducible DataLoader.

Each item is read with `cxr.io.read_image`, optionally cropped to its lung region or with the lungs
(or all else) blanked (`cxr.data.masks.RegionOptions`), resized to the preprocessing size, augmented
(training only) and normalised; `with_mask` also yields the lung mask, resized with the image. The augmentation generator of item `i` in epoch `e` is
`np.random.default_rng([seed, e, i])`, so a run gives the same images whatever the number of
workers. The epoch lives in shared memory, so `set_epoch` also reaches persistent worker processes,
and it also selects the shuffle order of `make_loader` (`EpochShuffle`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cxr.data.masks import RegionOptions, RegionProblem, apply_region, load_region, scale_mask
from cxr.data.multilabel import targets
from cxr.errors import CxrError, ImageReadError
from cxr.io import read_image
from cxr.runtime import resolve_workers
from cxr.transforms import Preprocessing, SeedAugment, resize_gray, to_input

if TYPE_CHECKING:
    from cxr.rundir import SplitRow  # any row with `.path` (relative to root) and `.label` works

log = logging.getLogger(__name__)


SKIPPED = -1  # the label of an item whose file could not be read (the loops drop such items)


class SplitDataset(Dataset):
    """Images of one split as `(tensor (3, S, S) float32, class index)` pairs.

    `rows` need `.path` (relative to `root`, or absolute) and `.label`; the class index is the label's
    position in `classes`. `augment=None` (validation, test) only resizes and normalises.

    A file that cannot be read (changed since the split, or never audited) does not stop the loader:
    with `skip_unreadable` its item is a zero image labelled `SKIPPED`, which the training and
    evaluation loops drop, and `unreadable()` names it afterwards (the flags live in shared memory, so
    worker processes report to the main one). Without it the `ImageReadError` propagates.
    """

    def __init__(
        self,
        root: str | Path,
        rows: Sequence[SplitRow],
        classes: Sequence[str],
        pre: Preprocessing,
        augment: SeedAugment | None = None,
        seed: int = 0,
        skip_unreadable: bool = True,
        multilabel: bool = False,
        *,
        regions: RegionOptions | None = None,
        with_mask: bool = False,
    ) -> None:
        if int(seed) < 0:
            raise CxrError(f"the data seed must be >= 0, got {seed}")
        if with_mask and augment is not None:
            raise CxrError("SplitDataset: with_mask yields the mask of the unaugmented image; give augment=None")
        self.regions = regions if regions is not None and regions.needs_region else None
        self.with_mask = with_mask
        self.root = Path(root)
        self.rows = list(rows)
        self.classes = list(classes)
        self.pre = pre
        self.augment = augment
        self.seed = int(seed)
        self.multilabel = multilabel
        self._labels = label_targets(self.rows, self.classes, multilabel)
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self.skip_unreadable = skip_unreadable
        self._bad = torch.zeros(len(self.rows), dtype=torch.uint8).share_memory_()

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def labels(self) -> np.ndarray:
        """Class index (multi-label: target vector, NaN = unlabelled) of every row, in row order."""
        return self._labels.copy()

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of `epoch` (visible to running worker processes too)."""
        self._epoch.fill_(int(epoch))

    def image(self, index: int) -> np.ndarray:
        """The resized uint8 (S, S) image of row `index`, before augmentation."""
        return self.pixels(index)[0]

    def pixels(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The resized uint8 (S, S) image of row `index` and, when masks are used, its boolean lung mask
        (S, S) (None for a row without a region). With `regions` a row without a region is a RegionProblem."""
        row = self.rows[index]
        img = read_image(self.root / row.path)
        mask = None
        if self.regions is not None or self.with_mask:
            mask = load_region(self.root, getattr(row, "mask", None), img.shape)
            if self.regions is not None:
                if mask is None:
                    raise RegionProblem(row.path, "no lung mask or box, which the lung crop or occlusion needs")
                img, mask = apply_region(img, mask, self.regions)
        size = self.pre.size
        return resize_gray(img, size, self.pre.interpolation), scale_mask(mask, (size, size)) if mask is not None else None

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        size = self.pre.size
        try:
            img, mask = self.pixels(index)
        except ImageReadError as exc:
            if not self.skip_unreadable:
                raise
            if not self._bad[index]:
                log.warning("skipped %s", exc)
            self._bad[index] = 1
            blank = torch.zeros(self.pre.channels, size, size), self._skipped_target()
            return (*blank, torch.zeros(size, size)) if self.with_mask else blank
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            img = self.augment(img, rng)
        item = to_input(img, self.pre), self._target(index)
        if not self.with_mask:
            return item
        lungs = torch.from_numpy(mask.astype(np.float32)) if mask is not None else torch.zeros(size, size)
        return (*item, lungs)

    def _target(self, index: int) -> int | torch.Tensor:
        if self.multilabel:
            return torch.from_numpy(self._labels[index].copy())
        return int(self._labels[index])

    def _skipped_target(self) -> int | torch.Tensor:
        return torch.full((len(self.classes),), float("nan")) if self.multilabel else SKIPPED


    def unreadable(self) -> list[tuple[SplitRow, str]]:
        """The rows skipped so far because their file could not be read, with the reason."""
        out = []
        for index in torch.nonzero(self._bad).flatten().tolist():
            try:
                self.pixels(index)
                reason = "could not be read during the pass"
            except ImageReadError as exc:
                reason = exc.reason
            out.append((self.rows[index], reason))
        return out

    def readable_rows(self) -> list[SplitRow]:
        """The rows that were not skipped, in order (they pair with a pass's predictions)."""
        bad = self._bad.tolist()
        return [row for row, flag in zip(self.rows, bad, strict=True) if not flag]


def is_skipped(target: int | torch.Tensor) -> bool:
    """True for the target of an item whose file could not be read (`SKIPPED`, multi-label: all NaN)."""
    if isinstance(target, torch.Tensor) and target.dim() == 1:
        return bool(torch.isnan(target).all())
    return int(target) == SKIPPED


def drop_skipped(x: Any, y: torch.Tensor) -> tuple[Any, torch.Tensor]:
    """A batch (a tensor or a dict of tensors) without its `SKIPPED` items (multi-label: all-NaN targets),
    checked on the CPU before the batch moves to a device."""
    keep = ~torch.isnan(y).all(dim=1) if y.dim() == 2 else y != SKIPPED
    if bool(keep.all()):
        return x, y
    if isinstance(x, dict):
        return {key: value[keep] for key, value in x.items()}, y[keep]
    return x[keep], y[keep]


def label_targets(rows: Sequence[SplitRow], classes: Sequence[str], multilabel: bool = False) -> np.ndarray:
    """The training targets of rows: class indices (N,) int64, or for multi-label (N, C) float32 with
    NaN where a finding is unlabelled (`cxr.data.multilabel`)."""
    if multilabel:
        y, labelled = targets([row.label for row in rows], classes)
        return np.where(labelled, y, np.nan).astype(np.float32)
    return _label_indices(rows, classes)


def _label_indices(rows: Sequence[SplitRow], classes: Sequence[str]) -> np.ndarray:
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted({row.label for row in rows} - index.keys())
    if unknown:
        raise CxrError(f"labels {unknown} are not among the classes {list(classes)}")
    return np.array([index[row.label] for row in rows], dtype=np.int64)


class EpochShuffle(Sampler[int]):
    """A permutation of the dataset drawn from `np.random.default_rng([seed, epoch])`.

    The epoch is the one given to `set_epoch`, else the dataset's `epoch` (so `SplitDataset.set_epoch`
    selects both the order and the augmentation), else the number of earlier passes. An epoch's order
    does not depend on the worker count or on earlier epochs, and a resumed run sees the same order.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = int(seed)
        self._epoch: int | None = None
        self._passes = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self._epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        epoch = self._epoch if self._epoch is not None else getattr(self.dataset, "epoch", self._passes)
        self._passes += 1
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))
        return iter(order.tolist())


def _worker_init(_worker_id: int) -> None:
    """Workers decode and augment single images: one torch thread each avoids oversubscription."""
    torch.set_num_threads(1)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    seed: int,
    drop_last: bool = False,
    sampler: Sampler | None = None,
) -> DataLoader:
    """A DataLoader whose order is a pure function of (`seed`, epoch); see `EpochShuffle`.

    Workers (`num_workers`, -1 = one per core) stay alive between epochs; memory is pinned when CUDA
    is available. Pass either `shuffle=True` or a `sampler`, not both. The loader's own generator
    (worker base seeds) is seeded too, so nothing depends on torch's global RNG.
    """
    if sampler is not None and shuffle:
        raise CxrError("make_loader: give either shuffle=True or a sampler, not both")
    if shuffle:
        sampler = EpochShuffle(dataset, seed)
    workers = resolve_workers(num_workers)
    generator = torch.Generator().manual_seed(int(seed))
    log.debug("DataLoader: batch %d, %d workers, shuffle=%s", batch_size, workers, shuffle)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        generator=generator,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        worker_init_fn=_worker_init if workers > 0 else None,
    )
