"""SplitDataset and make_loader: shapes, labels, per-(seed, epoch, index) determinism, seeded shuffling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import SequentialSampler, TensorDataset

from cxr.config import AugmentConfig
from cxr.data.dataset import SKIPPED, SplitDataset, drop_skipped, make_loader
from cxr.errors import CxrError
from cxr.rundir import SplitRow
from cxr.transforms import Preprocessing, SeedAugment, resize_gray, to_input

CLASSES = ["a", "b", "c"]
SIZE = 32


@pytest.fixture
def rows(tmp_path: Path) -> list[SplitRow]:
    """Twelve 48x40 grayscale PNGs (a bright square at a different place in each), four per class."""
    out = []
    for i in range(12):
        label = CLASSES[i % 3]
        img = np.full((48, 40), 30, dtype=np.uint8)
        img[4 + 2 * i : 14 + 2 * i, 5:20] = 220
        (tmp_path / label).mkdir(exist_ok=True)
        Image.fromarray(img).save(tmp_path / label / f"{i}.png")
        out.append(SplitRow(path=f"{label}/{i}.png", label=label, split="train", group=str(i)))
    return out


def _dataset(root: Path, rows: list[SplitRow], seed: int = 0, augment: bool = True) -> SplitDataset:
    aug = SeedAugment(AugmentConfig()) if augment else None
    return SplitDataset(root, rows, CLASSES, Preprocessing("imagenet", size=SIZE), aug, seed=seed)


def test_item_is_a_normalised_tensor_and_the_class_index(tmp_path: Path, rows: list[SplitRow]) -> None:
    ds = _dataset(tmp_path, rows)
    x, y = ds[4]
    assert x.shape == (3, SIZE, SIZE) and x.dtype == torch.float32
    assert y == CLASSES.index(rows[4].label) == 1
    assert len(ds) == 12
    assert ds.labels.tolist() == [i % 3 for i in range(12)]


def test_without_augmentation_it_is_resize_then_normalise(tmp_path: Path, rows: list[SplitRow]) -> None:
    ds = _dataset(tmp_path, rows, augment=False)
    expected = np.asarray(Image.open(tmp_path / rows[2].path))
    torch.testing.assert_close(ds[2][0], to_input(resize_gray(expected, SIZE), ds.pre))


def test_augmentation_is_fixed_by_seed_epoch_and_index(tmp_path: Path, rows: list[SplitRow]) -> None:
    first, again, other_seed = _dataset(tmp_path, rows), _dataset(tmp_path, rows), _dataset(tmp_path, rows, seed=1)
    torch.testing.assert_close(first[3][0], again[3][0])
    torch.testing.assert_close(first[3][0], first[3][0])  # reading twice does not advance any state
    assert not torch.equal(first[3][0], other_seed[3][0])
    epoch0 = first[3][0]
    first.set_epoch(1)
    assert first.epoch == 1
    assert not torch.equal(first[3][0], epoch0)
    first.set_epoch(0)
    torch.testing.assert_close(first[3][0], epoch0)


def test_augment_draw_is_the_documented_generator(tmp_path: Path, rows: list[SplitRow]) -> None:
    ds = _dataset(tmp_path, rows, seed=5)
    ds.set_epoch(2)
    img = resize_gray(np.asarray(Image.open(tmp_path / rows[7].path)), SIZE)
    expected = ds.augment(img, np.random.default_rng([5, 2, 7]))
    torch.testing.assert_close(ds[7][0], to_input(expected, ds.pre))


def test_unknown_label_and_negative_seed_are_user_errors(tmp_path: Path, rows: list[SplitRow]) -> None:
    with pytest.raises(CxrError, match="'zzz'"):
        SplitDataset(tmp_path, [*rows, SplitRow("a/0.png", "zzz", "train", "x")], CLASSES, Preprocessing())
    with pytest.raises(CxrError, match="-1"):
        SplitDataset(tmp_path, rows, CLASSES, Preprocessing(), seed=-1)


def test_unreadable_image_names_the_file(tmp_path: Path, rows: list[SplitRow]) -> None:
    (tmp_path / rows[0].path).write_bytes(b"not a png")
    strict = SplitDataset(tmp_path, rows, CLASSES, Preprocessing(size=SIZE), skip_unreadable=False)
    with pytest.raises(CxrError, match="0.png"):
        strict[0]


def test_unreadable_images_are_skipped_in_loader_workers_and_named(tmp_path: Path, rows: list[SplitRow]) -> None:
    (tmp_path / rows[0].path).write_bytes(b"not a png")
    dataset = _dataset(tmp_path, rows)
    x, y = dataset[0]
    assert y == SKIPPED and x.shape == (3, SIZE, SIZE)
    loader = make_loader(dataset, batch_size=4, shuffle=False, num_workers=2, seed=0)
    labels = [y for _, batch in loader for y in drop_skipped(torch.zeros(len(batch), 1), batch)[1].tolist()]
    assert len(labels) == len(rows) - 1  # the worker's flag reached the main process
    assert [(row.path, "not a recognised" in reason) for row, reason in dataset.unreadable()] == [(rows[0].path, True)]
    assert dataset.readable_rows() == rows[1:]


def _order(loader) -> list[int]:
    return [int(v) for _, y in loader for v in y]


def test_shuffling_is_reproducible_from_the_seed(tmp_path: Path, rows: list[SplitRow]) -> None:
    ds = _dataset(tmp_path, rows, augment=False)
    batches = [next(iter(make_loader(ds, 12, True, 0, seed=s)))[0] for s in (3, 3, 4)]
    torch.testing.assert_close(batches[0], batches[1])
    assert not torch.equal(batches[0], batches[2])
    loader = make_loader(ds, 4, True, 0, seed=3)
    epoch0 = _order(loader)
    assert sorted(epoch0) == sorted(ds.labels.tolist())
    assert _order(loader) == epoch0  # the order belongs to the epoch, not to the pass
    ds.set_epoch(1)
    epoch1 = _order(loader)
    assert epoch1 != epoch0
    assert _order(make_loader(ds, 4, True, 0, seed=3)) == epoch1  # a resumed run sees the same order


def test_datasets_without_epochs_reshuffle_every_pass() -> None:
    ds = TensorDataset(torch.arange(20))
    loader = make_loader(ds, 20, True, 0, seed=0)
    first, second = next(iter(loader))[0], next(iter(loader))[0]
    assert sorted(first.tolist()) == list(range(20))
    assert not torch.equal(first, second)
    torch.testing.assert_close(next(iter(make_loader(ds, 20, True, 0, seed=0)))[0], first)
    loader.sampler.set_epoch(5)
    fixed = next(iter(loader))[0]
    torch.testing.assert_close(next(iter(loader))[0], fixed)  # an explicit epoch pins the order


def test_unshuffled_loader_keeps_row_order_and_drop_last(tmp_path: Path, rows: list[SplitRow]) -> None:
    ds = _dataset(tmp_path, rows, augment=False)
    assert _order(make_loader(ds, 5, False, 0, seed=0)) == ds.labels.tolist()
    assert len(make_loader(ds, 5, False, 0, seed=0, drop_last=True)) == 2
    assert _order(make_loader(ds, 5, False, 0, seed=0, sampler=SequentialSampler(ds))) == ds.labels.tolist()


def test_sampler_and_shuffle_together_are_refused(tmp_path: Path, rows: list[SplitRow]) -> None:
    ds = _dataset(tmp_path, rows, augment=False)
    with pytest.raises(CxrError, match="sampler"):
        make_loader(ds, 4, True, 0, seed=0, sampler=SequentialSampler(ds))


def test_workers_give_the_same_batches_and_see_set_epoch(tmp_path: Path, rows: list[SplitRow]) -> None:
    """Persistent workers must pick up set_epoch (the epoch lives in shared memory)."""
    ds = _dataset(tmp_path, rows)
    loader = make_loader(ds, 4, True, 2, seed=9)
    assert loader.persistent_workers
    worker_epochs = []
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        worker_epochs.append(torch.cat([x for x, _ in loader]))
    reference = _dataset(tmp_path, rows)
    main_loader = make_loader(reference, 4, True, 0, seed=9)
    for epoch in (0, 1):
        reference.set_epoch(epoch)
        torch.testing.assert_close(torch.cat([x for x, _ in main_loader]), worker_epochs[epoch])
    assert not torch.equal(worker_epochs[0], worker_epochs[1])
