"""The frozen-backbone feature cache: keys, hits, invalidation, batches, view schedule, numerics, training."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr.config import ModelConfig, RunConfig
from cxr.data.dataset import SplitDataset
from cxr.data.synthetic import CLASSES, generate_dataset
from cxr.errors import CxrError
from cxr.models.build import Classifier, apply_freeze, build_model
from cxr.models.head import Head
from cxr.rundir import SplitRow
from cxr.runtime import Compute
from cxr.training import extract
from cxr.training.extract import compare_precision
from cxr.training.features import CachedFeatureDataset, feature_loaders, view_schedule
from cxr.training.state import Checkpointer
from cxr.transforms import Preprocessing, SeedAugment

SIZE = 64
CPU = torch.device("cpu")
SPLIT_OF_INDEX = ("train", "train", "val", "test")  # per class: 2 train, 1 val, 1 test -> 8/4/4 images


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("data"), n_per_class=len(SPLIT_OF_INDEX), size=SIZE, seed=0)


@pytest.fixture()
def root(data_root: Path, tmp_path: Path) -> Path:
    """A private copy, so a test may change a file's bytes."""
    copy = tmp_path / "data"
    for src in data_root.rglob("*.png"):
        dst = copy / src.relative_to(data_root)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())
    return copy


@pytest.fixture()
def rows(root: Path) -> list[SplitRow]:
    out = []
    for name in CLASSES:
        for i, path in enumerate(sorted((root / name).glob("*.png"))):
            out.append(SplitRow(f"{name}/{path.name}", name, SPLIT_OF_INDEX[i], path.stem))
    return out


def make_cfg(views: int = 2, seed: int = 123) -> RunConfig:
    """Settings of the tests; the model section names Lite0 (the tiny model ignores it, it only keys the cache)."""
    cfg = RunConfig()
    cfg.data.image_size = SIZE
    cfg.data.num_workers = 0
    cfg.model = ModelConfig(backbone="efficientnet_lite0", weights="random", head=(16,))
    cfg.train.batch_size = 4
    cfg.train.feature_views = views
    cfg.train.seed = seed
    return cfg


class TinyBackbone(torch.nn.Module):
    """A two-conv stand-in with the backbone contract (forward_features, num_features, stages): fast tests."""

    num_features = 24

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.conv2 = torch.nn.Conv2d(8, self.num_features, 3, stride=2, padding=1)
        self.stages = [self.conv1, self.conv2]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(torch.relu(self.conv1(x))))


@pytest.fixture()
def model() -> Classifier:
    torch.manual_seed(0)
    backbone = TinyBackbone()
    net = Classifier(backbone, Head(backbone.num_features, (16,), len(CLASSES)), Preprocessing("imagenet", SIZE))
    return apply_freeze(net, "base").eval()


@pytest.fixture()
def lite0() -> Classifier:
    """The real EfficientNet-Lite0 architecture, random weights, at 64x64."""
    torch.manual_seed(0)
    net = build_model(make_cfg().model, num_classes=len(CLASSES), load_weights=False)
    net.preprocessing = Preprocessing(net.preprocessing.mode, size=SIZE)
    with torch.no_grad():  # random Lite0 features are ~1e-8; scale the last BatchNorm to trained-like 0..6
        net.backbone.bn2.weight.fill_(1e8)
    return net.eval()


