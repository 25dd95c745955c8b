"""report.md: blocks rendered as GitHub-flavoured Markdown, figures linked relative to the run folder."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from functools import singledispatch
from pathlib import PurePosixPath
from urllib.parse import quote

from cxr.report.blocks import (
    Banner,
    Block,
    Bold,
    Bullets,
    Code,
    Gallery,
    Heading,
    Image,
    Inline,
    Para,
    Pre,
    Table,
)

_MD_SPECIAL = re.compile(r"([\\`*\[\]<>|]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))")


def md_escape(text: str) -> str:
    """Escape Markdown syntax characters so text shows literally (intra-word underscores are kept)."""
    return _MD_SPECIAL.sub(r"\\\1", text)


def md_inline(parts: Sequence[Inline]) -> str:
    """Inline parts as Markdown: code in backticks, bold in asterisks, text escaped."""
    out = []
    for part in parts:
        if isinstance(part, Code):
            fence = "``" if "`" in part.text else "`"
            out.append(f"{fence}{part.text}{fence}")
        elif isinstance(part, Bold):
            out.append(f"**{md_escape(part.text)}**")
        else:
            out.append(md_escape(part))
    return "".join(out)


def _md_cell(text: str) -> str:
    return md_escape(text.replace("\n", " "))


@singledispatch
def md_block(block: Block) -> str:
    """One block as Markdown; each block kind registers its own renderer below."""
    raise TypeError(f"no Markdown renderer for block {block!r}")


@md_block.register
def _(block: Heading) -> str:
    return f"{'#' * block.level} {md_escape(block.text)}"


@md_block.register
def _(block: Para) -> str:
    return md_inline(block.parts)


@md_block.register
def _(block: Table) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in block.header) + " |",
             "|" + "|".join(" --- " for _ in block.header) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
    return "\n".join(lines)


@md_block.register
def _(block: Pre) -> str:
    fence = "~~~~" if "```" in block.text else "```"
    return f"{fence}text\n{block.text.rstrip()}\n{fence}"


@md_block.register
def _(block: Image) -> str:
    caption = f"*{md_escape(block.caption)}*"
    svg = block.path.with_suffix(".svg")
    if block.path.suffix.lower() == ".png" and svg.is_file():  # result figures are also written as SVG
        caption += f" ([SVG]({quote(str(PurePosixPath(block.rel).with_suffix('.svg')))}))"
    return f"![{md_escape(block.caption)}]({quote(block.rel)})\n\n{caption}"


GALLERY_COLUMNS = 5  # thumbnails per row of a gallery in report.md


@md_block.register
def _(block: Gallery) -> str:
    # Markdown has no image width or caption; an inline HTML table keeps the thumbnails small and puts
    # each caption under its image, on GitHub and in editors.
    cells = [
        f'<td align="center"><img src="{html.escape(quote(img.rel))}" width="{block.width}" '
        f'alt="{html.escape(img.caption)}"/><br/>{html.escape(img.caption)}</td>'
        for img in block.images
    ]
    rows = ["<tr>" + "".join(cells[i : i + GALLERY_COLUMNS]) + "</tr>" for i in range(0, len(cells), GALLERY_COLUMNS)]
    return "<table>" + "".join(rows) + "</table>"


@md_block.register
def _(block: Bullets) -> str:
    return "\n".join(f"- {md_inline(item.parts)}" for item in block.items)


@md_block.register
def _(block: Banner) -> str:
    lines = md_inline(block.parts).splitlines() or [""]
    lines[0] = f"**{md_escape(block.label)}:** {lines[0]}".rstrip()
    return "\n".join(f"> {line}".rstrip() for line in lines)


def render_markdown(blocks: Sequence[Block]) -> str:
    """The whole report.md: blocks separated by blank lines."""
    return "\n\n".join(md_block(b) for b in blocks) + "\n"
