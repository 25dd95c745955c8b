"""`--force` for folders that hold a run, and every result printed once on the console."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from cxr import study
from cxr.cli import main, setup_logging
from cxr.config import ModelConfig, RunConfig
from cxr.data.synthetic import generate_dataset
from cxr.errors import CxrError
from cxr.logs import RESULT
from cxr.rundir import RunDir
from cxr.study import demo as demo_module
from cxr.study.folder import claim

RANDOM = RunConfig(model=ModelConfig(weights="random"))  # the seed's ImageNet weights would need a download


pytestmark = pytest.mark.usefixtures("one_thread")  # the `cxr` logger is restored by conftest


def _fake_run(root: Path) -> list[Path]:
    """A folder holding a finished run's outputs, the demo's data/ and a file of the user's."""
    run = RunDir(root)
    for path in (run.last, run.best, run.config, run.split, run.audit, run.history, run.metrics, run.predictions,
                 run.report_md, run.report_html, run.log, run.figures / "roc.png", run.aug_images / "aug_0.png"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    kept = [root / "notes.txt", root / "data" / "COVID" / "a.png"]
    for path in kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"mine")
    return kept


def test_clear_removes_the_run_outputs_and_nothing_else(tmp_path):
    kept = _fake_run(tmp_path / "run")
    removed = RunDir(tmp_path / "run").clear()
    assert {p.name for p in removed} == {"checkpoints", "history.csv", "metrics.json", "predictions.csv", "split.csv",
                                         "audit.json", "config.yaml", "report.md", "report.html", "figures",
                                         "aug_images", "log.txt"}  # provenance/split_report: absent here
    assert sorted(p.relative_to(tmp_path / "run").as_posix() for p in (tmp_path / "run").rglob("*")
                  if p.is_file()) == ["data/COVID/a.png", "notes.txt"]
    assert all(p.read_bytes() == b"mine" for p in kept)
    assert RunDir(tmp_path / "run").clear() == []


def test_start_refuses_a_run_folder_unless_forced(tmp_path):
    out = tmp_path / "run"
    kept = _fake_run(out)
    data = tmp_path / "images"
    data.mkdir()
    with pytest.raises(CxrError, match="already holds a run.*--resume.*--force"):
        with claim(RANDOM, data, RunDir(out), resume=False, force=False):
            pass
    with pytest.raises(CxrError, match="--resume.*--force"):
        with claim(RANDOM, data, RunDir(out), resume=True, force=True):
            pass
    with claim(RANDOM, data, RunDir(out), resume=False, force=True) as cfg:
        assert cfg.data.root == str(data.resolve())
    assert not RunDir(out).artefacts() and not RunDir(out).checkpoints.exists()
    assert all(p.is_file() for p in kept)


def test_a_refused_resume_creates_no_folder(tmp_path):
    with pytest.raises(CxrError, match="cannot resume"):
        with claim(RANDOM, tmp_path, RunDir(tmp_path / "new"), resume=True, force=False):
            pass
    assert not (tmp_path / "new").exists()


def test_demo_is_refused_a_second_time_unless_forced(tmp_path, monkeypatch):
    out = tmp_path / "demo"
    kept = _fake_run(out)
    with pytest.raises(CxrError, match="already holds a run .*--force"):
        study.run_demo(out, n_per_class=1)
    calls = []
    monkeypatch.setattr(demo_module, "run_study", lambda cfg, data, out_dir, **kw: calls.append((data, kw)) or out_dir)
    study.run_demo(out, n_per_class=1, force=True)
    assert calls[0][0] == out / "data" and calls[0][1]["force"] is True
    assert kept[0].is_file()  # the user's file; clearing itself happens in run_study's start


def test_cli_passes_force(tmp_path, monkeypatch, capsys):
    seen = {}

    def fake(name):
        def run(cfg, data, out, **kw):
            seen[name] = kw["force"]
            return study.StudyResult(Path(out))
        return run

    monkeypatch.setattr(study, "run_study", fake("run"))
    monkeypatch.setattr(study, "train", fake("train"))
    monkeypatch.setattr(study, "run_demo",
                        lambda out, **kw: seen.setdefault("demo", kw["force"]) and study.StudyResult(Path(out)))
    assert main(["run", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--force"]) == 0
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "t")]) == 0
    assert main(["demo", "--out", str(tmp_path / "d"), "--force"]) == 0
    assert seen == {"run": True, "train": False, "demo": True}
    assert capsys.readouterr().out.splitlines()[0] == str(tmp_path / "r" / "report.html")


def test_result_records_reach_the_run_log_but_not_the_console(tmp_path, capsys):
    setup_logging()
    log = logging.getLogger("cxr.study")
    with study.logfile.run_log(tmp_path):
        log.info("report: %s", "x.html", extra=RESULT)
        log.info("an ordinary line")
    err = capsys.readouterr().err
    assert "an ordinary line" in err and "report:" not in err
    text = (tmp_path / "log.txt").read_text()
    assert "report: x.html" in text and "an ordinary line" in text


@pytest.mark.slow
def test_run_prints_each_result_once_and_force_replaces_the_run(tmp_path, capsys):
    data = generate_dataset(tmp_path / "data", n_per_class=6, size=32, seed=3)
    out = tmp_path / "run"
    argv = ["run", "--data", str(data), "--out", str(out), "--backbone", "efficientnet_lite0", "--weights", "random",
            "--epochs", "1",
            "--batch-size", "8", "--no-feature-cache", "--set", "data.image_size=32", "--set", "data.num_workers=0",
            "--set", "model.head=[8]", "--set", "eval.bootstrap=5", "--set", "eval.aug_samples=1",
            "--set", "eval.grid_per_class=1"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    console = (captured.out + captured.err).splitlines()
    assert captured.out.splitlines()[-1] == str(out / "report.html")
    assert sum("report.html" in line for line in console) == 1, console
    assert sum("accuracy" in line and "shortcut audit" not in line for line in console) == 1, console
    log_text = (out / "log.txt").read_text()
    assert "report: " in log_text and "test: accuracy" in log_text  # the run log stays complete

    (out / "notes.txt").write_text("mine")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--force" in err and "--resume" in err
    assert main([*argv, "--force"]) == 0
    capsys.readouterr()
    assert (out / "notes.txt").read_text() == "mine" and (out / "report.html").is_file()


def test_force_never_deletes_the_split_it_is_asked_to_train_on(tmp_path):
    out = tmp_path / "run"
    _fake_run(out)
    with pytest.raises(CxrError, match="--force would delete .*split.csv"):
        study.train(RunConfig(), tmp_path, out, force=True, split_csv=out / "split.csv")
    assert (out / "split.csv").is_file()
