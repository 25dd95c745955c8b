"""Device choice, precision policy, seeding and RNG state round trips."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from cxr import runtime as dev
from cxr.errors import CxrError


def test_resolve_device_cpu_and_auto():
    assert dev.resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert dev.resolve_device("auto").type == expected


@pytest.mark.parametrize("spec", ["tpu", "gpu0", "cuda:x"])
def test_resolve_device_rejects_unknown(spec):
    with pytest.raises(CxrError, match="allowed|no CUDA"):
        dev.resolve_device(spec)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_resolve_device_cuda_without_gpu_is_a_user_error():
    with pytest.raises(CxrError, match="no CUDA device"):
        dev.resolve_device("cuda:0")


def test_cpu_bf16_detection_reads_cpu_flags(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    monkeypatch.setattr(dev, "CPUINFO", info)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert dev.cpu_has_native_bf16() is False
    assert dev.resolve_precision("auto", torch.device("cpu")) == "fp32"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile\n")
    assert dev.cpu_has_native_bf16() is True
    assert dev.resolve_precision("auto", torch.device("cpu")) == "bf16"


def test_scoring_on_a_cpu_is_fp32_unless_bf16_is_asked_for(monkeypatch):
    """Training takes bf16 where the CPU has it; scoring a trained model does not (bf16 changes labels)."""
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: True)
    cpu = torch.device("cpu")
    assert dev.resolve_precision("auto", cpu) == "bf16"
    assert dev.scoring_precision("auto", cpu) == "fp32" and dev.scoring_precision("bf16", cpu) == "bf16"
    assert dev.Compute.resolve("cpu", "auto", scoring=True).precision == "fp32"
    assert dev.Compute.resolve("cpu", "auto").precision == "bf16"
    with pytest.raises(CxrError, match="allowed: auto, fp32, bf16, fp16"):
        dev.scoring_precision("double", cpu)


def test_resolve_precision_user_errors():
    cpu = torch.device("cpu")
    assert dev.resolve_precision("fp32", cpu) == "fp32"
    with pytest.raises(CxrError, match="needs a CUDA device"):
        dev.resolve_precision("fp16", cpu)
    with pytest.raises(CxrError, match="allowed: auto, fp32, bf16, fp16"):
        dev.resolve_precision("double", cpu)


def test_autocast_contexts_on_cpu():
    a = torch.randn(4, 4)
    with dev.autocast(torch.device("cpu"), "fp32"):
        assert (a @ a).dtype == torch.float32
    with dev.autocast(torch.device("cpu"), "bf16"):
        assert (a @ a).dtype == torch.bfloat16
    assert dev.make_grad_scaler(torch.device("cpu"), "bf16") is None


def test_batch_to_channels_last_only_for_4d():
    x = torch.randn(2, 3, 5, 5)
    assert dev.batch_to(x, torch.device("cpu"), channels_last=True).is_contiguous(memory_format=torch.channels_last)
    assert dev.batch_to(torch.randn(2, 3), torch.device("cpu"), channels_last=True).shape == (2, 3)


def test_set_threads_and_workers(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert dev.set_threads(1) == 1 and torch.get_num_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert dev.set_threads() == dev.available_cores()
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert dev.set_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert dev.resolve_workers(0) == 0
    assert 1 <= dev.resolve_workers(-1) <= dev.MAX_AUTO_WORKERS
    with pytest.raises(CxrError, match="num_workers"):
        dev.resolve_workers(-3)


def test_workers_share_the_cores_between_the_processes_of_a_node(monkeypatch):
    monkeypatch.setattr(dev, "available_cores", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert dev.resolve_workers(-1) == 16 and dev.resolve_workers(-1, cap=8) == 8  # big hosts get more workers
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun --nproc_per_node 4
    assert dev.resolve_workers(-1) == 4 and dev.resolve_workers(3) == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert dev.resolve_workers(-1) == 1


def test_seed_everything_repeats_all_generators():
    g1 = dev.seed_everything(7)
    first = (random.random(), np.random.rand(), torch.rand(3), g1.numpy.random(), torch.rand(2, generator=g1.torch))
    g2 = dev.seed_everything(7)
    second = (random.random(), np.random.rand(), torch.rand(3), g2.numpy.random(), torch.rand(2, generator=g2.torch))
    assert first[:2] == second[:2] and first[3] == second[3]
    assert torch.equal(first[2], second[2]) and torch.equal(first[4], second[4])


def test_rng_state_round_trip_through_a_safe_torch_save(tmp_path):
    dev.seed_everything(3)
    state = dev.rng_state()
    path = tmp_path / "rng.pt"
    torch.save(state, path)
    expected = (random.random(), np.random.rand(), torch.rand(4))
    random.random(), np.random.rand(), torch.rand(4)  # move every generator on
    dev.set_rng_state(torch.load(path, weights_only=True))
    again = (random.random(), np.random.rand(), torch.rand(4))
    assert expected[:2] == again[:2] and torch.equal(expected[2], again[2])


def test_single_process_rank_helpers():
    assert dev.is_main_process()
    a, b = np.arange(3), np.ones((3, 2))
    ga, gb = dev.gather_arrays(a, b)
    assert ga is a and gb is b
