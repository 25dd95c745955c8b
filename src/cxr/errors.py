"""User-facing errors.

A `CxrError` is a mistake the user can fix (a missing folder, a bad value, an unreadable file). The
command line prints its message on one line and exits with status 2, without a traceback. Anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class CxrError(Exception):
    """An error caused by user input; its message says what was received and what is allowed."""


class ClassMismatch(CxrError):
    """Data whose classes are not a checkpoint's; `cxr evaluate --data` then scores it as an external set."""

    def __init__(self, message: str, *, multilabel: bool = False) -> None:
        self.multilabel = multilabel  # a multi-label checkpoint's findings, not classes
        super().__init__(message)


class ImageReadError(CxrError):
    """An image file that cannot be decoded; names the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
