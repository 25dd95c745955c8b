"""The "did you mean ...?" of mistyped names: subcommands, options, config keys, backbones, weights, classes.

Torch-free, so the config, the model catalog and the command-line parser can all use it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

CUTOFF = 0.6  # difflib's default similarity threshold: below it a guess is more confusing than helpful


def close_match(value: str, choices: Iterable[str]) -> str | None:
    """The choice closest to `value` (a case-insensitive equal first), or None when none is close."""
    options = list(dict.fromkeys(str(c) for c in choices))
    text = str(value)
    by_lower = {c.lower(): c for c in reversed(options)}  # the first spelling wins on equal lower case
    if text.lower() in by_lower:
        return by_lower[text.lower()]
    found = difflib.get_close_matches(text.lower(), list(by_lower), n=1, cutoff=CUTOFF)
    return by_lower[found[0]] if found else None


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """The suffix ` (did you mean 'cosine'?)` for the closest choice; '' when none is close or it is `value`."""
    match = close_match(value, choices)
    return f" (did you mean {match!r}?)" if match is not None and match != value else ""
