"""cxr.report.sections: the dataset table in split -> class -> n, and adding sections or banners."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cxr.report.blocks import Banner, Code, Heading, Table, banner, para
from cxr.report.runfiles import read_run
from cxr.report.sections import SECTIONS, build_blocks
from cxr.report.sections.overview import dataset
from cxr.rundir import SplitRow, write_json, write_split_csv

CLASSES = ["COVID", "Lung_Opacity", "Normal"]


def _table(blocks: list) -> Table:
    (table,) = [b for b in blocks if isinstance(b, Table)]
    return table


def test_dataset_table_from_metrics_split_counts(tmp_path: Path) -> None:
    counts = {"train": {"COVID": 4, "Normal": 9, "Lung_Opacity": 0}, "val": {"COVID": 1, "Normal": 2},
              "test": {"Normal": 3, "Viral_Pneumonia": 1}}
    write_json(tmp_path / "metrics.json", {"classes": CLASSES, "split_counts": counts})
    blocks = dataset(read_run(tmp_path))
    assert para("Images per class and split (from ", Code("metrics.json"), ").") in blocks
    table = _table(blocks)
    assert table.header == ("Class", "train", "val", "test", "total")
    assert table.rows == (
        ("COVID", "4", "1", "0", "5"),
        ("Lung_Opacity", "0", "0", "0", "0"),
        ("Normal", "9", "2", "3", "14"),
        ("Viral_Pneumonia", "0", "0", "1", "1"),  # not in metrics classes: still shown, after them
        ("Total", "13", "3", "4", "20"),
    )


def test_dataset_table_from_split_csv(tmp_path: Path) -> None:
    rows = [SplitRow(f"{label}/{i}.png", label, split, str(i))
            for i, (label, split) in enumerate([("Normal", "train")] * 3 + [("COVID", "val"), ("COVID", "test")])]
    write_split_csv(rows, tmp_path / "split.csv")
    write_json(tmp_path / "metrics.json", {"classes": CLASSES})
    blocks = dataset(read_run(tmp_path))
    assert _table(blocks).rows == (
        ("COVID", "0", "1", "1", "2"),
        ("Lung_Opacity", "0", "0", "0", "0"),
        ("Normal", "3", "0", "0", "3"),
        ("Total", "3", "1", "1", "5"),
    )
    assert para("Images per class and split (from ", Code("split.csv"), ").") in blocks


def test_a_banner_section_lands_right_below_the_title(tmp_path: Path) -> None:
    def warn(files) -> list:
        return [banner("warning", "check me")] if files.metrics is None else []

    title, blocks = build_blocks(read_run(tmp_path), (warn, *SECTIONS))
    assert blocks[0] == Heading(1, title) and title == f"cxr report: {tmp_path.name}"
    assert isinstance(blocks[1], Banner) and blocks[1].parts == ("check me",)
    assert not any(isinstance(b, Banner) for b in build_blocks(read_run(tmp_path))[1])


def test_report_package_imports_no_torch_and_only_allowed_cxr_modules() -> None:
    # A fresh interpreter, so modules imported by other tests cannot hide an import.
    code = (
        "import sys, cxr.report.document\n"
        "allowed = ('cxr', 'cxr.errors', 'cxr.rundir', 'cxr.logs', 'cxr.report')\n"
        "figures = ('cxr.report.dataset_figures', 'cxr.report.result_figures')  # matplotlib, loaded lazily\n"
        "cxr = [m for m in sys.modules if m.split('.')[0] == 'cxr']\n"
        "bad = [m for m in cxr if m in figures or not any(m == a or m.startswith('cxr.report.') for a in allowed)]\n"
        "bad += [m for m in ('torch', 'numpy', 'matplotlib') if m in sys.modules]\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
