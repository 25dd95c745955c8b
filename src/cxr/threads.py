"""How many threads to compute with, and how idle threads wait: behaving on a shared machine.

Two things make CPU inference collapse when other work shares the cores (a reviewer measured scoring
slow down tenfold with one other job running):

- more compute threads than free cores: every layer ends in a barrier, and the thread that shares
  its core with another process arrives late at each one, so all threads wait for it;
- spinning waits: between parallel regions GNU OpenMP (the runtime of PyTorch's PyPI wheels, see
  `torch.__config__.parallel_info()`) keeps idle threads spinning for 300,000 iterations by default,
  taking the cycles that the late thread and the other processes need.

So `plan_threads` chooses one thread per core that is actually free (sampled from /proc/stat for a
fraction of a second, this process's own use added back) unless the user chose (`--threads`,
`OMP_NUM_THREADS`), and `openmp_env` asks OpenMP for passive waits (`OMP_WAIT_POLICY=PASSIVE`,
unless the user set a wait policy or a spin count). The wait policy is read when the OpenMP runtime
starts, so the `cxr` command sets it by re-executing itself (`cxr.malloc.reexec_with_malloc_tunables`);
ONNX Runtime's and OpenVINO's own thread pools are told through their session options
(`cxr.engine.ort`, `cxr.engine.openvino`). Torch-free.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PROC_STAT = Path("/proc/stat")
SAMPLE_SECONDS = 0.25  # how long /proc/stat is watched to see which cores are busy
WAIT_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}  # idle OpenMP threads sleep instead of spinning
USER_WAIT_KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")  # the user chose how threads wait
_IDLE_FIELDS = (3, 4)  # idle and iowait, 0-based among the numbers of a /proc/stat cpu line


def available_cores() -> int:
    """CPU cores this process may run on (respects affinity masks and container limits)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _allowed_cpus() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return None


def read_cpu_times(path: Path = PROC_STAT) -> dict[int, tuple[int, int]]:
    """Per CPU number: (total, idle) jiffies from /proc/stat; empty where the file cannot be read."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    times = {}
    for line in lines:
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or not name[3:].isdigit():
            continue
        values = [int(v) for v in rest.split()]
        times[int(name[3:])] = (sum(values[:8]), sum(values[i] for i in _IDLE_FIELDS if i < len(values)))
    return times


def free_cores(sample_s: float = SAMPLE_SECONDS, path: Path = PROC_STAT) -> float | None:
    """How many of this process's cores were idle over `sample_s` seconds (this process's own use
    counted as idle); None where /proc/stat is unreadable."""
    allowed = _allowed_cpus()
    before, own_before, start = read_cpu_times(path), time.process_time(), time.monotonic()
    time.sleep(sample_s)
    after, own_after, elapsed = read_cpu_times(path), time.process_time(), time.monotonic() - start
    cpus = [c for c in after if c in before and (allowed is None or c in allowed)]
    if not cpus:
        return None
    free = 0.0
    for cpu in cpus:
        total = after[cpu][0] - before[cpu][0]
        idle = after[cpu][1] - before[cpu][1]
        free += idle / total if total > 0 else 1.0
    own = (own_after - own_before) / elapsed if elapsed > 0 else 0.0
    return min(float(len(cpus)), free + own)


@dataclass(frozen=True)
class ThreadPlan:
    """The intra-op thread count of this process and where it came from."""

    threads: int  # intra-op threads for PyTorch, ONNX Runtime and OpenVINO alike
    cores: int  # cores this process may run on
    free: float | None  # cores measured idle when the plan was made (None: not measured)
    source: str  # "requested" | "OMP_NUM_THREADS" | "free cores" | "all cores"

    def describe(self) -> str:
        """E.g. '1 thread of 2 cores (the machine is busy: 0.6 cores were free at start; --threads N to choose)'."""
        count = f"{self.threads} thread{'' if self.threads == 1 else 's'} of {self.cores} core{'' if self.cores == 1 else 's'}"
        if self.free is not None:
            return (f"{count} (the machine is busy: {self.free:.1f} cores were free at start; "
                    "--threads N to choose)")
        why = {"requested": "as asked", "OMP_NUM_THREADS": "from $OMP_NUM_THREADS"}.get(self.source, self.source)
        return f"{count} ({why})"

    @property
    def worth_telling(self) -> bool:
        """True when the count was cut to the free cores: fewer threads than cores, which a user may wonder about."""
        return self.source == "free cores" and self.threads < self.cores


def plan_threads(requested: int | None = 0, *, measure: bool = True, sample_s: float = SAMPLE_SECONDS,
                 environ: Mapping[str, str] | None = None) -> ThreadPlan:
    """The thread count to use: `requested` when >= 1, else $OMP_NUM_THREADS when set, else one per
    free core (measured, at least 1) or, with `measure=False`, every available core."""
    env = os.environ if environ is None else environ
    cores = available_cores()
    if requested is not None and requested >= 1:
        return ThreadPlan(int(requested), cores, None, "requested")
    text = env.get("OMP_NUM_THREADS", "")
    if text.isdigit() and int(text) > 0:
        return ThreadPlan(int(text), cores, None, "OMP_NUM_THREADS")
    if not measure:
        return ThreadPlan(cores, cores, None, "all cores")
    free = free_cores(sample_s)
    if free is None:
        return ThreadPlan(cores, cores, None, "all cores")
    return ThreadPlan(max(1, min(cores, int(free + 0.5))), cores, free, "free cores")


def openmp_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Variables to add before the OpenMP runtime starts: passive waits, unless the user chose how
    threads wait (any of USER_WAIT_KEYS set)."""
    env = os.environ if environ is None else environ
    if any(key in env for key in USER_WAIT_KEYS):
        return {}
    return dict(WAIT_ENV)
