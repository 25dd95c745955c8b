"""The `cxr` command re-executes itself once with glibc malloc tunables (benchmarks share the helper)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from cxr.malloc import MALLOC_TUNABLES, MALLOC_TUNED_FLAG

CHILD = """
import os, sys
from cxr.malloc import reexec_with_malloc_tunables
if len(sys.argv) > 1:
    print(os.environ.get("GLIBC_TUNABLES"), os.environ.get("{flag}"), sys.argv[1])
else:
    reexec_with_malloc_tunables([sys.executable, __file__, "again"])
    print("not re-executed")
"""


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_reexec_sets_tunables_once_and_respects_the_user(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(flag=MALLOC_TUNED_FLAG))
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", MALLOC_TUNED_FLAG)}
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [MALLOC_TUNABLES, "1", "again"]

    user = dict(env, GLIBC_TUNABLES="glibc.malloc.trim_threshold=1")
    out = subprocess.run([sys.executable, str(script)], env=user, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "not re-executed"
