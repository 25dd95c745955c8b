"""Engines against PyTorch: parity of each installed engine, cached exports, tuned session options."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxr.engine import exports, parity
from cxr.engine.base import Engine, installed
from cxr.engine.select import EngineSpec, build_engine, select_engine
from cxr.errors import CxrError
from cxr.models.build import Classifier

SIZE = 32  # the tiny classifier's input size (conftest)
EXPORTED = [pytest.param(name, marks=pytest.mark.skipif(not installed(name), reason=f"{name} not installed"))
            for name in ("onnxruntime", "openvino")]


@pytest.fixture()
def model(tiny_classifier) -> Classifier:
    return tiny_classifier()


@pytest.fixture()
def sample(model) -> torch.Tensor:
    return parity.synthetic_inputs(model.preprocessing, 6, seed=1)


@pytest.mark.parametrize("output", ["features", "logits"])
@pytest.mark.parametrize("name", ["torch", *EXPORTED])
def test_each_engine_matches_pytorch(name, output, model, sample):
    engine = build_engine(name, model, EngineSpec(output, batch_size=4, threads=1, channels_last=False), sample)
    assert engine.name == name and engine.output == output
    reference = parity.reference_output(model, output, sample)
    got = engine.run(sample.numpy())
    assert got.dtype == np.float32 and got.shape == reference.shape
    assert parity.parity_error(reference, got, output) < parity.FP32_TOLERANCE
    assert torch.allclose(engine(sample), torch.from_numpy(reference), atol=1e-4)  # torch in, torch out
    assert engine.run(sample[:1]).shape[0] == 1  # the batch axis is dynamic


@pytest.mark.skipif(not installed("openvino"), reason="openvino not installed")
def test_openvino_bf16_stays_within_the_low_precision_bound(model, sample):
    spec = EngineSpec("logits", precision="bf16", export_precision="bf16", threads=1)
    engine = build_engine("openvino", model, spec, sample)
    assert engine.precision in {"bf16", "fp32"}  # fp32 where the CPU has no bf16
    error = parity.parity_error(parity.reference_output(model, "logits", sample), engine.run(sample), "logits")
    assert error <= parity.tolerance(engine.precision, "logits")


class Shifted(Engine):
    """A broken engine: PyTorch's logits plus an offset on the first class."""

    name = "shifted"

    def __init__(self, model, offset: float) -> None:
        super().__init__("logits", "fp32", 1)
        self.model, self.offset = model, offset

    def run(self, x):
        out = parity.reference_output(self.model, "logits", torch.as_tensor(x))
        out[:, 0] += self.offset
        return out


def test_a_bf16_engine_that_misses_its_bound_falls_back_to_fp32(model, sample, monkeypatch, caplog):
    from cxr.engine import select

    def fake_export(name, model, spec, size):  # bf16 far off, fp32 exact
        engine = Shifted(model, 1.0 if spec.export_precision == "bf16" else 0.0)
        engine.precision = spec.export_precision
        return engine

    monkeypatch.setattr(select, "require_installed", lambda name: None)
    monkeypatch.setattr(select, "_exported_engine", fake_export)
    engine = build_engine("openvino", model, EngineSpec("logits", export_precision="bf16", threads=1), sample)
    assert engine.precision == "fp32"
    assert "bf16 is not accurate enough for this model" in caplog.text
    monkeypatch.setattr(select, "_exported_engine", lambda *a: Shifted(model, 1.0))  # fp32 and wrong: refused
    with pytest.raises(CxrError, match="above the bound"):
        build_engine("openvino", model, EngineSpec("logits", precision="fp32", threads=1), sample)


def test_parity_refuses_an_engine_above_the_bound_and_names_both_numbers(model, sample):
    assert parity.check_parity(Shifted(model, 1e-6), model, sample) < parity.FP32_TOLERANCE
    with pytest.raises(CxrError, match=r"shifted \(fp32\) differs from PyTorch fp32 on 6 images: max abs "
                                       r"probability difference 0\.\d+, above the bound 0\.001"):
        parity.check_parity(Shifted(model, 1.0), model, sample)


def test_feature_parity_is_the_worst_relative_error_of_an_image():
    ref = np.array([[3.0, 4.0], [30.0, 40.0]], dtype=np.float32)
    got = ref + np.array([[0.05, 0.0], [0.05, 0.0]], dtype=np.float32)
    assert parity.parity_error(ref, got, "features") == pytest.approx(0.05 / 5.0, rel=1e-3)  # the small image
    assert parity.tolerance("bf16", "features") > parity.tolerance("bf16", "logits") > parity.tolerance("fp32")
    with pytest.raises(CxrError, match="shape"):
        parity.parity_error(ref, ref[:, :1], "features")


