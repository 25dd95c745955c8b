"""Small helpers shared by the subcommand modules: the parser class, its help format, argparse types."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cxr.config import EVAL_ENGINES
from cxr.errors import CxrError
from cxr.suggest import did_you_mean

ENGINE_HELP = (f"what runs the model: {' | '.join(EVAL_ENGINES)}; auto = the fastest installed here "
               "(measured once per machine, PyTorch for small jobs), openvino-int8 only where validation "
               "macro-F1 stays within 0.01 of fp32")
THREADS_HELP = "intra-op threads; 0 = $OMP_NUM_THREADS, else one per core free at start"


class HelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" where an option has a real default and its help does not name one.

    An action may carry `default_text` (a string, or a callable evaluated only when help is shown)
    to show instead of its argparse default, e.g. the config's value of the key it sets.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = shown_default(action)
        if default and "(default" not in text:
            text += f" (default: {default.replace('%', '%%')})"
        return text


def shown_default(action: argparse.Action) -> str | None:
    """The default an option's help shows, or None (no value, a switch, a count, or unset)."""
    custom = getattr(action, "default_text", None)
    if custom is not None:
        return custom() if callable(custom) else custom
    value = action.default
    if isinstance(action, argparse._CountAction) or value is None or value is False or value == argparse.SUPPRESS:
        return None
    if isinstance(value, list | tuple):
        return " ".join(map(str, value)) if value else None
    return str(value)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors and "did you mean" for mistyped subcommands, choices and options.

    Abbreviated options are off: `--epoch` is a mistake to point out (did you mean --epochs?), not a
    prefix to guess from.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        """One line on stderr and exit status 2 (argparse prints the whole usage first). A mistyped option
        is named first: it is the cause when it made its value a positional (`--outt x.csv CKPT`)."""
        typo = getattr(self, "_typo", None)
        if typo is not None and not message.startswith("unrecognized arguments"):
            message = self._unrecognized([typo])
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if action.choices is not None and value not in action.choices:
            choices = [str(c) for c in action.choices]
            raise argparse.ArgumentError(
                action,
                f"invalid choice: {value!r}{did_you_mean(str(value), choices)}; choose from {', '.join(choices)}",
            )

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """As argparse, but unknown arguments are an error here, where this (sub)command's options are known."""
        self._typo = unknown_option(self, sys.argv[1:] if args is None else list(args))
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(self._unrecognized(extras))
        return parsed, extras

    def _unrecognized(self, extras: list[str]) -> str:
        message = f"unrecognized arguments: {' '.join(extras)}"
        option = next((e.partition("=")[0] for e in extras if e.startswith("-")), None)
        if option is not None:
            message += did_you_mean(option, [o for o in self._option_string_actions if o.startswith("--")])
        return message


def unknown_option(parser: argparse.ArgumentParser, args: list[str]) -> str | None:
    """The first long option in `args` that `parser` does not know (None for a parser with subcommands:
    their options are not its own)."""
    if parser._subparsers is not None:
        return None
    for arg in args:
        if arg == "--":
            return None
        name = arg.partition("=")[0]
        if arg.startswith("--") and name not in parser._option_string_actions:
            return name
    return None


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
    parser = sub.add_parser(name, help=help, description=description or help, formatter_class=HelpFormatter)
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


def _int_at_least(value: str, low: int, expected: str) -> int:
    """`value` as an integer >= `low`; an ArgumentTypeError says what was `expected` and what came."""
    try:
        number: int | None = int(value)
    except ValueError:
        number = None
    if number is None or number < low:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {value!r}")
    return number


def non_negative_int(value: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(value, 0, "an integer >= 0")


def positive_int(value: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(value, 1, "a positive integer")


def writable_output(path: Path | None, *, folder: bool = False) -> Path | None:
    """Check, before any work, that `path` (a file, or with `folder` a directory) can be written: its
    folder is created and a probe file written and removed, so results computed later are not lost
    at the last write. A CxrError names the place and the reason."""
    if path is None:
        return None
    target = Path(path) if folder else Path(path).parent
    try:
        target.mkdir(parents=True, exist_ok=True)
        probe = target / f".cxr-write-check-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise CxrError(f"cannot write to {target}: {exc.strerror or exc}; choose another output location") from None
    return Path(path)


WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})


def os_error_line(exc: OSError) -> str | None:
    """One line for a failed write the user can act on (disk full, read-only, no permission), else None."""
    if exc.errno not in WRITE_ERRNOS:
        return None
    where = f" {exc.filename}" if exc.filename else ""
    return f"cannot write{where}: {exc.strerror or exc} (free some space or choose another output location)"
