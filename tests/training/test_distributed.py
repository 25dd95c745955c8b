"""DistributedDataParallel: samplers, the global-batch loss, synchronised BatchNorm, and 2 gloo processes
on the CPU that train exactly like one process (same global batch and seed)."""

from __future__ import annotations

import csv
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from cxr import rank as ranks
from cxr.data.dataset import EpochShuffle
from cxr.errors import CxrError
from cxr.training import ddp as DDP
from cxr.training import distributed as D

# --------------------------------------------------------------------------------------------------
# samplers


class _Sized(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n = n
        self.epoch = 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


@pytest.mark.parametrize("n, batch, world", [(21, 8, 2), (24, 8, 4), (23, 6, 3), (5, 8, 2)])
def test_global_batches_are_the_single_process_batches_split_over_ranks(n, batch, world):
    seed, epoch = 7, 3
    data = _Sized(n)
    data.epoch = epoch
    order = list(EpochShuffle(data, seed))
    single = [order[i : i + batch] for i in range(0, n, batch)]
    per_rank = []
    for rank in range(world):
        sampler = DDP.GlobalBatchSampler(n, batch, rank, world, seed)
        sampler.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(data, batch_size=batch // world, sampler=sampler)
        batches = [b.tolist() for b in loader]
        assert len(batches) == len(single)  # every rank takes the same number of steps
        assert len(sampler) == sum(len(b) for b in batches)
        per_rank.append(batches)
    for step, expected in enumerate(single):
        assert sum((per_rank[r][step] for r in range(world)), []) == expected


def test_a_last_batch_smaller_than_the_world_is_skipped_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="cxr.training.distributed"):
        sampler = DDP.GlobalBatchSampler(17, 8, 1, 2, seed=0)
    assert "skipped" in caplog.text
    assert len(sampler) == 8 and len(set(sampler.indices())) == 8


def test_global_batch_must_divide_by_the_world_size():
    with pytest.raises(CxrError, match="batch_size=30 .* divisible by the number of processes \\(4\\)"):
        DDP.GlobalBatchSampler(100, 30, 0, 4, seed=0)


def test_epochs_change_the_order_and_repeat_for_a_seed():
    a, b = DDP.GlobalBatchSampler(40, 8, 0, 2, seed=1), DDP.GlobalBatchSampler(40, 8, 0, 2, seed=1)
    first = a.indices()
    a.set_epoch(1)
    assert a.indices() != first
    b.set_epoch(1)
    assert a.indices() == b.indices()


def test_shard_sampler_blocks_cover_every_sample_once_in_order():
    blocks = [list(DDP.ShardSampler(11, r, 3)) for r in range(3)]
    assert sum(blocks, []) == list(range(11))
    assert [len(b) for b in blocks] == [4, 4, 3]
    with pytest.raises(CxrError, match="2 evaluation images cannot be shared by 3 processes"):
        DDP.ShardSampler(2, 0, 3)


# --------------------------------------------------------------------------------------------------
# single-process behaviour of the helpers


def test_without_torchrun_everything_is_a_single_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    with D.distributed_session("cpu") as ctx:
        assert ctx is None
        assert ranks.world_size() == 1 and ranks.is_main_process()
        assert D.run_on_main(lambda: 41 + 1) == 42
        assert isinstance(DDP.train_loss(None, 0.1), nn.CrossEntropyLoss)
        model = nn.Linear(2, 2)
        assert DDP.wrap_ddp(model, ctx) is model
        loaders = {"train": object()}
        assert DDP.shard_loaders(loaders, batch_size=8, seed=0, ctx=None) == loaders


def test_environment_mistakes_are_user_errors(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(CxrError, match="WORLD_SIZE='two' must be an integer"):
        ranks.world_size()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(CxrError, match="MASTER_ADDR/MASTER_PORT are not set"):
        D.init_distributed("cpu")
    with pytest.raises(CxrError, match="allowed: auto, cuda, cpu"):
        D.distributed_device("cuda:1", 0)
    assert D.distributed_device("cpu", 3) == torch.device("cpu")


def test_global_batch_loss_is_cross_entropy_in_one_process():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 3, generator=g, requires_grad=True)
    target = torch.tensor([0, 1, 2, 2, 1, 0])
    weight = torch.tensor([1.0, 2.0, 0.5])
    ours = DDP.GlobalBatchLoss(weight, 0.1)(logits, target)
    ref = nn.CrossEntropyLoss(weight=weight, label_smoothing=0.1)(logits, target)
    torch.testing.assert_close(ours, ref)
    (g_ours,) = torch.autograd.grad(ours, logits)
    (g_ref,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(g_ours, g_ref)


def test_sync_batchnorm_replaces_only_training_batchnorms_and_keeps_the_state_dict():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)))
    model[1].weight.requires_grad_(False)
    model[1].bias.requires_grad_(False)
    model[1].running_mean.fill_(0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert DDP.sync_batchnorm(model, torch.device("cpu")) == 1
    assert type(model[1]) is nn.BatchNorm2d
    assert isinstance(model[2][1], DDP.CpuSyncBatchNorm)
    assert set(model.state_dict()) == set(before)
    for key, value in before.items():
        assert torch.equal(model.state_dict()[key], value)
    x = torch.randn(4, 3, 5, 5)
    plain = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)))
    plain.load_state_dict(before)
    torch.testing.assert_close(model(x), plain(x))  # one process: exactly BatchNorm2d


