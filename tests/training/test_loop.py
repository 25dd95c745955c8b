"""The training loop on a tiny model and tensors: history rows, checkpoints, resume, schedules."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cxr.checkpoint import load_checkpoint
from cxr.config import RunConfig, TrainConfig
from cxr.errors import CxrError
from cxr.metrics import epoch_metrics
from cxr.rundir import HISTORY_COLUMNS, PHASE_COLUMN, read_history_csv
from cxr.runtime import Compute
from cxr.training import loop, optim
from cxr.training.epoch import evaluate_epoch, train_one_epoch
from cxr.training.state import Checkpointer
from cxr.transforms import Preprocessing

CLASSES = ["a", "b", "c"]
CPU = torch.device("cpu")
FP32 = Compute(CPU, "fp32", progress=False)


class NoisyBlobs(Dataset):
    """(3, 6, 6) images whose mean encodes the class, plus epoch-dependent noise (like augmentation)."""

    def __init__(self, n: int, seed: int, augment: bool) -> None:
        rng = np.random.default_rng(seed)
        self.labels = rng.integers(0, len(CLASSES), size=n)
        self.base = (rng.normal(size=(n, 3, 6, 6)) + self.labels[:, None, None, None]).astype(np.float32)
        self.augment = augment
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x = self.base[i]
        if self.augment:
            x = x + np.random.default_rng([1, self.epoch, i]).normal(scale=0.3, size=x.shape).astype(np.float32)
        return torch.from_numpy(x), int(self.labels[i])


class Backbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.num_features = 8

    def forward(self, x):
        return torch.relu(self.conv(x))


class Head(nn.Module):
    """GAP -> dropout -> linear: runs unchanged on (N, C, 1, 1) cached features."""

    def __init__(self, channels: int = 8, dropout: float = 0.2) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, len(CLASSES))

    def forward(self, feats):
        return self.fc(self.drop(feats.mean(dim=(2, 3))))


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = Backbone()
        self.head = Head()
        self.preprocessing = Preprocessing("imagenet", size=16)

    def forward(self, x):
        return self.head(self.backbone(x))


def loaders(batch_size: int = 8, n_train: int = 40, n_val: int = 16):
    train = DataLoader(NoisyBlobs(n_train, 0, augment=True), batch_size=batch_size, shuffle=True,
                       generator=torch.Generator().manual_seed(0))
    val = DataLoader(NoisyBlobs(n_val, 1, augment=False), batch_size=batch_size)
    return train, val


def config(**train) -> RunConfig:
    base = dict(epochs=2, lr=1e-2, channels_last=False, seed=5)
    base.update(train)
    return RunConfig(train=TrainConfig(**base))


def make_model(seed: int = 0) -> Tiny:
    torch.manual_seed(seed)
    return Tiny()


def call_fit(module, train, val, *, cfg, out_dir, classifier=None, train_labels=None, train_cfg=None,
             compute=FP32, **kwargs):
    """`loop.fit` with a Checkpointer into `out_dir` and the training loss of `train_cfg` (default cfg.train)."""
    tc = train_cfg or cfg.train
    checkpointer = Checkpointer(out_dir, classifier=classifier or module, config=cfg, classes=CLASSES)
    criterion = optim.training_criterion(tc, len(CLASSES), CPU, train_labels)
    return loop.fit(module, train, val, tc=tc, compute=compute, checkpointer=checkpointer, criterion=criterion,
                    **kwargs)


def run_fit(tmp_path, cfg, model=None, **kwargs):
    model = model or make_model()
    train, val = loaders(cfg.train.batch_size if cfg.train.batch_size != 32 else 8)
    result = call_fit(model, train, val, cfg=cfg, out_dir=tmp_path, **kwargs)
    return model, result


def test_history_csv_has_one_row_per_epoch_with_the_contract_columns(tmp_path):
    cfg = config(epochs=3)
    model, result = run_fit(tmp_path, cfg)
    with open(tmp_path / "history.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert tuple(reader.fieldnames) == (*HISTORY_COLUMNS, PHASE_COLUMN)
    assert {r["phase"] for r in rows} == {"1"}
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    for row in rows:
        for name in (c for c in HISTORY_COLUMNS if c.startswith(("train_", "val_"))):
            value = float(row[name])
            assert value >= 0 and (name.endswith("loss") or value <= 1)
    # the last row's val metrics are those of the last.pt weights on the val loader
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    check = Tiny()
    check.load_state_dict(ckpt["model"])
    _, val = loaders()
    loss, y, p = evaluate_epoch(check, val, nn.CrossEntropyLoss(), FP32)
    expected = epoch_metrics(y, p, loss)
    for name, value in expected.items():
        assert float(rows[-1][f"val_{name}"]) == pytest.approx(value, abs=1e-6)
    assert read_history_csv(tmp_path / "history.csv")[-1]["val_loss"] == pytest.approx(result.history[-1]["val_loss"])


def test_best_checkpoint_follows_the_lowest_val_loss(tmp_path):
    _, result = run_fit(tmp_path, config(epochs=4))
    losses = [row["val_loss"] for row in result.history]
    best = load_checkpoint(result.best_path)
    assert best["epoch"] == result.best_epoch == int(np.argmin(losses)) + 1
    assert load_checkpoint(result.last_path)["epoch"] == 4
    assert best["classes"] == CLASSES and best["preprocessing"] == {"mode": "imagenet", "size": 16}


def _strip_seconds(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path):
    cfg = config(epochs=3, schedule="cosine", warmup_epochs=0.5, class_weights="balanced")
    labels = NoisyBlobs(40, 0, True).labels
    full_model, full = run_fit(tmp_path / "full", cfg, train_labels=labels)

    class Killed(Exception):
        pass

    def kill_after_first(row):
        if row["epoch"] == 1:
            raise Killed

    with pytest.raises(Killed):
        run_fit(tmp_path / "resumed", cfg, train_labels=labels, on_epoch_end=kill_after_first)
    torch.rand(5)  # the global RNG moves on in between, as it would in a new process
    resumed_model, resumed = run_fit(tmp_path / "resumed", cfg, model=make_model(seed=99), train_labels=labels,
                                     resume=True)
    assert _strip_seconds(resumed.history) == _strip_seconds(full.history)
    for key, value in full_model.state_dict().items():
        torch.testing.assert_close(resumed_model.state_dict()[key], value, rtol=0, atol=1e-6)
    assert resumed.best_epoch == full.best_epoch
    a = read_history_csv(tmp_path / "full" / "history.csv")
    b = read_history_csv(tmp_path / "resumed" / "history.csv")
    assert _strip_seconds(a) == _strip_seconds(b)


def test_resume_without_a_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(CxrError, match="checkpoint not found"):
        run_fit(tmp_path, config(), resume=True)


def test_early_stopping_stops_when_val_loss_stalls(tmp_path):
    _, result = run_fit(tmp_path, config(epochs=6, lr=0.0, early_stopping=2))
    assert result.stopped_early
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert result.best_epoch == 1


def test_head_trained_on_feature_batches_is_stored_in_the_full_classifier(tmp_path):
    """The feature-cache path: fit(model.head) on (N, C, 1, 1) features; checkpoints hold the classifier."""
    model = make_model()
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head_before = model.head.fc.weight.clone()

    def features(n, seed):
        g = torch.Generator().manual_seed(seed)
        y = torch.randint(0, len(CLASSES), (n,), generator=g)
        x = torch.randn(n, 8, 1, 1, generator=g) + y[:, None, None, None].float()
        return DataLoader(list(zip(x, y, strict=True)), batch_size=8)

    result = call_fit(model.head, features(32, 0), features(16, 1), cfg=config(epochs=2), out_dir=tmp_path,
                      classifier=model)
    ckpt = load_checkpoint(result.last_path)
    assert set(ckpt["model"]) == set(model.state_dict())
    torch.testing.assert_close(ckpt["model"]["head.fc.weight"], model.head.fc.weight.detach())
    assert not torch.equal(model.head.fc.weight, head_before)
    for key, value in backbone_before.items():
        assert torch.equal(ckpt["model"][f"backbone.{key}"], value)


def test_param_groups_give_the_backbone_a_fraction_of_the_lr():
    model = make_model()
    groups = optim.param_groups(model, lr=1e-3, backbone_lr_ratio=0.1)
    assert [g["name"] for g in groups] == ["head", "backbone"]
    assert groups[1]["lr"] == pytest.approx(1e-4)
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    groups = optim.param_groups(model, lr=1e-3, backbone_lr_ratio=0.1)
    assert [g["name"] for g in groups] == ["head"]
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(CxrError, match="no trainable parameters"):
        optim.param_groups(model, lr=1e-3, backbone_lr_ratio=0.1)


@pytest.mark.parametrize("name, cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)])
def test_build_optimizer(name, cls):
    assert isinstance(optim.build_optimizer(make_model(), TrainConfig(optimizer=name)), cls)


def test_unknown_optimizer_and_schedule_are_user_errors():
    with pytest.raises(CxrError, match="allowed: adam, adamw, sgd"):
        optim.build_optimizer(make_model(), TrainConfig(optimizer="lamb"))
    with pytest.raises(CxrError, match="allowed: none, step, cosine"):
        optim.lr_factor(0, TrainConfig(schedule="linear"), 10)


def test_step_schedule_drops_after_step_epochs():
    tc = TrainConfig(schedule="step", step_epochs=2, step_gamma=0.1, epochs=5)
    factors = [optim.lr_factor(epoch * 10, tc, steps_per_epoch=10) for epoch in range(5)]
    assert factors == pytest.approx([1, 1, 0.1, 0.1, 0.01])


def test_cosine_schedule_warms_up_then_decays_to_zero():
    tc = TrainConfig(schedule="cosine", warmup_epochs=1, epochs=4)
    f = [optim.lr_factor(s, tc, steps_per_epoch=10) for s in range(40)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:], strict=False))
    assert optim.lr_factor(40, tc, 10) == pytest.approx(0.0, abs=1e-12)
    assert f[25] == pytest.approx(0.5 * (1 + math.cos(math.pi * 15 / 30)))


def test_history_lr_column_follows_the_step_schedule(tmp_path):
    _, result = run_fit(tmp_path, config(epochs=3, schedule="step", step_epochs=2, step_gamma=0.5))
    assert [row["lr"] for row in result.history] == pytest.approx([1e-2, 1e-2, 5e-3])


def test_balanced_class_weights_match_sklearn():
    from sklearn.utils.class_weight import compute_class_weight

    y = np.array([0, 0, 0, 1, 2, 2])
    expected = compute_class_weight("balanced", classes=np.arange(3), y=y)
    np.testing.assert_allclose(optim.class_weights("balanced", y, 3).numpy(), expected, rtol=1e-6)
    assert optim.class_weights("none", y, 3) is None
    with pytest.raises(CxrError, match="allowed: none, balanced"):
        optim.class_weights("inverse", y, 3)


def test_gradient_accumulation_equals_one_big_batch():
    """Two micro-batches of 4 with grad_accum=2 make the same update as one batch of 8 (no BatchNorm)."""
    x = torch.randn(16, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    y = torch.arange(16) % 3
    results = []
    for batch, accum in ((8, 1), (4, 2)):
        model = make_model()
        model.head.drop.p = 0.0
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        data = DataLoader(list(zip(x, y, strict=True)), batch_size=batch)
        out = train_one_epoch(model, data, opt, nn.CrossEntropyLoss(), FP32, grad_accum=accum, epoch=1)
        assert out["n"] == 16 and out["probs"].shape == (16, 3)
        results.append(model.state_dict())
    for key in results[0]:
        torch.testing.assert_close(results[0][key], results[1][key], rtol=1e-5, atol=1e-6)


def test_evaluate_epoch_with_tta_averages_image_views():
    model = make_model().eval()
    _, val = loaders()
    plain_loss, y, plain = evaluate_epoch(model, val, nn.CrossEntropyLoss(), FP32)
    tta_loss, y2, tta = evaluate_epoch(model, val, nn.CrossEntropyLoss(), FP32, tta=True)
    assert np.array_equal(y, y2)
    np.testing.assert_allclose(tta.sum(axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(plain, tta)
    assert math.isfinite(tta_loss) and math.isfinite(plain_loss)


def test_fit_runs_under_bf16_autocast_on_cpu(tmp_path):
    model = make_model()
    train, val = loaders()
    result = call_fit(model, train, val, cfg=config(epochs=1), out_dir=tmp_path,
                      compute=Compute(CPU, "bf16", progress=False))
    row = result.history[0]
    assert math.isfinite(row["train_loss"]) and math.isfinite(row["val_loss"])
    assert next(model.parameters()).dtype == torch.float32  # autocast computes in bf16, weights stay fp32


def test_a_second_phase_continues_epochs_history_and_best(tmp_path):
    import dataclasses

    cfg = config(epochs=2)
    model, first = run_fit(tmp_path, cfg)
    phase2 = dataclasses.replace(cfg.train, epochs=2, lr=1e-3)
    train, val = loaders()
    second = call_fit(model, train, val, cfg=cfg, out_dir=tmp_path, train_cfg=phase2, phase=2, prior=first)
    assert [(r["epoch"], r["phase"]) for r in second.history] == [(1, 1), (2, 1), (3, 2), (4, 2)]
    assert [r["lr"] for r in second.history] == pytest.approx([1e-2, 1e-2, 1e-3, 1e-3])
    losses = [r["val_loss"] for r in second.history]
    assert second.best_epoch == int(np.argmin(losses)) + 1
    last = load_checkpoint(second.last_path)
    assert last["epoch"] == 4 and last["extra"]["phase"] == 2 and last["extra"]["phase_start_epoch"] == 2
    assert [int(r["phase"]) for r in read_history_csv(tmp_path / "history.csv")] == [1, 1, 2, 2]
    with pytest.raises(CxrError, match="cannot resume phase 1"):
        run_fit(tmp_path, cfg, resume=True)
