"""cxr.checkpoint: a file that is not a usable checkpoint is one clear CxrError naming it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cxr.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from cxr.cli import main
from cxr.config import ModelConfig, RunConfig
from cxr.data.synthetic import CLASSES
from cxr.errors import CxrError
from cxr.models.build import build_model
from cxr.predict import Predictor
from cxr.transforms import Preprocessing

UNSAFE_ADVICE = "weights_only"  # PyTorch's suggestion to load the file unsafely must never reach the user


@pytest.fixture(scope="module")
def model_cfg() -> ModelConfig:
    return ModelConfig(backbone="efficientnet_lite0", weights="random", head=(16,), freeze="none")


@pytest.fixture(scope="module")
def good(tmp_path_factory, model_cfg) -> Path:
    model = build_model(model_cfg, num_classes=len(CLASSES), load_weights=False)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "good.pt", model=model, config=RunConfig(model=model_cfg),
                           classes=list(CLASSES), preprocessing=Preprocessing("half", 32), epoch=1)


def _error(path: Path, load=load_checkpoint) -> str:
    with pytest.raises(CxrError) as info:
        load(path)
    message = str(info.value)
    assert str(path) in message and UNSAFE_ADVICE not in message and "\n" not in message
    return message


def test_not_a_checkpoint_says_what_it_is_not(tmp_path, good):
    (tmp_path / "notes.pt").write_text("these are my notes\n")
    assert "not a PyTorch file" in _error(tmp_path / "notes.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    assert "empty (0 bytes)" in _error(tmp_path / "empty.pt")
    data = good.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    assert "damaged or truncated" in _error(tmp_path / "cut.pt")
    torch.save({"weights": np.zeros(3)}, tmp_path / "numpy.pt")  # loadable only by unpickling code
    assert "Python objects other than tensors" in _error(tmp_path / "numpy.pt")
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    assert "expected format 'cxr-checkpoint/1'" in _error(tmp_path / "other.pt")


def test_missing_keys_and_bad_classes(tmp_path, good):
    ckpt = torch.load(good, weights_only=True)
    torch.save({k: v for k, v in ckpt.items() if k != "classes"}, tmp_path / "nocls.pt")
    assert "missing 'classes'" in _error(tmp_path / "nocls.pt")
    torch.save({**ckpt, "classes": ["a", "a"]}, tmp_path / "dup.pt")
    assert "distinct names" in _error(tmp_path / "dup.pt")


@pytest.mark.parametrize("size", [100_000, 8, "224"])
def test_absurd_preprocessing_size_refused_at_load(tmp_path, good, size):
    ckpt = torch.load(good, weights_only=True)
    torch.save({**ckpt, "preprocessing": {"mode": "half", "size": size}}, tmp_path / "size.pt")
    message = _error(tmp_path / "size.pt")
    assert repr(size) in message and "16..4096" in message


def test_head_that_does_not_match_the_classes(tmp_path, model_cfg):
    model = build_model(model_cfg, num_classes=len(CLASSES), load_weights=False)
    path = save_checkpoint(tmp_path / "three.pt", model=model, config=RunConfig(model=model_cfg),
                           classes=list(CLASSES)[:3], preprocessing=Preprocessing("half", 32), epoch=1)
    message = _error(path, load=lambda p: Predictor.from_checkpoint(p, device="cpu"))
    assert "do not fit" in message and "3 classes" in message and "[4, 16]" in message and "[3, 16]" in message
    ckpt = load_checkpoint(path)
    with pytest.raises(CxrError, match="do not fit"):
        model_from_checkpoint(ckpt)
    state = dict(torch.load(path, weights_only=True))
    state["model"] = {k: v for k, v in state["model"].items() if not k.startswith("head")}
    torch.save(state, tmp_path / "nohead.pt")
    assert "missing" in _error(tmp_path / "nohead.pt", load=lambda p: Predictor.from_checkpoint(p, device="cpu"))


def test_cli_prints_one_line_without_traceback(tmp_path, capsys):
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    bad = str(tmp_path / "notes.pt")
    for argv in (["serve", bad, "--port", "8123"], ["predict", bad, str(image)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert "Traceback" not in err and UNSAFE_ADVICE not in err
        assert any("notes.pt is not a cxr checkpoint" in line for line in lines)
