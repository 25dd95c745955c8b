"""Which process of a job this is: its rank and the world size, before, inside and after a torchrun
process group. Torch-free, so command-line output and the run-folder code can ask it cheaply.

torchrun starts every process with RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE set; once a
process group is up its answer is used instead. Without either, this is rank 0 of 1.
"""

from __future__ import annotations

import os
import sys

from cxr.errors import CxrError


def env_int(name: str, default: int) -> int:
    """An integer torchrun variable from the environment; `default` when unset or empty."""
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise CxrError(f"environment variable {name}={value!r} must be an integer (torchrun sets it)") from None


def _group():  # noqa: ANN202 - torch.distributed when a process group is up, else None
    dist = sys.modules.get("torch.distributed")  # never imported here: it is up only if someone imported it
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist
    return None


def rank() -> int:
    """This process's rank: the process group's when one is up, else RANK (0 outside torchrun)."""
    group = _group()
    return group.get_rank() if group is not None else env_int("RANK", 0)


def world_size() -> int:
    """Processes in the job: the process group's size when one is up, else WORLD_SIZE (1 outside torchrun)."""
    group = _group()
    return group.get_world_size() if group is not None else env_int("WORLD_SIZE", 1)


def local_world_size() -> int:
    """Processes of the job on this machine (LOCAL_WORLD_SIZE; 1 outside torchrun)."""
    return max(1, env_int("LOCAL_WORLD_SIZE", 1))


def is_main_process() -> bool:
    """True on rank 0 and in a single process: only it logs progress, prints results and writes files."""
    return rank() == 0
