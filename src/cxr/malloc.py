"""glibc malloc settings that keep PyTorch's large CPU buffers in the process.

glibc returns large freed blocks to the OS and faults them in again on every iteration, which makes
PyTorch on the CPU 2-4x slower in some VMs (bench/README.md: 7.3 -> 12.2 images/s). Two ways to
avoid it, both no-ops where the C library is not glibc or the user set GLIBC_TUNABLES:

- `reexec_with_malloc_tunables(argv)`: the `cxr` command and the benchmark scripts re-execute
  themselves once with GLIBC_TUNABLES set, before anything is allocated (the same re-exec sets the
  OpenMP wait policy of `cxr.threads.openmp_env`, which must be set before OpenMP starts too);
- `tune_malloc()`: for a process that is already running (a notebook, a script that imports cxr),
  the same thresholds through `mallopt(3)`; the Python API calls it when a study or a predictor starts.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
import sys
from collections.abc import Sequence

from cxr.threads import openmp_env

log = logging.getLogger(__name__)

TRIM_THRESHOLD = 17179869184  # 16 GiB: freed memory stays in the process
MMAP_THRESHOLD = 4294967296  # 4 GiB: large tensor buffers come from the heap, not fresh mmaps
MALLOC_TUNABLES = f"glibc.malloc.mmap_threshold={MMAP_THRESHOLD}:glibc.malloc.trim_threshold={TRIM_THRESHOLD}"
MALLOC_TUNED_FLAG = "CXR_MALLOC_TUNED"  # set once the process runs with the settings
_M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_INT_MAX = 2**31 - 1  # mallopt takes an int
_applied = False  # tune_malloc ran in this process (not inherited by child processes, which tune themselves)


def _glibc() -> bool:
    return sys.platform == "linux" and platform.libc_ver()[0] == "glibc"


def _user_chose() -> bool:
    return "GLIBC_TUNABLES" in os.environ or bool(os.environ.get(MALLOC_TUNED_FLAG))


def reexec_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """What the re-executed process adds to the environment: GLIBC_TUNABLES and the OpenMP wait
    policy (`cxr.threads.openmp_env`, unless the user chose one). Empty where no re-exec happens:
    not glibc, already re-executed, or GLIBC_TUNABLES set by the user (who then manages the
    environment; set OMP_WAIT_POLICY=PASSIVE yourself on a shared machine)."""
    env = dict(os.environ) if environ is None else environ
    if not _glibc() or "GLIBC_TUNABLES" in env or env.get(MALLOC_TUNED_FLAG):
        return {}
    return {"GLIBC_TUNABLES": MALLOC_TUNABLES, **openmp_env(env)}


def reexec_with_malloc_tunables(command: Sequence[str]) -> None:
    """Re-execute `command` (a full argv) once with `reexec_env()` added; no-op when it is empty."""
    extra = reexec_env()
    if not extra:
        return
    env = dict(os.environ, **extra, **{MALLOC_TUNED_FLAG: "1"})
    try:
        os.execve(sys.executable, list(command), env)
    except OSError:  # pragma: no cover - exec not permitted: run untuned
        return


def tune_malloc() -> bool:
    """Apply the thresholds to this running process with mallopt; True when they were applied.

    mallopt takes an int, so both thresholds are capped at 2 GiB (the command's GLIBC_TUNABLES say
    4 and 16 GiB; the difference matters only for single buffers over 2 GiB). Does nothing when not
    glibc, or when GLIBC_TUNABLES or an earlier call already decided.
    """
    global _applied
    if _applied or not _glibc() or _user_chose():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(min(TRIM_THRESHOLD, _INT_MAX)))
        ok &= libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(min(MMAP_THRESHOLD, _INT_MAX)))
    except (OSError, AttributeError):  # pragma: no cover - no libc to talk to
        return False
    _applied = True
    log.debug("malloc: mallopt trim/mmap thresholds applied (%s)", "ok" if ok else "refused")
    return bool(ok)
