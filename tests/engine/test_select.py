"""`auto`: the fastest installed engine, measured once per machine and key, then read from engines.json."""

from __future__ import annotations

import json

import pytest
import torch

from cxr.engine import select
from cxr.engine.base import installed
from cxr.engine.parity import synthetic_inputs
from cxr.engine.select import AUTO_MEASURE_MIN_IMAGES, AUTO_MIN_IMAGES, EngineSpec, select_engine
from cxr.models.build import Classifier, apply_freeze
from cxr.models.head import Head
from cxr.transforms import Preprocessing


class Backbone(torch.nn.Module):
    num_features = 8

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, self.num_features, 3, stride=4, padding=1)
        self.stages = [self.conv]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


@pytest.fixture()
def model() -> Classifier:
    torch.manual_seed(0)
    net = Classifier(Backbone(), Head(Backbone.num_features, (4,), 2), Preprocessing("half", 32))
    return apply_freeze(net, "base").eval()


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path))
    return tmp_path / select.CHOICES_FILE


@pytest.fixture()
def timed(monkeypatch):
    """Replaces the timing with fixed speeds (openvino fastest) and records what was measured."""
    measured: list[str] = []
    speeds = {"openvino": 300.0, "onnxruntime": 200.0, "torch": 100.0}

    def fake(engine, batch, **_):
        measured.append(engine.name)
        assert batch.shape[0] == 4  # measured at the real batch size
        return speeds[engine.name]

    monkeypatch.setattr(select, "measure", fake)
    return measured


def installed_engines() -> list[str]:
    return [name for name in select.AUTO_ORDER if installed(name)]


def test_a_second_call_measures_nothing_and_a_changed_key_measures_again(model, cache, timed):
    spec = EngineSpec("features", batch_size=4, threads=1, channels_last=False)
    first = select_engine("auto", model, spec)
    assert sorted(timed) == sorted(installed_engines())  # every installed engine timed once
    assert first.name == installed_engines()[0]  # the fastest of the fake speeds
    record = next(iter(json.loads(cache.read_text())["choices"].values()))
    assert record["engine"] == first.name and set(record["images_per_s"]) == set(installed_engines())
    assert record["key"]["batch_size"] == 4 and record["key"]["size"] == 32 and "loadavg" in record

    timed.clear()
    again = select_engine("auto", model, spec)
    assert timed == [] and again.name == first.name

    select_engine("auto", model, EngineSpec("features", batch_size=4, threads=1, channels_last=False,
                                            precision="bf16"))
    assert sorted(timed) == sorted(installed_engines())  # another precision: another key
    assert len(json.loads(cache.read_text())["choices"]) == 2


def test_small_jobs_and_unusable_caches_fall_back_without_harm(model, cache, timed):
    spec = EngineSpec("logits", batch_size=4, threads=1, channels_last=False)
    assert select_engine("auto", model, spec, images=AUTO_MIN_IMAGES - 1).name == "torch"
    assert timed == [] and not cache.exists()  # a small job measures nothing
    assert select_engine("auto", model, spec, images=AUTO_MEASURE_MIN_IMAGES - 1).name == "torch"
    assert timed == [] and not cache.exists()  # nor does a mid-sized one that finds no choice: it would not repay
    chosen = select_engine("auto", model, spec, images=AUTO_MEASURE_MIN_IMAGES)
    assert sorted(timed) == sorted(installed_engines())  # a large job measures, once
    timed.clear()
    assert select_engine("auto", model, spec, images=AUTO_MIN_IMAGES).name == chosen.name and timed == []
    cache.unlink()
    cache.write_text("{not json")
    assert select_engine("auto", model, spec, sample=synthetic_inputs(model.preprocessing, 3)).name
    assert timed  # a corrupt file counts as empty: measured, and the file rewritten
    assert json.loads(cache.read_text())["format"] == select.CHOICES_FORMAT


def test_a_failing_engine_is_skipped(model, cache, timed, monkeypatch):
    original = select.build_engine

    def failing(name, *args, **kwargs):
        if name != "torch":
            raise select.CxrError(f"{name} broke")
        return original(name, *args, **kwargs)

    monkeypatch.setattr(select, "build_engine", failing)
    chosen = select_engine("auto", model, EngineSpec("logits", batch_size=4, threads=1, channels_last=False))
    assert chosen.name == "torch" and timed == ["torch"]


def test_the_key_names_the_machine_model_and_settings(model):
    key = select.choice_key(model, EngineSpec("logits", batch_size=8, threads=2), 32)
    assert {"cpu", "flags", "cores", "versions", "backbone", "size", "batch_size", "precision",
            "hint", "output"} <= set(key)
    assert "threads" not in key  # it follows the load: a key holding it missed, and measured, again and again
    assert select.choice_key(model, EngineSpec("logits", batch_size=8, threads=1), 32) == key
    assert key["versions"]["torch"] == torch.__version__.split("+")[0]
