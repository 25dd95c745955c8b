"""cxr.report.markdown and cxr.report.htmlpage: every block kind renders; the banner in both formats."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxr.report.blocks import (
    BLOCK_TYPES,
    Banner,
    Bullets,
    Code,
    Gallery,
    Heading,
    Image,
    Para,
    Pre,
    Table,
    banner,
    para,
)
from cxr.report.htmlpage import html_block, render_html
from cxr.report.markdown import md_block, render_markdown


def _one_of_each(tmp_path: Path) -> list:
    img = Image(tmp_path / "x.png", "figures/x.png", "x")
    return [Heading(2, "h"), para("p"), Table(("a",), (("1",),)), Pre("t"), img, Gallery((img,)),
            Bullets((para("b"),)), banner("note", "n")]


def test_every_block_kind_has_both_renderers(tmp_path: Path) -> None:
    blocks = _one_of_each(tmp_path)
    assert {type(b) for b in blocks} == set(BLOCK_TYPES)
    for block in blocks:
        assert md_block(block) and html_block(block)


def test_unknown_block_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="no Markdown renderer"):
        md_block(object())
    with pytest.raises(TypeError, match="no HTML renderer"):
        html_block(object())


def test_banner_in_markdown_is_a_blockquote_with_a_bold_label() -> None:
    md = render_markdown([Heading(1, "t"), banner("warning", "Test split ", Code("a|b"), " leaks *groups*")])
    assert "\n\n> **Warning:** Test split `a|b` leaks \\*groups\\*\n" in md


def test_multiline_banner_stays_one_blockquote() -> None:
    assert md_block(banner("danger", "line one\nline two")) == "> **Danger:** line one\n> line two"


def test_banner_in_html_is_a_coloured_box_and_escaped() -> None:
    page = render_html("t", [Heading(1, "t"), banner("danger", "<b>bad</b> & ", Code("x"))])
    assert ('<div class="banner banner-danger" role="note"><strong>Danger:</strong> '
            "&lt;b&gt;bad&lt;/b&gt; &amp; <code>x</code></div>") in page
    assert ".banner-danger { background:" in page


def test_banner_styles_only_on_pages_with_a_banner() -> None:
    assert ".banner" not in render_html("t", [Heading(1, "t"), Para(("p",))])


def test_banner_level_is_checked() -> None:
    with pytest.raises(ValueError, match="'loud' is not one of note, warning, danger"):
        Banner("loud", ("x",))  # type: ignore[arg-type]
