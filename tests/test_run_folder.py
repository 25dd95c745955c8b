"""Run folders that survive misuse: one writer at a time, nothing overwritten or mixed, resumes that fit,
normal file modes, provenance and wall time across a resume, unreadable images skipped and named."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxr import study
from cxr.config import RunConfig
from cxr.data.discover import discover
from cxr.data.synthetic import generate_dataset
from cxr.errors import CxrError
from cxr.rundir import RUN_MARKER, RunDir, RunLock
from cxr.training.extract import TEMP_PREFIX, remove_stale_temps

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(epochs: int = 1) -> RunConfig:
    cfg = RunConfig(name="tiny")
    cfg.data.image_size = 32
    cfg.data.num_workers = 0
    cfg.model.backbone = "efficientnet_lite0"
    cfg.model.weights = "random"  # the seed's default (ImageNet) needs a download
    cfg.model.head = (8,)
    cfg.train.epochs = epochs
    cfg.train.batch_size = 8
    cfg.train.feature_cache = False
    cfg.eval.bootstrap = 10
    cfg.eval.aug_samples = 1
    cfg.eval.grid_per_class = 1
    return cfg


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("folder") / "data", n_per_class=6, size=40, seed=0)


def test_the_lock_admits_one_writer_and_names_the_holder(tmp_path):
    run = RunDir(tmp_path)
    with RunLock(run):
        with pytest.raises(CxrError, match=rf"in use by another cxr process \(pid {os.getpid()} on "):
            RunLock(run).acquire()
    with RunLock(run):  # released: free again
        pass


def test_a_claimed_folder_refuses_a_second_claim_and_stays_whole(data, tmp_path):
    run = RunDir(tmp_path / "run")
    with study.folder.claim(tiny_config(), data, run, resume=False, force=False):
        (run.root / "config.yaml").write_text("name: first\n")
        with pytest.raises(CxrError, match="in use by another cxr process"):
            with study.folder.claim(tiny_config(), data, run, resume=False, force=False):
                pass
        assert (run.root / "config.yaml").read_text() == "name: first\n"


@pytest.mark.slow
def test_two_concurrent_runs_on_one_folder_one_refuses_the_other_completes(data, tmp_path):
    out = tmp_path / "shared"
    config = tmp_path / "tiny.yaml"
    import yaml

    from cxr.config import to_dict

    config.write_text(yaml.safe_dump(to_dict(tiny_config(epochs=2))))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "cxr", "run", "--data", str(data), "--config", str(config), "--out", str(out)]
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out / "config.yaml").is_file() and time.monotonic() < deadline:
        time.sleep(0.1)
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert second.returncode == 2
    assert "in use by another cxr process" in second.stderr and "Traceback" not in second.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_run"] == 2 and len(metrics["provenance"]["attempts"]) == 1
    assert stdout.strip().splitlines()[-1].endswith("report.html")


def test_any_run_file_protects_a_folder_and_force_replaces_only_run_files(data, tmp_path):
    run = RunDir(tmp_path / "old")
    run.best.parent.mkdir(parents=True)
    run.best.write_bytes(b"not mine to overwrite")  # best.pt without last.pt
    (run.root / "notes.txt").write_text("keep me")
    with pytest.raises(CxrError, match="already holds a run .*--force"):
        with study.folder.claim(tiny_config(), data, run, resume=False, force=False):
            pass
    assert run.best.read_bytes() == b"not mine to overwrite"
    with study.folder.claim(tiny_config(), data, run, resume=False, force=True):
        assert not run.best.exists()
    assert (run.root / "notes.txt").read_text() == "keep me"


def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_folder(tmp_path):
    lonely = generate_dataset(tmp_path / "lonely", n_per_class=1, size=32, seed=0)  # too few for a val split
    out = tmp_path / "never"
    with pytest.raises(CxrError, match="split is empty"):
        study.run_study(tiny_config(), lonely, out, progress=False)
    assert not out.exists()


@pytest.fixture(scope="module")
def resumable(data, tmp_path_factory) -> Path:
    """A one-epoch training run, resumed to two epochs by a full study (the resume tests inspect it)."""
    out = tmp_path_factory.mktemp("resume") / "run"
    torch.set_num_threads(1)
    study.train(tiny_config(epochs=1), data, out, progress=False)
    return out


def test_resume_with_other_data_or_settings_is_refused_before_anything_is_written(resumable, tmp_path):
    before = {p: p.read_bytes() for p in (resumable / "config.yaml", resumable / "log.txt")}
    other = generate_dataset(tmp_path / "other", n_per_class=6, size=40, seed=1)
    with pytest.raises(CxrError, match="was trained on .* not on"):
        study.run_study(tiny_config(epochs=2), other, resumable, resume=True, progress=False)
    changed = tiny_config(epochs=2)
    changed.train.lr = 0.5
    with pytest.raises(CxrError, match=r"other settings \(train.lr: 0.0001 -> 0.5\)"):
        study.run_study(changed, _data_of(resumable), resumable, resume=True, progress=False)
    assert {p: p.read_bytes() for p in before} == before


def _data_of(run: Path) -> Path:
    import yaml

    return Path(yaml.safe_load((run / "config.yaml").read_text())["data"]["root"])


def test_resume_refuses_images_that_are_gone(resumable, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(_data_of(resumable), copy)
    victim = next(copy.glob("COVID/*.png"))
    victim.unlink()
    from cxr.study.folder import check_resume

    cfg = tiny_config(epochs=2)
    cfg.data.root = str(copy)
    saved = (resumable / "config.yaml").read_text()
    (resumable / "config.yaml").write_text(saved.replace(str(_data_of(resumable)), str(copy)))
    try:
        with pytest.raises(CxrError, match="1 image\\(s\\) of the run's split are missing"):
            check_resume(cfg, copy, RunDir(resumable))
    finally:
        (resumable / "config.yaml").write_text(saved)


@pytest.mark.slow
def test_a_resumed_study_keeps_split_report_provenance_and_wall_time(resumable):
    first = json.loads((resumable / "provenance.json").read_text())
    assert len(first["attempts"]) == 1 and first["attempts"][0]["seconds"] > 0
    study.run_study(tiny_config(epochs=2), _data_of(resumable), resumable, resume=True, progress=False)
    metrics = json.loads((resumable / "metrics.json").read_text())
    assert metrics["split_report"] is not None and metrics["split_report"]["n_rows"] == 24
    attempts = metrics["provenance"]["attempts"]
    assert len(attempts) == 2 and attempts[0]["started"] == first["attempts"][0]["started"]
    assert metrics["wall_seconds"] == pytest.approx(sum(a["seconds"] for a in attempts), rel=0.05)
    assert metrics["wall_seconds"] > attempts[1]["seconds"]
    assert metrics["provenance"]["data"]["split_sha256"]
    assert {"python", "cxr", "torch"} <= set(attempts[1]["versions"])
    for path in (resumable / "checkpoints" / "last.pt", resumable / "history.csv", resumable / "metrics.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask(), path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_run_inside_its_data_folder_is_not_a_class(tmp_path):
    data = generate_dataset(tmp_path / "data", n_per_class=3, size=32, seed=0)
    run = RunDir(data / "runs" / "inside")
    run.root.mkdir(parents=True)
    run.marker.write_text("")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(run.root / "figure.png")
    assert "runs" not in discover(data).classes and RUN_MARKER == ".cxr-run"


def test_discovery_skips_symlink_loops_and_unreadable_folders(tmp_path, caplog):
    data = generate_dataset(tmp_path / "data", n_per_class=2, size=32, seed=0)
    (data / "COVID" / "loop").symlink_to(data / "COVID", target_is_directory=True)
    locked = data / "Normal" / "locked"
    locked.mkdir()
    locked.chmod(0)
    caplog.set_level(logging.WARNING, logger="cxr")
    try:
        found = discover(data)
    finally:
        locked.chmod(0o755)
    assert found.counts()["COVID"] == 2
    assert "symbolic link back" in caplog.text
    if os.geteuid() != 0:  # root reads every folder
        assert "cannot read it" in caplog.text


def test_a_class_too_small_for_every_split_is_a_warning(tmp_path, caplog):
    data = generate_dataset(tmp_path / "data", n_per_class=6, size=32, seed=0,
                            classes=("COVID", "Normal", "Viral_Pneumonia"))
    generate_dataset(tmp_path / "data", n_per_class=1, size=32, seed=5, classes=("Lung_Opacity",))
    caplog.set_level(logging.WARNING, logger="cxr")
    prepared = study.data.prepare_data(tiny_config(), data, RunDir(tmp_path / "run"), progress=False)
    assert "Lung_Opacity" in prepared.classes
    assert "class 'Lung_Opacity' has 1 image(s): none in the val and test split" in caplog.text


def test_stale_feature_cache_temps_are_removed_and_live_ones_kept(tmp_path):
    import socket

    host = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{TEMP_PREFIX}abc-{host}.{dead.pid}-x1"
    live = tmp_path / f"{TEMP_PREFIX}abc-{host}.{os.getpid()}-x2"
    foreign_old = tmp_path / f"{TEMP_PREFIX}abc-elsewhere.1-x3"
    for folder in (stale, live, foreign_old):
        folder.mkdir()
    os.utime(foreign_old, (0, 0))
    removed = remove_stale_temps(tmp_path)
    assert sorted(removed) == sorted([stale, foreign_old]) and live.is_dir()


@pytest.mark.slow
def test_evaluating_a_folder_with_an_unreadable_image_skips_and_names_it(resumable, tmp_path, caplog):
    import shutil

    copy = tmp_path / "with-bad"
    shutil.copytree(_data_of(resumable), copy)
    (copy / "Normal" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    caplog.set_level(logging.WARNING, logger="cxr")
    metrics = study.evaluate_checkpoint(resumable / "checkpoints" / "best.pt", copy, "all", out_dir=tmp_path / "ev",
                                        progress=False)
    assert metrics["n"] == 24
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert [s["path"] for s in saved["skipped"]] == ["Normal/broken.png"]
    assert "broken.png" in caplog.text
    assert len((tmp_path / "ev" / "predictions.csv").read_text().splitlines()) == 25
