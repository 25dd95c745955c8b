"""DistributedDataParallel: the pieces that make N processes train exactly like one (the process group
itself is `cxr.training.distributed`).

What keeps a run of N processes equal to a single-process run with the same global batch and seed:

- `GlobalBatchSampler`: the single process's shuffled order (`EpochShuffle`: permutation of
  `np.random.default_rng([seed, epoch])`), cut into the same global batches; each rank takes its
  contiguous share of every global batch, so per-rank batch = global batch / world size.
- `GlobalBatchLoss`: cross-entropy normalised by the whole global batch (its size, or the sum of
  its class weights), so DDP's gradient average equals the single-process gradient even when the last
  batch does not split evenly.
- `sync_batchnorm`: BatchNorms that train see the statistics of the whole global batch (torch's
  SyncBatchNorm on CUDA, `CpuSyncBatchNorm` on the CPU, where torch's does not run).
- `ShardSampler` + `cxr.runtime.gather_arrays`: each rank evaluates a contiguous block of the
  validation set (no padding, no duplicates) and the predictions are gathered, so val metrics are exact.

What still differs: dropout draws (each rank has its own RNG stream) and the float summation order.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Sampler

from cxr.data.dataset import make_loader
from cxr.errors import CxrError
from cxr.rank import world_size
from cxr.training.distributed import DistributedContext

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# samplers and loaders


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The single-process shuffle of `cxr.data.dataset.EpochShuffle`: a permutation from (seed, epoch)."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


class GlobalBatchSampler(Sampler[int]):
    """This rank's share of every global batch of the single-process epoch order.

    The epoch order is `epoch_order(n, seed, epoch)` (shuffle) or 0..n-1; it is cut into global
    batches of `batch_size`, and rank r takes chunk r of `np.array_split(batch, world)` from each. With
    `batch_size % world == 0` every chunk but the last global batch's has batch_size / world indices, so
    a DataLoader with that batch size over this sampler yields exactly one chunk per global batch, the
    same number of batches on every rank. A last global batch smaller than the world size cannot give
    every rank a sample: it is left out (with a warning), the only case where the epoch differs from
    one process.
    """

    def __init__(self, n: int, batch_size: int, rank: int, world: int, seed: int, shuffle: bool = True) -> None:
        if batch_size % world:
            raise CxrError(
                f"train.batch_size={batch_size} is the global batch and must be divisible by the number of "
                f"processes ({world}); choose a multiple of {world}"
            )
        self.n, self.batch_size, self.rank, self.world = int(n), int(batch_size), int(rank), int(world)
        self.seed, self.shuffle = int(seed), bool(shuffle)
        self.epoch = 0
        remainder = self.n % self.batch_size
        self.used = self.n - remainder if 0 < remainder < self.world else self.n
        if self.used < self.n:
            log.warning(
                "distributed: the last global batch of each epoch has %d sample(s), fewer than the %d processes; "
                "it is skipped (a single process would train on it)", remainder, self.world,
            )

    def set_epoch(self, epoch: int) -> None:
        """Select the order of `epoch` (0-based, as `fit` and DistributedSampler count)."""
        self.epoch = int(epoch)

    def indices(self) -> list[int]:
        order = epoch_order(self.n, self.seed, self.epoch) if self.shuffle else np.arange(self.n)
        mine: list[int] = []
        for start in range(0, self.used, self.batch_size):
            batch = order[start : min(start + self.batch_size, self.used)]
            mine.extend(np.array_split(batch, self.world)[self.rank].tolist())
        return mine

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())

    def __len__(self) -> int:
        full, last = divmod(self.used, self.batch_size)
        per = self.batch_size // self.world
        tail = len(np.array_split(np.arange(last), self.world)[self.rank]) if last else 0
        return full * per + tail


class ShardSampler(Sampler[int]):
    """A contiguous block of 0..n-1 per rank, unpadded (`np.array_split`).

    Gathering the ranks' predictions in rank order gives back every sample exactly once, in order.
    """

    def __init__(self, n: int, rank: int, world: int) -> None:
        if n < world:
            raise CxrError(f"{n} evaluation images cannot be shared by {world} processes; use fewer processes")
        self.block = np.array_split(np.arange(int(n)), int(world))[int(rank)].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.block)

    def __len__(self) -> int:
        return len(self.block)


def shard_loaders(
    loaders: dict[str, DataLoader],
    *,
    batch_size: int,
    seed: int,
    ctx: DistributedContext | None,
    train: str = "train",
    evaluate: tuple[str, ...] = ("val",),
) -> dict[str, DataLoader]:
    """Per-rank loaders over the same datasets: `train` by GlobalBatchSampler, `evaluate` by ShardSampler.

    Other splits (e.g. test, which rank 0 scores alone) keep their loader. Identity without `ctx`.
    Worker count, pinning and worker seeding follow `cxr.data.dataset.make_loader`.
    """
    if ctx is None:
        return dict(loaders)

    per_rank = batch_size // ctx.world_size
    out = dict(loaders)
    for name, loader in loaders.items():
        if name == train:
            sampler: Sampler[int] = GlobalBatchSampler(len(loader.dataset), batch_size, ctx.rank, ctx.world_size,
                                                       seed, shuffle=True)
        elif name in evaluate:
            sampler = ShardSampler(len(loader.dataset), ctx.rank, ctx.world_size)
        else:
            continue
        out[name] = make_loader(loader.dataset, batch_size=max(1, per_rank), shuffle=False,
                                num_workers=loader.num_workers, seed=seed, sampler=sampler)
    return out


# --------------------------------------------------------------------------------------------------
# the loss of the global batch


class GlobalBatchLoss(nn.Module):
    """Cross-entropy of this rank's part of a global batch, scaled so DDP's gradient mean is exact.

    Single process: mean over the batch of w[y_i] * l_i / sum(w[y_i]) (w = 1 without class weights).
    Here each rank returns world * sum_rank(w l) / sum_global(w), whose average over ranks (what DDP's
    gradient all-reduce computes) is that same global mean, whatever the ranks' batch sizes. The value
    returned is the global batch's loss (identical on every rank), for logging.
    """

    def __init__(self, weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        per_sample = F.cross_entropy(logits, target, weight=self.weight, label_smoothing=self.label_smoothing,
                                     reduction="none")
        norm = self.weight[target].sum() if self.weight is not None else per_sample.new_tensor(float(len(target)))
        totals = torch.stack([per_sample.detach().sum(), norm.detach()]).double()
        world = world_size()
        if world > 1:
            dist.all_reduce(totals)
        local = per_sample.sum() * (world / totals[1].to(per_sample.dtype))
        global_mean = (totals[0] / totals[1]).to(per_sample.dtype)
        return local + (global_mean - local).detach()


def train_loss(weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> nn.Module:
    """The training loss: nn.CrossEntropyLoss in one process, GlobalBatchLoss across ranks."""
    if world_size() > 1:
        return GlobalBatchLoss(weight, label_smoothing)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)


# --------------------------------------------------------------------------------------------------
# synchronised BatchNorm and the DDP wrapper


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks with a gradient: the gradient of a sum over ranks is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        out = grad.contiguous().clone()
        dist.all_reduce(out)
        return out


class CpuSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the whole global batch across ranks.

    torch's SyncBatchNorm runs only on GPUs; this one uses differentiable all-reduces, two-pass (mean,
    then the centred sum of squares) for accuracy. Eval mode and a single process are plain BatchNorm2d. State dict keys are
    BatchNorm2d's, so checkpoints load into the plain model.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world_size() == 1:
            return super().forward(x)
        all_reduce = _AllReduceSum.apply
        self._check_input_dim(x)
        channels = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, channels] + [1] * (x.dim() - 2)
        xf = x.float()
        count = xf.new_tensor([x.numel() / channels])
        total = all_reduce(torch.cat([xf.sum(dims), count]))
        n = total[-1]
        mean = total[:-1] / n
        centred = xf - mean.view(shape)
        var = all_reduce((centred * centred).sum(dims)) / n
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var.detach() * (n / torch.clamp(n - 1, min=1))
                self.running_mean.mul_(1 - factor).add_(mean.detach() * factor)
                self.running_var.mul_(1 - factor).add_(unbiased * factor)
        return out.to(x.dtype)


def _synced_copy(bn: nn.BatchNorm2d, device: torch.device) -> nn.Module:
    cls: type[nn.Module] = nn.SyncBatchNorm if device.type == "cuda" else CpuSyncBatchNorm
    new = cls(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
              track_running_stats=bn.track_running_stats)
    new.load_state_dict(bn.state_dict())
    new.to(device)
    for name, param in bn.named_parameters(recurse=False):
        getattr(new, name).requires_grad_(param.requires_grad)
    new.train(bn.training)
    return new


def sync_batchnorm(module: nn.Module, device: torch.device) -> int:
    """Replace, in place, every BatchNorm2d whose affine parameters train by a synchronised one.

    Frozen BatchNorms (eval mode, no gradient) are left alone. Returns the number replaced.
    """
    replaced = 0
    for name, child in module.named_children():
        trains = (isinstance(child, nn.BatchNorm2d) and not isinstance(child, nn.SyncBatchNorm | CpuSyncBatchNorm)
                  and child.weight is not None and child.weight.requires_grad)
        if trains:
            setattr(module, name, _synced_copy(child, device))
            replaced += 1
        else:
            replaced += sync_batchnorm(child, device)
    return replaced


def wrap_ddp(module: nn.Module, ctx: DistributedContext | None) -> nn.Module:
    """DistributedDataParallel around `module` (already on ctx.device); identity without `ctx`.

    Training BatchNorms are synchronised first, unless `module.norm_stats_frozen` says its BatchNorms
    never use batch statistics. Buffers are not re-broadcast on every forward: with synchronised
    BatchNorms they are equal on all ranks anyway, and evaluation then needs no collective, so ranks
    may evaluate different numbers of batches.
    """
    if ctx is None:
        return module
    from torch.nn.parallel import DistributedDataParallel

    if not getattr(module, "norm_stats_frozen", False):
        replaced = sync_batchnorm(module, ctx.device)
        if replaced:
            log.info("distributed: %d training BatchNorm layers synchronised across ranks", replaced)
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    # newer torch spells broadcast_buffers=False as forward_sync_buffers=False (buffers still synced at init)
    params = inspect.signature(DistributedDataParallel).parameters
    no_buffer_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
    return DistributedDataParallel(module, device_ids=device_ids, **no_buffer_sync)


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel (or torch.compile) wrapper."""
    while True:
        inner = getattr(module, "module", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(module, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return module
        module = inner