@pytest.mark.skipif(not installed("onnxruntime"), reason="onnxruntime not installed")
def test_exports_are_cached_by_weights_and_never_redone(model, tiny_classifier, monkeypatch, tmp_path):
    first = exports.onnx_export(model, "logits", SIZE, tmp_path)
    monkeypatch.setattr(exports, "write_onnx", lambda *a, **k: pytest.fail("exported twice"))
    assert exports.onnx_export(model, "logits", SIZE, tmp_path) == first
    assert not list(tmp_path.glob(".tmp-*"))
    other = tiny_classifier(seed=1)  # other weights: another file
    assert exports.export_stem(other, "logits", SIZE) != first.stem
    assert exports.export_stem(model, "features", SIZE) != first.stem


def test_explicit_engines_are_checked(model, monkeypatch):
    with pytest.raises(CxrError, match="unknown engine 'tensorrt'"):
        select_engine("tensorrt", model, EngineSpec("logits"))
    with pytest.raises(CxrError, match="needs calibration and validation images"):
        select_engine("openvino-int8", model, EngineSpec("logits"))
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None if name == "onnxruntime" else object())
    with pytest.raises(CxrError, match=r"needs onnxruntime, which is not installed \(pip install 'cxr\[export\]'\)"):
        build_engine("onnxruntime", model, EngineSpec("logits"))


def test_engines_other_than_torch_refuse_a_gpu_and_auto_takes_torch_there(model):
    with pytest.raises(CxrError, match="runs on the CPU"):
        build_engine("onnxruntime", model, EngineSpec("logits", device="cuda"))
    assert select_engine("auto", model, EngineSpec("logits", device="cuda")).name == "torch"


@pytest.mark.skipif(not installed("onnxruntime"), reason="onnxruntime not installed")
def test_onnxruntime_session_options_are_tuned():
    import onnxruntime as ort

    from cxr.engine.ort import session_options

    options = session_options(3)
    assert options.intra_op_num_threads == 3 and options.inter_op_num_threads == 1
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert session_options(1, spin=True).get_session_config_entry("session.intra_op.allow_spinning") == "1"


@pytest.mark.skipif(not installed("openvino"), reason="openvino not installed")
def test_openvino_hints_threads_and_streams(model, sample):
    from cxr.engine.openvino import compile_config

    config = compile_config(2, "fp32", "throughput")
    assert config == {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_PRECISION_HINT": "f32",
                      "INFERENCE_NUM_THREADS": 2, "ENABLE_CPU_PINNING": False}
    assert compile_config(1, "bf16", "latency")["INFERENCE_PRECISION_HINT"] == "bf16"
    with pytest.raises(CxrError, match="unknown performance hint"):
        compile_config(1, "fp32", "fast")
    latency = build_engine("openvino", model, EngineSpec("logits", threads=1, hint="latency"), sample)
    assert len(latency.requests) == 1 and latency.config["PERFORMANCE_HINT"] == "LATENCY"
    throughput = build_engine("openvino", model, EngineSpec("logits", threads=2, hint="throughput"), sample)
    reference = parity.reference_output(model, "logits", sample)
    assert np.allclose(throughput.run(sample), reference, atol=1e-4)  # a batch split over the streams


CHILD = """
import gc, signal, subprocess, sys
from cxr.engine.openvino import OpenVinoEngine
signal.signal(signal.SIGCHLD, lambda *a: None)  # as PyTorch's DataLoader does, with SA_ONSTACK
first = OpenVinoEngine(sys.argv[1], "logits", 1)
second = OpenVinoEngine(sys.argv[1], "logits", 1)
del first; gc.collect()  # destroyed in the order they were made
del second; gc.collect()
subprocess.run([sys.executable, "-c", "pass"], check=True)  # its exit sends SIGCHLD
print("alive")
"""


@pytest.mark.slow  # a process that compiles an OpenVINO model
@pytest.mark.skipif(not installed("openvino"), reason="openvino not installed")
def test_openvino_engines_leave_the_signal_stack_usable(model, tmp_path):
    """OpenVINO's CPU plugin swaps the alternate signal stack per compiled model; out-of-order
    destruction used to leave a freed one registered, and the next SIGCHLD was a SIGSEGV."""
    import os
    import subprocess
    import sys

    path = exports.openvino_export(model, "logits", SIZE, tmp_path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", CHILD, str(path)], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "alive", out.stderr[-2000:]
