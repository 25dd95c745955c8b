"""The run's log.txt: every `cxr` log record of INFO and above, copied into the run folder; and, where
nobody set up logging (a notebook, a script), the same records on stderr, so a study is not silent."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

from cxr.rank import is_main_process
from cxr.rundir import RunDir

RUN_LOGGER = "cxr"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextlib.contextmanager
def run_log(out_dir: str | Path | RunDir, append: bool = False) -> Iterator[Path]:
    """Copy every `cxr` record of INFO and above to the run's log.txt for the duration of the block.

    The console keeps its own level (-q still means quiet): only the file handler sees INFO. Where no
    handler is set up at all (`cxr` and the root logger have none: the Python API in a notebook or a
    script), progress, results and warnings would reach only the file; they go to stderr too, for the
    block. Only the main process of a torchrun job writes the file.
    """
    path = (out_dir if isinstance(out_dir, RunDir) else RunDir(out_dir)).log
    if not is_main_process():
        yield path
        return
    logger = logging.getLogger(RUN_LOGGER)
    console = None if logger.hasHandlers() else logging.StreamHandler(sys.stderr)
    old_level = logger.level
    raised: list[tuple[logging.Handler, int]] = []
    effective = logger.getEffectiveLevel()
    if effective > logging.INFO:
        for handler in logger.handlers:
            if handler.level < effective:
                raised.append((handler, handler.level))
                handler.setLevel(effective)
        logger.setLevel(logging.INFO)
    file_handler = logging.FileHandler(path, mode="a" if append else "w", encoding="utf-8")
    file_handler.setLevel(logging.INFO)
    file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logger.addHandler(file_handler)
    if console is not None:
        console.setLevel(logging.INFO)
        console.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(console)
    try:
        yield path
    finally:
        logger.removeHandler(file_handler)
        if console is not None:
            logger.removeHandler(console)
        file_handler.close()
        logger.setLevel(old_level)
        for handler, level in raised:
            handler.setLevel(level)
