"""Checks of single config values: what a key allows, enforced at load and described for --help.

A check is called with the dotted key and the value; it raises a CxrError that names the key, the
value received and what is allowed (with a "did you mean" for a near miss of a choice). The config
dataclasses attach one to each constrained field (`cxr.config.setting`). Torch-free.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cxr.errors import CxrError
from cxr.rundir import SPLITS
from cxr.suggest import did_you_mean

EXTERNAL_KEYS = ("data", "masks", "boxes", "label_map")  # an external set given as a mapping
RATIO_TOLERANCE = 1e-6  # how far from 1 the split ratios may sum (float rounding of 0.7 + 0.1 + 0.2)
NUMBER_PLACEHOLDER = "N"  # a choice NAME:N stands for NAME: followed by a non-negative integer


class Check:
    """Base class: `check(key, value)` raises a CxrError unless allowed; `describe()` says what is."""

    def __call__(self, key: str, value: Any) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class Choice(Check):
    """One of `values`; an entry such as 'stages:N' allows 'stages:' followed by any integer >= 0."""

    values: tuple[str, ...]
    ignore_case: bool = False

    def allows(self, value: Any) -> bool:
        if not isinstance(value, str):
            return False
        text = value.strip().lower() if self.ignore_case else value
        for allowed in self.values:
            head, sep, tail = allowed.partition(":")
            if sep and tail == NUMBER_PLACEHOLDER:
                if text.startswith(head + sep) and text[len(head) + 1 :].isdigit():
                    return True
            elif text == allowed:
                return True
        return False

    def __call__(self, key: str, value: Any) -> None:
        if self.allows(value):
            return
        raise CxrError(
            f"{key}: unknown value {value!r}; allowed: {', '.join(self.values)}{self.hint(str(value))}"
        )

    def hint(self, value: str) -> str:
        """The "did you mean" of `value`, with the number of 'stage:2' carried over ('stages:2')."""
        suffix = value.partition(":")[2]
        candidates = [
            v[: -len(NUMBER_PLACEHOLDER)] + suffix if v.endswith(":" + NUMBER_PLACEHOLDER) and suffix.isdigit() else v
            for v in self.values
        ]
        return did_you_mean(value, candidates)

    def describe(self) -> str:
        return " | ".join(self.values)


@dataclass(frozen=True)
class Range(Check):
    """A finite number within bounds (None: unbounded); the `_open` flags exclude the bound itself."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def allows(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __call__(self, key: str, value: Any) -> None:
        if not self.allows(value):
            raise CxrError(f"{key} must be {self.describe()}, got {value!r}")

    def describe(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


def at_least(low: float) -> Range:
    """low <= value."""
    return Range(low=low)


def above(low: float) -> Range:
    """low < value."""
    return Range(low=low, low_open=True)


FRACTION = Range(0.0, 1.0, high_open=True)  # 0 <= value < 1


@dataclass(frozen=True)
class Each(Check):
    """Every item of a list passes `item`."""

    item: Check

    def __call__(self, key: str, value: Any) -> None:
        for i, entry in enumerate(value):
            self.item(f"{key}[{i}]", entry)

    def describe(self) -> str:
        return f"each {self.item.describe()}"


@dataclass(frozen=True)
class Span(Check):
    """[low, high] with 0 < low <= high: a range of positive factors (zoom, brightness)."""

    def __call__(self, key: str, value: Any) -> None:
        pair = list(value)
        if len(pair) != 2 or not all(above(0).allows(v) for v in pair) or pair[0] > pair[1]:
            raise CxrError(f"{key} must be {self.describe()}, got {pair}")

    def describe(self) -> str:
        return "[low, high] with 0 < low <= high"


@dataclass(frozen=True)
class NonEmpty(Check):
    """A string with something other than blanks in it."""

    def __call__(self, key: str, value: Any) -> None:
        if not isinstance(value, str) or not value.strip():
            raise CxrError(f"{key} must be a non-empty string, got {value!r}")

    def describe(self) -> str:
        return "a non-empty string"


@dataclass(frozen=True)
class Matches(Check):
    """A string that fully matches `pattern` ('' allowed when `optional`); `text` says what it is."""

    pattern: str
    text: str
    optional: bool = True

    def __call__(self, key: str, value: Any) -> None:
        if isinstance(value, str) and ((self.optional and value == "") or re.fullmatch(self.pattern, value)):
            return
        raise CxrError(f"{key} must be {self.describe()}, got {value!r}")

    def describe(self) -> str:
        return self.text + (" (or empty)" if self.optional else "")


def validate_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    """Three positive numbers (train, val, test) summing to 1; the error names what was given."""
    try:
        values = tuple(float(r) for r in ratios)
    except (TypeError, ValueError):
        values = ()
    if len(values) != len(SPLITS) or any(not math.isfinite(r) or r <= 0 for r in values):
        raise CxrError(
            f"split ratios must be 3 positive numbers (train val test) summing to 1, got {list(ratios)}"
        )
    if abs(sum(values) - 1.0) > RATIO_TOLERANCE:
        raise CxrError(f"split ratios must sum to 1, got {list(ratios)} (sum {sum(values):g})")
    return values  # type: ignore[return-value]


@dataclass(frozen=True)
class Ratios(Check):
    """Train, val and test fractions: 3 positive numbers summing to 1."""

    def __call__(self, key: str, value: Any) -> None:
        try:
            validate_ratios(value)
        except CxrError as exc:
            raise CxrError(f"{key}: {exc}") from None

    def describe(self) -> str:
        return "3 positive numbers (train val test) summing to 1"


@dataclass(frozen=True)
class OptionalPath(Check):
    """None, or a non-empty path string (whether it exists is checked where it is used)."""

    def __call__(self, key: str, value: Any) -> None:
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise CxrError(f"{key} must be a path (a non-empty string) or null, got {value!r}")

    def describe(self) -> str:
        return "a path, or null"


@dataclass(frozen=True)
class ExternalSets(Check):
    """NAME: PATH entries, or NAME: {data: PATH, masks: DIR, boxes: FILE, label_map: FILE}; NAME is a
    short word (letters, digits, '-', '_') that names the set in metrics.json, the report and figure files."""

    def __call__(self, key: str, value: Any) -> None:
        if not isinstance(value, dict):
            raise CxrError(f"{key} must be a mapping NAME: PATH, got {value!r}")
        for name, entry in value.items():
            if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_" for c in name):
                raise CxrError(f"{key}: external set name {name!r} must be letters, digits, '-' or '_'")
            if isinstance(entry, dict):
                unknown = sorted(set(entry) - set(EXTERNAL_KEYS))
                if unknown:
                    raise CxrError(f"{key}.{name}: unknown key(s) {unknown}{did_you_mean(str(unknown[0]), EXTERNAL_KEYS)}; "
                                   f"allowed: {', '.join(EXTERNAL_KEYS)}")
                paths = entry
            else:
                paths = {"data": entry}
            if not isinstance(paths.get("data"), str) or not paths["data"].strip():
                raise CxrError(f"{key}.{name}: needs a data path (a folder or CSV manifest), got {entry!r}")
            for sub, path in paths.items():
                OptionalPath()(f"{key}.{name}.{sub}", path)

    def describe(self) -> str:
        return "NAME: PATH (or NAME: {data, masks, boxes, label_map})"
