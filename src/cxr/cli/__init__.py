"""The `cxr` command. Each subcommand group lives in its own module and registers itself here.

Nothing in the library imports this package: it is where everything is wired together.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from cxr import __version__
from cxr.cli._common import Parser, add_logging_flags, os_error_line
from cxr.errors import CxrError
from cxr.logs import HideResults
from cxr.malloc import reexec_with_malloc_tunables

log = logging.getLogger("cxr")

def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every subcommand group registered."""
    from cxr.cli import compare, data, lungs, model, predict, run, serve

    parser = Parser(
        prog="cxr",
        description=(
            "Chest X-ray classification: inspect and split a dataset, train and evaluate a "
            "ResNet-50 (or EfficientNet-Lite0) classifier, write a report, predict, explain, "
            "export and serve. Start with `cxr demo` (synthetic data, a few minutes on a CPU)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cxr {__version__}")
    add_logging_flags(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", help="what to do (cxr COMMAND --help: its options)")
    for module in (data, model, run, predict, serve, compare, lungs):
        module.register(sub)
    return parser


def setup_logging(verbose: int = 0, quiet: int = 0) -> None:
    """Log to stderr at INFO by default; -v adds DEBUG, -q keeps WARNING and above. Results the
    commands print on stdout (records logged with `cxr.logs.RESULT`) are not repeated on stderr."""
    level = logging.INFO - 10 * verbose + 10 * quiet
    level = min(max(level, logging.DEBUG), logging.ERROR)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(HideResults())
    handler.setFormatter(logging.Formatter("%(message)s" if level > logging.DEBUG else "%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("cxr")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point. Returns the exit status: 0 ok, 1 finished with problems, 2 user error."""
    if argv is None:
        argv = sys.argv[1:]
        reexec_with_malloc_tunables([sys.executable, "-m", "cxr", *argv])
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except CxrError as exc:
        log.error("error: %s", exc)
        return 2
    except OSError as exc:  # a full disk or a read-only folder met mid-way: one line, not a traceback
        line = os_error_line(exc)
        if line is None:
            raise
        log.error("error: %s", line)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
