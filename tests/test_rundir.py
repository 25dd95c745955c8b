"""The run-folder contract: paths, atomic writers with normal file modes, split.csv and history.csv."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cxr import rundir
from cxr.errors import CxrError
from cxr.rundir import (
    HISTORY_COLUMNS,
    PHASE_COLUMN,
    RunDir,
    SplitRow,
    read_history_csv,
    read_json,
    read_split_csv,
    split_counts,
    write_history_csv,
    write_json,
    write_split_csv,
    write_text,
)


def test_paths_and_artefacts(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    assert run.best == tmp_path / "checkpoints" / "best.pt" and run.metrics == tmp_path / "metrics.json"
    assert run.artefacts() == [] and not run.checkpoints.exists()  # looking creates nothing
    write_text(run.config, "name: x\n")
    run.best.parent.mkdir()
    run.best.write_bytes(b"x")
    assert run.artefacts() == [run.config, run.best]
    assert RunDir.of_checkpoint(run.best) == RunDir(tmp_path.resolve())


def test_atomic_writers_use_the_umask_mode_and_leave_no_temp_file(tmp_path: Path) -> None:
    old = os.umask(0o022)
    rundir._file_mode.cache_clear()
    try:
        path = write_json(tmp_path / "a" / "m.json", {"x": 1})
    finally:
        os.umask(old)
        rundir._file_mode.cache_clear()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert read_json(path) == {"x": 1}
    assert [p.name for p in path.parent.iterdir()] == ["m.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = write_json(tmp_path / "m.json", {"old": True})
    with pytest.raises(TypeError):
        write_json(path, {"bad": object()})
    assert read_json(path) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_read_json_names_bad_files(tmp_path: Path) -> None:
    with pytest.raises(CxrError, match="not found"):
        read_json(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(CxrError, match="bad.json is not readable JSON"):
        read_json(tmp_path / "bad.json")


def test_split_csv_round_trip_and_counts(tmp_path: Path) -> None:
    rows = [SplitRow("a.png", "A", "train", "g1"), SplitRow("b.png", "B", "test", "g2")]
    path = write_split_csv(rows, tmp_path / "split.csv")
    assert path.read_bytes() == b"path,label,split,group\na.png,A,train,g1\nb.png,B,test,g2\n"
    assert read_split_csv(path) == rows
    assert split_counts(rows, ["A", "B"]) == {"train": {"A": 1, "B": 0}, "val": {"A": 0, "B": 0},
                                              "test": {"A": 0, "B": 1}}
    path.write_text("path,label,split,group\na.png,A,holdout,g\n")
    with pytest.raises(CxrError, match="line 2: split 'holdout'"):
        read_split_csv(path)


def test_history_round_trip(tmp_path: Path) -> None:
    row = {c: 0.5 for c in HISTORY_COLUMNS} | {"epoch": 1}
    path = write_history_csv([row, {**row, "epoch": 2, PHASE_COLUMN: 2}], tmp_path / "history.csv")
    back = read_history_csv(path)
    assert [r["epoch"] for r in back] == [1, 2] and [r[PHASE_COLUMN] for r in back] == [1, 2]
    assert isinstance(back[0]["epoch"], int) and back[0]["val_loss"] == 0.5
