"""torchrun: joining and leaving the process group, and the few collectives a study needs.

`torchrun --nproc_per_node N -m cxr train ...` starts N copies of the command with RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT in their environment. `distributed_session` turns that into a
process group (NCCL when the processes use GPUs, gloo on the CPU) and always destroys it again, on
success and on error. Without those variables (or with WORLD_SIZE=1) everything here is a no-op, so
the same code path serves one process and many. What makes N processes train exactly like one is in
`cxr.training.ddp`.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from cxr.errors import CxrError
from cxr.rank import env_int, rank, world_size

log = logging.getLogger(__name__)

T = TypeVar("T")

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
RUN_LOGGER = "cxr"
# Rank 0 may build the feature cache while the others wait at a barrier: allow for a long extraction.
TIMEOUT = datetime.timedelta(hours=2)


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the job and what it computes on."""

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# --------------------------------------------------------------------------------------------------
# environment, setup and teardown


def distributed_device(spec: str, local_rank: int) -> torch.device:
    """The device of this rank: its own GPU (cuda:LOCAL_RANK) for 'auto'/'cuda' when CUDA is visible, else the CPU."""
    spec = (spec or "auto").strip().lower()
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if spec in ("auto", "cuda"):
        if not torch.cuda.is_available():
            raise CxrError("device 'cuda' asked for, but no CUDA device is visible; use --device cpu or auto")
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise CxrError(
                f"LOCAL_RANK {local_rank} has no GPU: this machine has {count}; "
                f"use --nproc_per_node {count} or fewer"
            )
        return torch.device("cuda", local_rank)
    raise CxrError(
        f"device {spec!r} cannot be used under torchrun, where each process takes the GPU of its LOCAL_RANK; "
        "allowed: auto, cuda, cpu"
    )


def init_distributed(device: str = "auto") -> DistributedContext | None:
    """Join the process group described by the torchrun environment; None for a single process.

    NCCL when the ranks use GPUs (each rank binds cuda:LOCAL_RANK), gloo on the CPU.
    """
    world = env_int("WORLD_SIZE", 1)
    if world <= 1:
        return None
    if not dist.is_available():
        raise CxrError("this PyTorch build has no torch.distributed; run without torchrun")
    rank_, local_rank = env_int("RANK", 0), env_int("LOCAL_RANK", env_int("RANK", 0))
    if not 0 <= rank_ < world:
        raise CxrError(f"RANK={rank_} is outside 0..{world - 1} (WORLD_SIZE={world})")
    if not (os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT")):
        raise CxrError(f"WORLD_SIZE={world} but MASTER_ADDR/MASTER_PORT are not set: launch with torchrun")
    dev = distributed_device(device, local_rank)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend, init_method="env://", rank=rank_, world_size=world, timeout=TIMEOUT,
                                **kwargs)
    log.info("distributed: rank %d of %d (local rank %d), %s on %s", rank_, world, local_rank, backend, dev)
    return DistributedContext(rank=rank_, world_size=world, local_rank=local_rank, backend=backend, device=dev)


def teardown() -> None:
    """Destroy the process group if one is up (idempotent)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def distributed_session(device: str = "auto") -> Iterator[DistributedContext | None]:
    """Set up DDP from the environment for the block and tear it down after it, also on error.

    Yields None in a single process. Ranks other than 0 log warnings and errors only. A session
    inside a session (a process group that is already up) reuses it and leaves the teardown to the outer one.
    """
    if env_int("WORLD_SIZE", 1) <= 1:
        yield None
        return
    if dist.is_initialized():
        yield _current_context(device)
        return
    logger = logging.getLogger(RUN_LOGGER)
    old_level = logger.level
    try:
        if env_int("RANK", 0) != 0:
            logger.setLevel(max(logging.WARNING, logger.getEffectiveLevel()))
        yield init_distributed(device)
    finally:
        logger.setLevel(old_level)
        teardown()


def _current_context(device: str) -> DistributedContext:
    local_rank = env_int("LOCAL_RANK", dist.get_rank())
    dev = distributed_device(device, local_rank)
    return DistributedContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                              backend=str(dist.get_backend()), device=dev)


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if world_size() > 1:
        dist.barrier()


def run_on_main(fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 only and hand its (picklable) result to every rank.

    A CxrError raised on rank 0 is raised on every rank with the same message, so a user mistake
    found by rank 0 (an empty split, a bad file) stops the whole job cleanly instead of hanging it.
    """
    if world_size() == 1:
        return fn()
    payload: list[Any] = [None]
    error: CxrError | None = None
    if rank() == 0:
        try:
            payload[0] = ("ok", fn())
        except CxrError as exc:
            error = exc
            payload[0] = ("error", str(exc))
    dist.broadcast_object_list(payload, src=0)
    kind, value = payload[0]
    if error is not None:
        raise error
    if kind == "error":
        raise CxrError(value)
    return value
