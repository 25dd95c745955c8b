"""cxr.report.runfiles: the tolerant run-folder reader (missing and corrupt files become reasons)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cxr.report.runfiles import read_run
from cxr.rundir import RunDir, SplitRow, write_history_csv, write_json, write_split_csv

SPLIT = [
    SplitRow("COVID/a.png", "COVID", "train", "0"),
    SplitRow("COVID/b.png", "COVID", "train", "1"),
    SplitRow("COVID/c.png", "COVID", "test", "2"),
    SplitRow("Normal/d.png", "Normal", "val", "3"),
]


def test_empty_folder_gives_reasons_not_errors(tmp_path: Path) -> None:
    files = read_run(tmp_path)
    assert files.config is None and files.metrics is None and files.history is None
    assert files.split_counts is None and files.split_counts_source is None
    assert files.figures == {} and files.aug_images == []
    run = RunDir(tmp_path)
    for path in (run.config, run.metrics, run.history, run.split):
        assert files.problems[path.name] == f"{path.name} is missing from the run directory"


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("config.yaml", b"a: [unclosed\n", "config.yaml is not valid"),
        ("config.yaml", b"- just\n- a list\n", "config.yaml does not hold a mapping"),
        ("config.yaml", b"name: \xff\xfe\n", "config.yaml could not be read"),
        ("metrics.json", b"{not json", "metrics.json is not valid"),
        ("metrics.json", b"[1, 2]", "metrics.json does not hold a mapping"),
        ("history.csv", b"epoch,lr\n1,fast\n", "history.csv holds a cell that is not a number"),
        ("split.csv", b"path,label\nx.png,COVID\n", "lacks column(s) split, group"),
        ("split.csv", b"path,label,split,group\nx.png,COVID,holdout,0\n", "line 2: split 'holdout'"),
    ],
)
def test_corrupt_file_is_recorded_with_its_reason(tmp_path: Path, name: str, content: bytes, reason: str) -> None:
    (tmp_path / name).write_bytes(content)
    files = read_run(tmp_path)
    assert reason in files.problems[name]
    attribute = {"config.yaml": "config", "metrics.json": "metrics", "history.csv": "history",
                 "split.csv": "split_counts"}[name]
    assert getattr(files, attribute) is None


def test_history_is_parsed_as_numbers_in_file_order(tmp_path: Path) -> None:
    write_history_csv([{"epoch": 1, "lr": 1e-3, "train_loss": 0.9, "phase": 1},
                       {"epoch": 2, "lr": 5e-4, "train_loss": 0.7, "phase": 2}], tmp_path / "history.csv")
    files = read_run(tmp_path)
    assert files.history == [{"epoch": 1, "lr": 1e-3, "train_loss": 0.9, "phase": 1},
                             {"epoch": 2, "lr": 5e-4, "train_loss": 0.7, "phase": 2}]
    assert isinstance(files.history[0]["epoch"], int) and isinstance(files.history[1]["phase"], int)
    assert files.history_columns[:2] == ["epoch", "lr"] and files.history_columns[-1] == "phase"


def test_split_counts_from_split_csv_are_split_class_n(tmp_path: Path) -> None:
    write_split_csv(SPLIT, tmp_path / "split.csv")
    files = read_run(tmp_path)
    assert files.split_counts == {"train": {"COVID": 2}, "val": {"Normal": 1}, "test": {"COVID": 1}}
    assert files.split_counts_source == "split.csv"


def test_split_counts_fall_back_to_metrics_json(tmp_path: Path) -> None:
    write_split_csv(SPLIT, tmp_path / "split.csv")
    (tmp_path / "split.csv").write_text("path,label,split,group\nx.png,COVID,holdout,0\n")  # unusable
    write_json(tmp_path / "metrics.json", {"split_counts": {"train": {"COVID": 5}, "test": {"Normal": 2}}})
    files = read_run(tmp_path)
    assert files.split_counts == {"train": {"COVID": 5}, "val": {}, "test": {"Normal": 2}}
    assert files.split_counts_source == "metrics.json"
    assert "holdout" in files.problems["split.csv"]


def test_split_counts_in_class_split_orientation_are_refused(tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text(json.dumps({"split_counts": {"COVID": {"train": 5, "test": 1}}}))
    files = read_run(tmp_path)
    assert files.split_counts is None
    assert "not split -> class -> images" in files.problems["split_counts"]
    assert files.metrics is not None  # the rest of metrics.json is still used


def test_figures_and_aug_images_are_found(tmp_path: Path) -> None:
    for rel in ("figures/roc.png", "figures/notes.txt", "aug_images/a_1.png"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    files = read_run(tmp_path)
    assert list(files.figures) == ["roc"] and files.rel(files.figures["roc"]) == "figures/roc.png"
    assert [files.rel(p) for p in files.aug_images] == ["aug_images/a_1.png"]
