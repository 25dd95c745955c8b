"""mallopt tuning for a process that cannot be re-executed (a notebook): applied once, never over a
user's own GLIBC_TUNABLES, and not inherited as 'already tuned' by child commands."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

glibc = pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")


@glibc
def test_tune_malloc_applies_once_and_leaves_the_environment_alone():
    code = ("import os\nfrom cxr import malloc\nfirst = malloc.tune_malloc()\nsecond = malloc.tune_malloc()\n"
            "print(first, second, malloc.MALLOC_TUNED_FLAG in os.environ)")
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "CXR_MALLOC_TUNED")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False", "False"]


@glibc
def test_tune_malloc_respects_the_users_tunables():
    code = "from cxr import malloc\nprint(malloc.tune_malloc())"
    env = dict(os.environ, GLIBC_TUNABLES="glibc.malloc.trim_threshold=0")
    env.pop("CXR_MALLOC_TUNED", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
