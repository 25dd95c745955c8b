"""Progress of long steps: a tqdm bar on a terminal, a log line every `interval` seconds elsewhere.

Under `nohup`, SLURM, CI or a notebook's captured stderr a bar is not drawn, so a 14-minute feature
extraction would look hung. `Progress` therefore logs `desc: done/total (pct), rate, ETA` at INFO
at least every `interval` seconds when stderr is not a terminal (and once at the end of a step that
took longer than that). Only the main process of a torchrun job reports. Torch-free.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm import tqdm

from cxr.rank import is_main_process

log = logging.getLogger(__name__)

T = TypeVar("T")
LOG_INTERVAL = 30.0  # seconds between progress lines when no bar can be drawn


def _is_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


class Progress:
    """Counts work done in a step: `update(n)` after each chunk, `postfix(...)` for the bar's extras.

    enabled=False (or a non-main rank) reports nothing. On a terminal a transient tqdm bar is drawn;
    otherwise a line is logged every `interval` seconds (default: LOG_INTERVAL).
    """

    def __init__(
        self, total: int | None, desc: str, *, unit: str = "img", enabled: bool = True,
        interval: float | None = None, terminal: bool | None = None,
    ) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.interval = LOG_INTERVAL if interval is None else interval  # read now: tests may shorten it
        self.enabled = enabled and is_main_process()
        self.done = 0
        self._start = self._last_log = time.perf_counter()
        self._extra: dict[str, Any] = {}
        draw = _is_terminal() if terminal is None else terminal
        self._bar = (tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)
                     if self.enabled and draw else None)
        self._log_lines = self.enabled and not draw

    @property
    def drawing(self) -> bool:
        """True when the caller's postfix values are shown (a bar or log lines): worth computing them."""
        return self.enabled

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._log_lines and time.perf_counter() - self._last_log >= self.interval:
            self._emit()

    def postfix(self, **values: Any) -> None:
        """Extra values shown beside the count (loss, images/s, ...)."""
        self._extra = values
        if self._bar is not None:
            self._bar.set_postfix(values, refresh=False)

    def line(self) -> str:
        """`desc: done/total (pct), rate, ETA, extras` as one line."""
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        rate = self.done / elapsed
        parts = [f"{self.desc}: {self.done}" + (f"/{self.total}" if self.total else "") + f" {self.unit}"]
        if self.total:
            parts[0] += f" ({100.0 * self.done / self.total:.0f}%)"
        parts.append(f"{rate:.1f} {self.unit}/s")
        if self.total and rate > 0 and self.done < self.total:
            parts.append(f"ETA {format_seconds((self.total - self.done) / rate)}")
        parts.append(f"elapsed {format_seconds(elapsed)}")
        parts += [f"{k} {v}" for k, v in self._extra.items()]
        return ", ".join(parts)

    def _emit(self) -> None:
        self._last_log = time.perf_counter()
        log.info("%s", self.line())

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._log_lines and time.perf_counter() - self._start >= self.interval:
            self._emit()  # a long step says that it finished
        self._log_lines = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def track(
    items: Iterable[T], desc: str, *, total: int | None = None, unit: str = "batch", enabled: bool = True
) -> Iterator[T]:
    """Yield from `items`, counting each one in a `Progress`."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(total, desc, unit=unit, enabled=enabled) as bar:
        for item in items:
            yield item
            bar.update(1)


def format_seconds(seconds: float) -> str:
    """`42 s`, `3 min 05 s`, `1 h 02 min`."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
