"""Int8 is accepted only when validation macro-F1 stays within 0.01 of fp32; otherwise refused with numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxr.data.synthetic import generate_dataset
from cxr.engine import int8
from cxr.engine.base import installed
from cxr.engine.int8 import INT8_F1_BOUND, Int8Verdict, LabelledInputs, require_accepted
from cxr.engine.parity import reference_output, synthetic_inputs
from cxr.engine.select import EngineSpec
from cxr.errors import CxrError
from cxr.rundir import SplitRow, write_csv

SIZE = 32  # the tiny classifier's input size (conftest)


def test_the_rule_accepts_a_small_drop_and_refuses_a_large_one():
    assert Int8Verdict(0.90, 0.90 - INT8_F1_BOUND, 100).accepted
    assert Int8Verdict(0.90, 0.95, 100).accepted  # int8 better: fine
    refused = Int8Verdict(0.90, 0.87, 120)
    assert not refused.accepted and refused.drop == pytest.approx(0.03)
    with pytest.raises(CxrError, match=r"int8 refused: validation macro-F1 0\.8700 \(int8\) vs 0\.9000 \(fp32\) on "
                                       r"120 images, a drop of 0\.0300 \(allowed: 0\.01\)"):
        require_accepted(refused)


@pytest.mark.slow
@pytest.mark.skipif(not installed("openvino-int8"), reason="openvino and nncf not installed")
def test_quantised_engine_is_used_only_within_the_bound(tiny_classifier, tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path))
    model = tiny_classifier()
    x = synthetic_inputs(model.preprocessing, 12)
    labels = reference_output(model, "logits", x).argmax(1)
    calibration, validation = LabelledInputs(x[:8], labels[:8]), LabelledInputs(x, labels)
    spec = EngineSpec("logits", batch_size=4, threads=1)
    scores = iter([0.90, 0.80])  # fp32, then int8: forced below the bound
    monkeypatch.setattr(int8, "macro_f1", lambda y, p: next(scores))
    with pytest.raises(CxrError, match=r"int8 refused: .* 0\.8000 \(int8\) vs 0\.9000 \(fp32\) on 12 images"):
        int8.int8_engine(model, spec, calibration, validation)

    other = LabelledInputs(x[1:], labels[1:])  # other validation images: a new verdict
    scores = iter([0.90, 0.895])
    engine = int8.int8_engine(model, spec, calibration, other)
    assert engine.name == "openvino-int8" and engine.precision == "int8"
    probs = torch.softmax(torch.from_numpy(engine.run(x)), 1)
    reference = torch.softmax(torch.from_numpy(reference_output(model, "logits", x)), 1)
    assert float((probs - reference).abs().max()) < 0.2  # quantised, yet the same model

    monkeypatch.setattr(int8, "quantize", lambda *a: pytest.fail("quantised twice"))
    monkeypatch.setattr(int8, "macro_f1", lambda y, p: pytest.fail("scored twice"))
    assert int8.int8_engine(model, spec, calibration, other).name == "openvino-int8"  # cached verdict


def test_the_run_must_have_its_split_and_images(tiny_classifier, tmp_path):
    model = tiny_classifier()
    ckpt = tmp_path / "run" / "checkpoints" / "best.pt"
    ckpt.parent.mkdir(parents=True)
    args = (list("abc"), model.preprocessing, "train", 4)
    with pytest.raises(CxrError, match="no split.csv beside it"):
        int8.split_inputs(ckpt, tmp_path, *args)
    write_csv(tmp_path / "run" / "split.csv", ["path", "label", "split", "group"], [])
    with pytest.raises(CxrError, match="no data root in its config"):
        int8.split_inputs(ckpt, None, *args)
    with pytest.raises(CxrError, match="does not exist here"):
        int8.split_inputs(ckpt, tmp_path / "gone", *args)


def test_split_inputs_reads_the_split_evenly_spaced(tiny_classifier, tmp_path):
    data = generate_dataset(tmp_path / "data", n_per_class=3, size=SIZE, seed=0, classes=("COVID", "Normal"))
    rows = [SplitRow(str(p.relative_to(data)), p.parent.name, "train" if i % 3 else "val", p.stem)
            for i, p in enumerate(sorted(data.rglob("*.png")))]
    (tmp_path / "run").mkdir()
    write_csv(tmp_path / "run" / "split.csv", ["path", "label", "split", "group"],
              [[r.path, r.label, r.split, r.group] for r in rows])
    ckpt = tmp_path / "run" / "checkpoints" / "best.pt"
    got = int8.split_inputs(ckpt, data, ["COVID", "Normal"], tiny_classifier().preprocessing, "train", 3)
    assert got.x.shape == (3, 3, SIZE, SIZE) and set(np.unique(got.y)) <= {0, 1}


def test_a_multilabel_run_is_refused_with_the_labels_named(tiny_classifier, tmp_path):
    """Macro-F1 of the argmax says nothing about findings: a split.csv of 'A|B' labels is refused."""
    data = generate_dataset(tmp_path / "data", n_per_class=2, size=SIZE, seed=0, classes=("COVID", "Normal"))
    (tmp_path / "run").mkdir()
    write_csv(tmp_path / "run" / "split.csv", ["path", "label", "split", "group"],
              [[str(p.relative_to(data)), label, "train", p.stem]
               for p, label in zip(sorted(data.rglob("*.png")), ["COVID", "COVID|Normal", "No Finding", "COVID"],
                                   strict=False)])
    ckpt = tmp_path / "run" / "checkpoints" / "best.pt"
    with pytest.raises(CxrError, match=r"not classes \(COVID\|Normal, No Finding\): a multi-label run"):
        int8.split_inputs(ckpt, data, ["COVID", "Normal"], tiny_classifier().preprocessing, "train", 3)
