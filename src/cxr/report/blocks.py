"""The report's content as a short list of blocks, independent of the output format.

Sections build blocks; `markdown.py` and `htmlpage.py` render them, so report.md and report.html
always hold the same content. A new block kind is a frozen dataclass here, added to `Block`, plus
one registered renderer in each of the two renderers (a test checks that every kind renders).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args


@dataclass(frozen=True)
class Code:
    """Inline code (file names, column names)."""

    text: str


@dataclass(frozen=True)
class Bold:
    """Inline bold text."""

    text: str


Inline = str | Code | Bold


@dataclass(frozen=True)
class Heading:
    level: int  # 1 is the title, 2 a section, 3 a subsection
    text: str


@dataclass(frozen=True)
class Para:
    parts: tuple[Inline, ...]
    missing: bool = False  # a "not available" note, styled as such in HTML


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]  # cells already formatted as text


@dataclass(frozen=True)
class Pre:
    text: str  # shown verbatim in a monospaced block


@dataclass(frozen=True)
class Image:
    path: Path  # the file, read for the HTML
    rel: str  # posix path relative to the run directory, linked from the Markdown
    caption: str


@dataclass(frozen=True)
class Gallery:
    images: tuple[Image, ...]
    width: int = 160  # pixels per thumbnail


@dataclass(frozen=True)
class Bullets:
    items: tuple[Para, ...]


BannerLevel = Literal["note", "warning", "danger"]
BANNER_LABELS: dict[str, str] = {"note": "Note", "warning": "Warning", "danger": "Danger"}


@dataclass(frozen=True)
class Banner:
    """A callout that must be seen: put it right below the title so it is on the first screen."""

    level: BannerLevel  # how serious: sets the label and, in HTML, the colour
    parts: tuple[Inline, ...]

    def __post_init__(self) -> None:
        if self.level not in BANNER_LABELS:
            raise ValueError(f"banner level {self.level!r} is not one of {', '.join(BANNER_LABELS)}")

    @property
    def label(self) -> str:
        return BANNER_LABELS[self.level]


Block = Heading | Para | Table | Pre | Image | Gallery | Bullets | Banner
BLOCK_TYPES: tuple[type, ...] = get_args(Block)


def para(*parts: Inline) -> Para:
    """A paragraph of inline parts."""
    return Para(tuple(parts))


def not_available(what: str, why: str) -> Para:
    """The note that replaces content whose input is missing or unreadable."""
    return Para((f"{what}: not available ({why}).",), missing=True)


def banner(level: BannerLevel, *parts: Inline) -> Banner:
    """A callout block of inline parts."""
    return Banner(level, tuple(parts))


def joined(parts: Iterable[Inline], sep: str = ", ") -> list[Inline]:
    """`parts` with `sep` between them, for a paragraph listing several items."""
    out: list[Inline] = []
    for part in parts:
        if out:
            out.append(sep)
        out.append(part)
    return out
