"""cxr.cli.table: a printed table reads back cell for cell (shlex.split), whatever the cells hold."""

from __future__ import annotations

import shlex

import pytest

from cxr.cli.table import quote_cell, table_lines


@pytest.mark.parametrize(("cell", "shown"), [
    ("COVID", "COVID"),
    ("Effusion|Mass", "Effusion|Mass"),
    ("(threshold)", "(threshold)"),
    ("No Finding", '"No Finding"'),
    ("", '""'),
    ('say "hi"', '"say \\"hi\\""'),
    ("it's", '"it\'s"'),
    ("a\\b", '"a\\\\b"'),
])
def test_cells_with_spaces_or_quotes_are_quoted(cell: str, shown: str) -> None:
    assert quote_cell(cell) == shown
    assert shlex.split(quote_cell(cell)) == [cell]


def test_every_line_reads_back_cell_for_cell() -> None:
    header = ["path", "findings", "Mass", "No Finding"]
    rows = [["/data/my scans/a.png", "No Finding", "0.1000", "0.9000"],
            ["b.png", "Effusion|Mass", "0.7000", ""],
            ["c d.png", "it's \"odd\"", "1", "0"]]
    lines = table_lines(header, rows)
    assert [shlex.split(line) for line in lines] == [header, *rows]
    assert lines[1].startswith('"/data/my scans/a.png"  "No Finding"')
    starts = {lines[0].index("findings"), lines[1].index('"No Finding"'), lines[2].index("Effusion|Mass")}
    assert len(starts) == 1 and not any(line.endswith(" ") for line in lines)  # columns aligned
