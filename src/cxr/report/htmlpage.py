"""report.html: blocks rendered as one self-contained page (inline CSS, figures as PNG data URIs).

Named htmlpage, not html, so the standard library's `html` stays importable as plain `html`.
"""

from __future__ import annotations

import base64
import html
import logging
import re
from collections.abc import Sequence
from functools import singledispatch
from pathlib import Path

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

log = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1b1f24;
       max-width: 1100px; margin: 2rem auto; padding: 0 1.5rem; line-height: 1.5; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3rem; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2rem; margin-top: 2.2rem; }
.table-wrap { overflow-x: auto; margin: 1rem 0; }
table { border-collapse: collapse; font-size: .9rem; }
th, td { border: 1px solid #d0d7de; padding: .3rem .6rem; text-align: left; }
th { background: #f3f5f7; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #fafbfc; }
pre { background: #f6f8fa; padding: 1rem; overflow-x: auto; font-size: .85rem; }
code { background: #f0f2f4; padding: 0 .25rem; border-radius: 3px; }
figure { margin: 1.2rem 0; }
figure img { max-width: 100%; border: 1px solid #e1e4e8; }
figcaption { color: #57606a; font-size: .9rem; }
.gallery { display: flex; flex-wrap: wrap; gap: .4rem; }
.gallery img { border: 1px solid #e1e4e8; }
.gallery figure.thumb { margin: 0; text-align: center; }
.gallery figcaption { font-size: .8rem; }
.missing { color: #9a6700; }
"""
# Styles only some block kinds need, added to the page only when it holds such a block, so pages
# without them stay byte-identical as block kinds are added.
BLOCK_CSS: dict[type, str] = {
    Banner: """.banner { margin: 1rem 0; padding: .75rem 1rem; border-left: 5px solid; border-radius: 4px; }
.banner-note { background: #ddf4ff; border-color: #0969da; }
.banner-warning { background: #fff8c5; border-color: #bf8700; }
.banner-danger { background: #ffebe9; border-color: #cf222e; }
""",
}

_NUMBER = re.compile(r"^[-+]?\d[\d,]*(\.\d+)?(e[-+]?\d+)?$")


def data_uri(path: Path) -> str | None:
    """A PNG file as a data URI; None (with a warning) when it is unreadable or not a PNG."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        log.warning("report: cannot read %s: %s", path, exc)
        return None
    if not data.startswith(PNG_SIGNATURE):
        log.warning("report: %s is not a PNG file; not embedded", path)
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def html_inline(parts: Sequence[Inline]) -> str:
    """Inline parts as HTML, every text escaped."""
    out = []
    for part in parts:
        if isinstance(part, Code):
            out.append(f"<code>{html.escape(part.text)}</code>")
        elif isinstance(part, Bold):
            out.append(f"<strong>{html.escape(part.text)}</strong>")
        else:
            out.append(html.escape(part))
    return "".join(out)


def _html_img(img: Image, width: int | None = None) -> str:
    uri = data_uri(img.path)
    if uri is None:
        return f'<p class="missing">{html.escape(img.rel)}: not available (not a readable PNG).</p>'
    size = f' width="{width}"' if width else ""
    return f'<img src="{uri}" alt="{html.escape(img.caption)}" title="{html.escape(img.caption)}"{size}>'


@singledispatch
def html_block(block: Block) -> str:
    """One block as HTML; each block kind registers its own renderer below."""
    raise TypeError(f"no HTML renderer for block {block!r}")


@html_block.register
def _(block: Heading) -> str:
    anchor = re.sub(r"[^a-z0-9]+", "-", block.text.lower()).strip("-")
    return f'<h{block.level} id="{anchor}">{html.escape(block.text)}</h{block.level}>'


@html_block.register
def _(block: Para) -> str:
    cls = ' class="missing"' if block.missing else ""
    return f"<p{cls}>{html_inline(block.parts)}</p>"


def _html_cell(text: str) -> str:
    return f'<td class="num">{html.escape(text)}</td>' if _NUMBER.match(text) else f"<td>{html.escape(text)}</td>"


@html_block.register
def _(block: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in block.header)
    body = "".join("<tr>" + "".join(_html_cell(c) for c in row) + "</tr>" for row in block.rows)
    return f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


@html_block.register
def _(block: Pre) -> str:
    return f"<pre>{html.escape(block.text.rstrip())}</pre>"


@html_block.register
def _(block: Image) -> str:
    return f"<figure>{_html_img(block)}<figcaption>{html.escape(block.caption)}</figcaption></figure>"


@html_block.register
def _(block: Gallery) -> str:
    thumbs = "".join(f'<figure class="thumb">{_html_img(i, block.width)}<figcaption>{html.escape(i.caption)}'
                     "</figcaption></figure>" for i in block.images)
    return f'<div class="gallery">{thumbs}</div>'


@html_block.register
def _(block: Bullets) -> str:
    return "<ul>" + "".join(f"<li>{html_inline(i.parts)}</li>" for i in block.items) + "</ul>"


@html_block.register
def _(block: Banner) -> str:
    label = f"<strong>{html.escape(block.label)}:</strong> "
    return f'<div class="banner banner-{block.level}" role="note">{label}{html_inline(block.parts)}</div>'


def render_html(title: str, blocks: Sequence[Block]) -> str:
    """The whole report.html: one page with inline CSS and no external assets."""
    body = "\n".join(html_block(b) for b in blocks)
    kinds = {type(b) for b in blocks}
    css = CSS + "".join(style for kind, style in BLOCK_CSS.items() if kind in kinds)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{css}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )
