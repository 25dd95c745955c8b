"""Text formatting of the values a report shows: numbers, intervals, durations, config entries.

Every helper is total: a missing or malformed value becomes 'n/a', never an exception, because the
report is written from whatever a (possibly partial) run folder holds.
"""

from __future__ import annotations

from typing import Any

NOT_AVAILABLE = "n/a"


def fmt(value: Any, digits: int = 3) -> str:
    """A number with `digits` decimals; 'n/a' for None or anything that is not a number."""
    if isinstance(value, bool) or value is None:
        return NOT_AVAILABLE
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return NOT_AVAILABLE


def fmt_ci(ci: Any) -> str:
    """A (low, high) interval as 'low – high'; 'n/a' for anything else."""
    if isinstance(ci, list | tuple) and len(ci) == 2:
        return f"{fmt(ci[0])} – {fmt(ci[1])}"
    return NOT_AVAILABLE


def fmt_duration(seconds: Any) -> str:
    """Seconds as '12.3 s', '4 min 05 s' or '1 h 02 min 03 s'."""
    try:
        total = float(seconds)
    except (TypeError, ValueError):
        return NOT_AVAILABLE
    if total < 60:
        return f"{total:.1f} s"
    minutes, secs = divmod(round(total), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min {secs:02d} s" if hours else f"{minutes} min {secs:02d} s"


def fmt_lr(value: Any) -> str:
    """A learning rate in scientific notation ('1.00e-04')."""
    try:
        return f"{float(value):.2e}"
    except (TypeError, ValueError):
        return NOT_AVAILABLE


def get(mapping: Any, dotted: str) -> Any:
    """`mapping['a']['b']` for 'a.b'; None where any level is missing or not a mapping."""
    node = mapping
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def plain(value: Any) -> str:
    """A config value as text: lists comma-joined, None as 'n/a'."""
    if value is None:
        return NOT_AVAILABLE
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)
