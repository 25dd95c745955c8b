"""Shared-machine behaviour: threads from the free cores, passive OpenMP waits set before OpenMP starts."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from cxr import threads
from cxr.malloc import MALLOC_TUNED_FLAG, reexec_env

STAT = "cpu  {t0} 0 0 {i0} 0 0 0 0 0 0\ncpu0 {a0} 0 0 {b0} 0 0 0 0 0 0\ncpu1 {a1} 0 0 {b1} 0 0 0 0 0 0\n"


def fake_stat(tmp_path: Path, monkeypatch, busy_per_cpu: dict[int, float]) -> Path:
    """A /proc/stat whose second read shows each CPU busy for the given fraction of 1000 jiffies."""
    path = tmp_path / "stat"
    snapshots = [{0: (0, 0), 1: (0, 0)},
                 {cpu: (1000, round(1000 * (1 - busy))) for cpu, busy in busy_per_cpu.items()}]
    reads = iter(snapshots)
    monkeypatch.setattr(threads, "read_cpu_times", lambda _path=path: next(reads))
    monkeypatch.setattr(threads, "_allowed_cpus", lambda: {0, 1})
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    monkeypatch.setattr(threads.time, "process_time", lambda: 0.0)  # this process used no CPU meanwhile
    return path


def test_read_cpu_times_parses_proc_stat(tmp_path):
    path = tmp_path / "stat"
    path.write_text(STAT.format(t0=30, i0=10, a0=100, b0=40, a1=50, b1=5) + "intr 1 2 3\n")
    assert threads.read_cpu_times(path) == {0: (140, 40), 1: (55, 5)}
    assert threads.read_cpu_times(tmp_path / "missing") == {}


def test_one_busy_core_of_two_leaves_one_thread(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    fake_stat(tmp_path, monkeypatch, {0: 1.0, 1: 0.0})
    plan = threads.plan_threads(0, sample_s=0.0)
    assert plan.threads == 1 and plan.source == "free cores" and plan.free == pytest.approx(1.0, abs=0.05)
    assert plan.describe() == "1 thread of 2 cores (the machine is busy: 1.0 cores were free at start; --threads N to choose)"
    assert plan.worth_telling


def test_the_threads_line_reads_well_and_only_comes_when_useful(tmp_path, monkeypatch, caplog):
    import torch

    from cxr.runtime import set_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        fake_stat(tmp_path, monkeypatch, {0: 0.1, 1: 0.2})  # idle: every core, nothing to say
        with caplog.at_level("INFO", logger="cxr"):
            assert set_threads(0) == 2
        assert "threads:" not in caplog.text
        fake_stat(tmp_path, monkeypatch, {0: 1.0, 1: 1.0})  # busy: one thread, said once and in words
        with caplog.at_level("INFO", logger="cxr"):
            assert set_threads(0) == 1
        assert "threads: 1 thread of 2 cores (the machine is busy: 0.0 cores were free at start" in caplog.text
        assert "1 threads" not in caplog.text
    finally:
        torch.set_num_threads(before)
    assert threads.ThreadPlan(3, 4, None, "requested").describe() == "3 threads of 4 cores (as asked)"


def test_an_idle_machine_gets_every_core_and_a_full_one_still_one_thread(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    fake_stat(tmp_path, monkeypatch, {0: 0.1, 1: 0.2})
    assert threads.plan_threads(0, sample_s=0.0).threads == 2
    fake_stat(tmp_path, monkeypatch, {0: 1.0, 1: 1.0})
    assert threads.plan_threads(0, sample_s=0.0).threads == 1


def test_the_users_choice_wins_and_is_never_measured(monkeypatch):
    monkeypatch.setattr(threads, "free_cores", lambda *a: pytest.fail("measured"))
    assert threads.plan_threads(3).threads == 3
    assert threads.plan_threads(0, environ={"OMP_NUM_THREADS": "2"}).source == "OMP_NUM_THREADS"
    assert threads.plan_threads(None, measure=False, environ={}).source == "all cores"


def test_openmp_waits_passively_unless_the_user_chose():
    assert threads.openmp_env({}) == {"OMP_WAIT_POLICY": "PASSIVE"}
    for key in threads.USER_WAIT_KEYS:
        assert threads.openmp_env({key: "1"}) == {}


CHILD = """
import json, os, sys
from cxr.malloc import reexec_with_malloc_tunables
if len(sys.argv) == 1:
    reexec_with_malloc_tunables([sys.executable, __file__, "again"])
import torch
torch.set_num_threads(2)
torch.ones(64, 64) @ torch.ones(64, 64)  # starts the OpenMP runtime
print(json.dumps({"policy": os.environ.get("OMP_WAIT_POLICY"), "argv": sys.argv[1:],
                  "parallel": torch.__config__.parallel_info()}))
"""


@pytest.mark.slow  # two processes that import torch
@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_the_reexecuted_process_runs_with_passive_waits(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {k: v for k, v in os.environ.items()
           if k not in ("GLIBC_TUNABLES", MALLOC_TUNED_FLAG, *threads.USER_WAIT_KEYS)}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    out = json.loads(subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                                    check=True).stdout)
    assert out["policy"] == "PASSIVE" and out["argv"] == ["again"]
    assert "OpenMP" in out["parallel"]  # PyTorch's CPU threads are OpenMP's: the policy applies to them

    active = dict(env, OMP_WAIT_POLICY="ACTIVE")
    out = json.loads(subprocess.run([sys.executable, str(script)], env=active, capture_output=True, text=True,
                                    check=True).stdout)
    assert out["policy"] == "ACTIVE" and out["argv"] == ["again"]  # re-executed for malloc, policy kept


def test_reexec_env_is_empty_once_reexecuted():
    assert reexec_env({MALLOC_TUNED_FLAG: "1"}) == {}