class ForwardCounter:
    """Counts images through `model.forward_features` (what extraction costs)."""

    def __init__(self, model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
        self.images = 0
        original = model.forward_features

        def counted(x: torch.Tensor) -> torch.Tensor:
            self.images += x.shape[0]
            return original(x)

        monkeypatch.setattr(model, "forward_features", counted)


def loaders(model, root, rows, cfg, cache):
    return feature_loaders(model, root, rows, list(CLASSES), cfg, cache, CPU, "fp32")


def entries(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir() if p.is_dir())


def test_first_call_extracts_second_call_hits(model, root, rows, tmp_path, monkeypatch, caplog):
    counter = ForwardCounter(model, monkeypatch)
    cache = tmp_path / "cache"
    cfg = make_cfg(views=2)
    first = loaders(model, root, rows, cfg, cache)
    assert counter.images == 8 * 2 + 4 + 4  # K views of train, one clean view of val and test
    assert len(entries(cache)) == 1
    assert not [p for p in cache.iterdir() if p.name.startswith(".tmp")]  # published atomically

    caplog.set_level(logging.INFO, logger="cxr.training.features")
    second = loaders(model, root, rows, cfg, cache)
    assert counter.images == 8 * 2 + 4 + 4  # nothing recomputed
    assert "feature cache hit" in caplog.text
    assert "feature cache: 2 views, 16 images" in caplog.text
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(first[split].dataset.features, second[split].dataset.features)


def test_batches_shapes_and_dtypes(model, root, rows, tmp_path):
    out = loaders(model, root, rows, make_cfg(views=3), tmp_path / "cache")
    channels = TinyBackbone.num_features
    for split, n in (("train", 8), ("val", 4), ("test", 4)):
        ds = out[split].dataset
        assert len(ds) == n
        assert ds.num_views == (3 if split == "train" else 1)
        assert ds.features.dtype == np.float16
        x, y = next(iter(out[split]))
        assert x.dtype == torch.float32 and x.shape == (4, channels, 1, 1)
        assert y.dtype == torch.int64
        assert model.head(x).shape == (4, len(CLASSES))
    manifest = json.loads((entries(tmp_path / "cache")[0] / "manifest.json").read_text())
    assert manifest["splits"]["train"] == {"images": 8, "views": 3, "channels": channels}


@pytest.mark.slow
def test_cached_features_match_the_direct_path(lite0, root, rows, tmp_path):
    """val/test hold the clean images' pooled features; train view v is the direct path's epoch v."""
    model = lite0
    cfg = make_cfg(views=2)
    out = loaders(model, root, rows, cfg, tmp_path / "cache")
    val_rows = [r for r in rows if r.split == "val"]
    train_rows = [r for r in rows if r.split == "train"]
    with torch.inference_mode():
        clean = SplitDataset(root, val_rows, list(CLASSES), model.preprocessing, None, cfg.train.seed)
        x = torch.stack([clean[i][0] for i in range(len(clean))])
        want = model.forward_features(x).mean((2, 3)).numpy()
        np.testing.assert_allclose(out["val"].dataset.features[0], want, rtol=2e-3, atol=2e-3)
        aug = SplitDataset(root, train_rows, list(CLASSES), model.preprocessing, SeedAugment(cfg.augment), cfg.train.seed)
        aug.set_epoch(1)
        x = torch.stack([aug[i][0] for i in range(len(aug))])
        want = model.forward_features(x).mean((2, 3)).numpy()
    np.testing.assert_allclose(out["train"].dataset.features[1], want, rtol=2e-3, atol=2e-3)
    assert not np.allclose(out["train"].dataset.features[0], out["train"].dataset.features[1])


def test_file_bytes_views_seed_and_weights_invalidate(model, root, rows, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    base = make_cfg(views=1)
    loaders(model, root, rows, base, cache)
    counter = ForwardCounter(model, monkeypatch)

    loaders(model, root, rows, make_cfg(views=2), cache)  # K changed
    assert counter.images == 8 * 2 + 8 and len(entries(cache)) == 2
    loaders(model, root, rows, make_cfg(views=1, seed=7), cache)  # seed changed
    assert len(entries(cache)) == 3

    target = root / rows[0].path  # one file's bytes change (re-encoded with other PNG settings)
    from PIL import Image

    Image.open(target).save(target, compress_level=9, optimize=True)
    loaders(model, root, rows, base, cache)
    assert len(entries(cache)) == 4

    with torch.no_grad():  # a different backbone state (e.g. other weights)
        model.backbone.conv1.bias.add_(1.0)
    loaders(model, root, rows, base, cache)
    assert len(entries(cache)) == 5

    aug_cfg = make_cfg(views=1)  # a changed augmentation setting
    aug_cfg.augment = dataclasses.replace(aug_cfg.augment, rotation=10.0)
    before = counter.images
    loaders(model, root, rows, aug_cfg, cache)
    assert len(entries(cache)) == 6 and counter.images > before


def test_row_order_is_part_of_the_key(model, root, rows, tmp_path):
    """Batches follow the rows' order (the pipeline pairs test predictions with its rows by position)."""
    cache = tmp_path / "cache"
    first = loaders(model, root, rows, make_cfg(), cache)
    second = loaders(model, root, rows[::-1], make_cfg(), cache)
    assert len(entries(cache)) == 2
    np.testing.assert_array_equal(first["test"].dataset.features[0], second["test"].dataset.features[0][::-1])
    assert list(second["test"].dataset.labels) == list(first["test"].dataset.labels[::-1])


def test_head_changes_do_not_invalidate(model, root, rows, tmp_path, monkeypatch):
    """The head is not part of the key: training it must not throw the cache away."""
    cache = tmp_path / "cache"
    loaders(model, root, rows, make_cfg(), cache)
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(0.5)
    counter = ForwardCounter(model, monkeypatch)
    loaders(model, root, rows, make_cfg(), cache)
    assert counter.images == 0 and len(entries(cache)) == 1


def test_corrupt_entry_is_rebuilt(model, root, rows, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    loaders(model, root, rows, make_cfg(), cache)
    (entries(cache)[0] / "manifest.json").write_text("{ truncated")
    counter = ForwardCounter(model, monkeypatch)
    out = loaders(model, root, rows, make_cfg(), cache)
    assert counter.images == 8 * 2 + 8
    assert len(out["train"].dataset) == 8


def test_view_schedule_is_deterministic_and_covers_every_view():
    k, n = 4, 50
    assert np.array_equal(view_schedule(1, 5, k, n), view_schedule(1, 5, k, n))
    assert not np.array_equal(view_schedule(1, 5, k, n), view_schedule(2, 5, k, n))
    block = np.stack([view_schedule(1, e, k, n) for e in range(k, 2 * k)])  # one round of K epochs
    assert (np.sort(block, axis=0) == np.arange(k)[:, None]).all()  # each image uses each view once
    assert len({tuple(block[:, i]) for i in range(n)}) > 1  # and the order differs between images
    assert not (view_schedule(1, 0, 1, n) != 0).any()  # K = 1: one fixed view


def test_set_epoch_changes_views_deterministically():
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((3, 20, 5)).astype(np.float16)
    labels = np.arange(20) % 4
    a, b = CachedFeatureDataset(feats, labels, seed=9), CachedFeatureDataset(feats, labels, seed=9)
    a.set_epoch(4)
    b.set_epoch(4)
    assert all(torch.equal(a[i][0], b[i][0]) for i in range(20))
    before = [a[i][0].clone() for i in range(20)]
    a.set_epoch(5)
    assert any(not torch.equal(before[i], a[i][0]) for i in range(20))
    x, y = a[3]
    assert x.shape == (5, 1, 1) and y == 3
    np.testing.assert_array_equal(x.view(-1).numpy(), feats[a.views[3], 3].astype(np.float32))


def test_views_below_one_are_refused(model, root, rows, tmp_path):
    with pytest.raises(CxrError, match="feature_views"):
        loaders(model, root, rows, make_cfg(views=0), tmp_path / "cache")


def test_augmentation_off_stores_one_view(model, root, rows, tmp_path):
    cfg = make_cfg(views=4)
    cfg.augment.enabled = False
    out = loaders(model, root, rows, cfg, tmp_path / "cache")
    assert out["train"].dataset.num_views == 1


def test_float16_check_catches_overflow_and_underflow():
    trained_like = np.random.default_rng(0).gamma(1.0, 1.0, (4, 16)).astype(np.float32)
    assert extract.fits_float16(trained_like)
    assert not extract.fits_float16(trained_like * 1e5)  # beyond float16's maximum
    assert not extract.fits_float16(trained_like * 1e-8)  # flushed to zero


def test_features_float16_cannot_hold_are_stored_as_float32(model, root, rows, tmp_path):
    with torch.no_grad():  # features of order 1e-9, as some random-init backbones give: float16 flushes them
        model.backbone.conv2.weight.mul_(1e-9)
        model.backbone.conv2.bias.mul_(1e-9)
    out = loaders(model, root, rows, make_cfg(views=1), tmp_path / "cache")
    feats = out["val"].dataset.features
    assert feats.dtype == np.float32 and np.abs(feats).max() > 0


def test_bf16_numerics_report(model):
    """Real-model figures come from bench/seed_recipe.py --numerics; here the report's shape and sense."""
    x = torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    report = compare_precision(model, x, "bf16")
    assert report["images"] == 4
    assert 0.99 < report["cosine_mean"] <= 1.0 + 1e-6
    assert report["cosine_min"] <= report["cosine_mean"]
    assert 0.0 < report["max_rel_error"] < 0.1  # bf16 really ran, and stayed close
    assert report["prediction_agreement"] in {0.0, 0.25, 0.5, 0.75, 1.0}
    same = compare_precision(model, x, "fp32")
    assert same["max_rel_error"] == 0.0 and same["prediction_agreement"] == 1.0


@pytest.mark.slow
def test_training_the_head_on_cached_features(model, root, rows, tmp_path):
    loop = pytest.importorskip("cxr.training.loop")
    cfg = make_cfg(views=2)
    cfg.train.epochs = 4
    cfg.train.lr = 1e-2
    out = loaders(model, root, rows, cfg, tmp_path / "cache")
    before = [p.detach().clone() for p in model.head.parameters()]
    checkpointer = Checkpointer(tmp_path / "run", classifier=model, config=cfg, classes=list(CLASSES))
    result = loop.fit(model.head, out["train"], out["val"], tc=cfg.train, compute=Compute(CPU, progress=False),
                      checkpointer=checkpointer)
    assert [row["epoch"] for row in result.history] == [1, 2, 3, 4]
    assert all(np.isfinite(row["train_loss"]) for row in result.history)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert any(not torch.equal(a, b) for a, b in zip(before, model.head.parameters(), strict=True))
    assert result.best_path.is_file()
    assert out["train"].dataset.epoch == 3  # fit moved the view schedule along (0-based epochs)


def test_decoding_in_workers_gives_the_same_features(model, root, rows, tmp_path):
    cfg0, cfg2 = make_cfg(views=2), make_cfg(views=2)
    cfg2.data.num_workers = 2
    a = loaders(model, root, rows, cfg0, tmp_path / "a")
    b = loaders(model, root, rows, cfg2, tmp_path / "b")
    np.testing.assert_array_equal(a["train"].dataset.features, b["train"].dataset.features)


@pytest.mark.slow
def test_compiled_extraction_matches_eager(model, root, rows, tmp_path):
    """`train.compile` extracts through torch.compile; short last batches are padded, results unchanged."""
    eager_cfg, compiled_cfg = make_cfg(views=1), make_cfg(views=1)
    eager_cfg.train.batch_size = compiled_cfg.train.batch_size = 3  # 8/4/4 images: every split ends short
    compiled_cfg.train.compile = True
    eager = loaders(model, root, rows, eager_cfg, tmp_path / "eager")
    compiled = loaders(model, root, rows, compiled_cfg, tmp_path / "compiled")
    for split in ("train", "val", "test"):
        np.testing.assert_allclose(compiled[split].dataset.features, eager[split].dataset.features, rtol=1e-2, atol=1e-3)
