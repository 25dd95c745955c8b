"""The Python API where nobody set up logging (a notebook): a study's progress, results and warnings
reach stderr, not only the run's log.txt; where logging is set up (the CLI, pytest) nothing changes."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from cxr.study import logfile


@contextlib.contextmanager
def no_logging_setup() -> Iterator[logging.Logger]:
    """No handler on `cxr` or the root logger, as in a fresh notebook (pytest's own are put back after;
    entered in the test body: pytest adds its capture handlers to the root when the test's call starts)."""
    root, cxr = logging.getLogger(), logging.getLogger("cxr")
    saved = (root.handlers[:], cxr.handlers[:], cxr.level, cxr.propagate)
    root.handlers[:], cxr.handlers[:] = [], []
    cxr.setLevel(logging.NOTSET)
    cxr.propagate = True
    try:
        yield cxr
    finally:
        root.handlers[:], cxr.handlers[:] = saved[0], saved[1]
        cxr.setLevel(saved[2])
        cxr.propagate = saved[3]


def test_a_notebook_sees_progress_and_warnings(tmp_path, capsys):
    with no_logging_setup() as cxr:
        with logfile.run_log(tmp_path):
            logging.getLogger("cxr.progress").info("extract features: 120/480 (25%), 40 img/s, ETA 9 s")
            logging.getLogger("cxr.study").warning("only 4 validation images")
        assert cxr.handlers == []  # nothing left behind after the study
    err = capsys.readouterr().err
    assert "extract features: 120/480" in err and "only 4 validation images" in err
    assert "extract features: 120/480" in (tmp_path / "log.txt").read_text()


def test_a_set_up_console_is_left_alone(tmp_path, capsys):
    logger = logging.getLogger("cxr")
    console = logging.StreamHandler()
    saved = logger.handlers[:]
    logger.handlers[:] = [console]
    try:
        with logfile.run_log(tmp_path):
            assert logger.handlers[0] is console and len(logger.handlers) == 2  # console + log.txt only
    finally:
        logger.handlers[:] = saved
