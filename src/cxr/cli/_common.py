"""Small helpers shared by the subcommand modules."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path


def add_logging_flags(parser: argparse.ArgumentParser, *, top: bool = True) -> None:
    """-v / -q. On subcommands the default is suppressed so a flag given before the subcommand survives."""
    default = 0 if top else argparse.SUPPRESS
    parser.add_argument("-v", "--verbose", action="count", default=default, help="more log output (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="count", default=default, help="less log output (warnings only)")


def add_command(
    sub: argparse._SubParsersAction,
    name: str,
    func: Callable[[argparse.Namespace], int | None] | None,
    help: str,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """Add a subcommand that runs `func(args)`; `func=None` for a group that only holds subcommands."""
    parser = sub.add_parser(
        name,
        help=help,
        description=description or help,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_logging_flags(parser, top=False)
    if func is not None:
        parser.set_defaults(func=func)
    else:
        parser.set_defaults(func=lambda _args, p=parser: p.print_help())
    return parser


def existing_path(value: str) -> Path:
    """argparse type: a path that must exist."""
    path = Path(value)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"path not found: {value}")
    return path


def positive_int(value: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number
