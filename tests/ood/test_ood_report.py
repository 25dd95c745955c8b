"""The report's out-of-distribution section: the share flagged on the test split and each external set."""

from __future__ import annotations

from pathlib import Path

from cxr.report.blocks import Table
from cxr.report.runfiles import read_run
from cxr.report.sections.ood import ood
from cxr.rundir import write_json


def test_section_lists_the_share_flagged_on_each_set(tmp_path: Path) -> None:
    entry = {"n": 200, "flagged": 9, "share": 0.045, "image_checks": 1, "detector": 8, "method": "mahalanobis",
             "reasons": {"near-constant image": 1}}
    foreign = {"n": 50, "flagged": 30, "share": 0.6, "image_checks": 0, "detector": 30, "method": "mahalanobis",
               "reasons": {}}
    write_json(tmp_path / "metrics.json", {"test": {"accuracy": 0.9, "ood": entry},
                                           "external": {"sets": {"hospB": {"metrics": {"accuracy": 0.5},
                                                                           "ood": foreign}}}})
    (table,) = [b for b in ood(read_run(tmp_path)) if isinstance(b, Table)]
    assert table.rows[0][:4] == ("Internal test", "200", "9", "4.5%")
    assert table.rows[1][0] == "External: hospB" and table.rows[1][3] == "60.0%"
    assert "near-constant image 1" in table.rows[0][6]


def test_no_section_without_ood_entries(tmp_path: Path) -> None:
    write_json(tmp_path / "metrics.json", {"test": {"accuracy": 0.9}})
    assert ood(read_run(tmp_path)) == []
