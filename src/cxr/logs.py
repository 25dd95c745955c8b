"""Logging conventions shared by the library and the `cxr` command.

A library function whose result the commands print on stdout themselves, or show as part of a result
(the test summary, the report path, an exported file, written samples), logs it with ``extra=RESULT``. The run's log.txt and any handler of a library user keep
the record; the command's console handler drops it (`HideResults`), so the console shows each result
once, on stdout.
"""

from __future__ import annotations

import logging

RESULT_ATTRIBUTE = "cxr_result"
RESULT = {RESULT_ATTRIBUTE: True}  # pass as `extra=` to mark a record as a printed result


def is_result(record: logging.LogRecord) -> bool:
    """True for records logged with ``extra=RESULT``."""
    return bool(getattr(record, RESULT_ATTRIBUTE, False))


class HideResults(logging.Filter):
    """A handler filter that drops result records (for a console whose command prints them itself)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not is_result(record)
