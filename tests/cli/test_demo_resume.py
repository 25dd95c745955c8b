"""`cxr demo --resume`: what `cxr demo` run twice tells the user to do works."""

from __future__ import annotations

from pathlib import Path

import pytest

import cxr.study
import cxr.study.demo as demo_module
from cxr.cli import main
from cxr.config import save_config
from cxr.data.synthetic import generate_dataset
from cxr.errors import CxrError
from cxr.study import demo_config


def test_demo_resume_continues_the_run_on_its_own_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict] = []
    monkeypatch.setattr(demo_module, "run_study", lambda cfg, data, out, **kw: calls.append({"data": data, **kw}))
    out = tmp_path / "demo"
    with pytest.raises(CxrError, match="cannot resume: .*last.pt does not exist"):
        cxr.study.run_demo(out, n_per_class=2, resume=True)
    generate_dataset(out / "data", n_per_class=3, size=32, seed=0)  # the first run's images (not 2 per class)
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "last.pt").write_bytes(b"")
    with pytest.raises(CxrError, match="use --resume to continue it"):
        cxr.study.run_demo(out, n_per_class=3)
    cxr.study.run_demo(out, n_per_class=2, resume=True)
    assert calls == [{"data": out / "data", "resume": True, "force": False, "cache_dir": None, "progress": True}]
    assert len(list((out / "data").glob("*/*.png"))) == 12  # kept, not regenerated


def test_cxr_demo_resume_uses_the_runs_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict = {}

    def fake_run_demo(out, **kw):
        seen.update(kw)
        raise CxrError("stop here")

    monkeypatch.setattr(cxr.study, "run_demo", fake_run_demo)
    out = tmp_path / "demo"
    out.mkdir()
    saved = demo_config()
    saved.data.task, saved.train.lr = "multilabel", 0.005
    save_config(saved, out / "config.yaml")
    assert main(["demo", "--out", str(out), "--resume", "--epochs", "9"]) == 2
    assert seen["resume"] is True and seen["task"] == "multilabel"
    assert seen["cfg"].train.lr == 0.005 and seen["cfg"].train.epochs == 9