# --------------------------------------------------------------------------------------------------
# 2 gloo processes against 1 process


WORKER = textwrap.dedent(
    """
    import os, sys
    from cxr.study import phases
    from cxr.cli import main

    data, out, config, kill_epoch, bn_out, bn_config, port2, port3 = sys.argv[1:9]

    class Killed(Exception):
        pass

    fit = phases.fit

    def killing_fit(*args, **kwargs):
        def stop(row):
            if row["epoch"] == int(kill_epoch):
                raise Killed
        return fit(*args, on_epoch_end=stop, **kwargs)

    # 1. the two-phase run, killed after an epoch of fine-tuning ...
    phases.fit = killing_fit
    argv = ["-q", "train", "--data", data, "--out", out, "--config", config]
    try:
        main(argv)
    except Killed:
        pass
    else:
        sys.exit("the run was not killed")
    phases.fit = fit
    # 2. ... and resumed (each run sets up and tears down its own process group)
    os.environ["MASTER_PORT"] = port2
    if main([*argv, "--resume"]) != 0:
        sys.exit("resume failed")
    # 3. a direct run whose last stage trains with BatchNorm (synchronised across the ranks)
    os.environ["MASTER_PORT"] = port3
    sys.exit(main(["-q", "train", "--data", data, "--out", bn_out, "--config", bn_config]))
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as fh:
        return [{k: float(v) for k, v in row.items() if k != "seconds"} for row in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    from cxr.data.synthetic import generate_dataset

    root = generate_dataset(tmp_path_factory.mktemp("synthetic") / "data", n_per_class=8, size=40, seed=0)
    for path in sorted((root / "Normal").glob("*.png"))[:3]:
        path.unlink()  # 29 images: train 19 (global batches 8, 8, 3: the last splits 2/1), val 3 (2/1)
    return root


def tiny_config() -> dict:
    """Two phases: the head on the feature cache (built by rank 0), then the last two backbone stages on
    images (BatchNorm statistics kept, as fine-tuning does).

    Balanced class weights, label smoothing and the uneven last batch exercise the global-batch
    normaliser. SGD, not Adam: Adam's normalised steps turn float noise in near-zero gradients into
    lr-sized differences, which would hide a wrong gradient behind a loose tolerance.
    """
    return {
        "name": "ddp",
        "data": {"image_size": 32, "num_workers": 0},
        "model": {"backbone": "efficientnet_lite0", "weights": "lite0-imagenet", "head": [16], "freeze": "base"},
        "train": {
            "epochs": 2, "batch_size": 8, "optimizer": "sgd", "lr": 0.05, "weight_decay": 0.01,
            "schedule": "cosine", "warmup_epochs": 0.5, "label_smoothing": 0.1, "class_weights": "balanced",
            "feature_views": 2, "finetune_epochs": 2, "finetune_freeze": "stages:2", "finetune_lr": 0.05,
            "device": "cpu", "precision": "fp32",
        },
        "eval": {"bootstrap": 10, "aug_samples": 2, "grid_per_class": 1},
    }


def bn_config() -> dict:
    """One phase on images with the head conv stage (and its BatchNorm, in training mode) unfrozen."""
    cfg = tiny_config()
    cfg["name"] = "ddp_bn"
    cfg["model"]["freeze"] = "stages:1"
    cfg["train"].update({"epochs": 1, "finetune_epochs": 0})
    return cfg


def _compare_runs(single: Path, ddp: Path) -> list[dict[str, float]]:
    """History rows (but seconds) and last.pt weights of the two runs agree within float tolerance."""
    from cxr.checkpoint import load_checkpoint

    expected, got = _rows(single / "history.csv"), _rows(ddp / "history.csv")
    assert len(got) == len(expected)
    for a, b in zip(expected, got, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], abs=1e-4), key
    ref, ours = load_checkpoint(single / "checkpoints" / "last.pt"), load_checkpoint(ddp / "checkpoints" / "last.pt")
    assert ours["epoch"] == ref["epoch"]
    for key, value in ref["model"].items():
        torch.testing.assert_close(ours["model"][key].float(), value.float(), rtol=1e-4, atol=1e-5, msg=key)
    assert not list(ddp.rglob("*.tmp"))
    assert sorted(p.name for p in ddp.iterdir()) == sorted(p.name for p in single.iterdir())
    return got


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_including_a_kill_and_resume(tiny_data, tmp_path, monkeypatch):
    from cxr import study
    from cxr.checkpoint import load_checkpoint
    from cxr.config import load_config

    configs = {}
    for name, cfg in (("ddp", tiny_config()), ("ddp_bn", bn_config())):
        configs[name] = tmp_path / f"{name}.yaml"
        configs[name].write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    try:
        for name, path in configs.items():
            study.train(load_config(path), tiny_data, tmp_path / "single" / name, cache_dir=tmp_path / "cache1",
                           progress=False)
    finally:
        torch.set_num_threads(threads)

    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    ports = [str(_free_port()) for _ in range(3)]
    out, bn_out = tmp_path / "ddp" / "ddp", tmp_path / "ddp" / "ddp_bn"
    procs = []
    for rank in range(2):  # what torchrun --nproc_per_node 2 sets, on a free local port
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=ports[0], OMP_NUM_THREADS="1",
                   CXR_CACHE_DIR=str(tmp_path / "cache2"))
        args = [tiny_data, out, configs["ddp"], 3, bn_out, configs["ddp_bn"], ports[1], ports[2]]
        procs.append(subprocess.Popen([sys.executable, str(worker), *map(str, args)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    deadline = time.monotonic() + 300
    outputs = []
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
    for rank, (proc, (_stdout, stderr)) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode == 0, f"rank {rank} failed:\n{stderr[-4000:]}"
    # only rank 0 prints result lines (the path of best.pt, once per training)
    assert [line.endswith("best.pt") for line in outputs[0][0].split()] == [True, True]
    assert outputs[1][0].strip() == ""

    got = _compare_runs(tmp_path / "single" / "ddp", out)
    assert [r["epoch"] for r in got] == [1, 2, 3, 4] and [r["phase"] for r in got] == [1, 1, 2, 2]
    assert load_checkpoint(out / "checkpoints" / "last.pt")["extra"]["phase"] == 2
    assert (tmp_path / "cache2").is_dir()  # rank 0 built the feature cache the ranks trained on
    _compare_runs(tmp_path / "single" / "ddp_bn", bn_out)
