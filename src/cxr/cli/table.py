"""Plain-text tables that a person and a parser read the same way.

Columns are separated by two or more spaces; a cell that is empty or holds whitespace or a quote
is written in double quotes, shell-style (`"No Finding"`), so `shlex.split(line)` gives back every
cell of a line exactly, and a reader's eye sees one cell, not two.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_NEEDS_QUOTES = re.compile(r"""[\s"'\\]""")


def quote_cell(cell: str) -> str:
    """`cell` as written in a table: in double quotes (with `"` and `\\` escaped) when it is empty or holds
    whitespace or a quote; as it is otherwise."""
    if cell and not _NEEDS_QUOTES.search(cell):
        return cell
    return '"' + cell.replace("\\", "\\\\").replace('"', '\\"') + '"'


def table_lines(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """The header and rows as left-aligned lines (trailing spaces removed); cells quoted by `quote_cell`."""
    quoted = [[quote_cell(str(cell)) for cell in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in quoted) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in quoted]
