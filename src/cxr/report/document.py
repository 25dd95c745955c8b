"""report.md and a self-contained report.html, written from the files of a run folder.

The public entry point of the report package. The report is built once as a list of blocks
(`sections`, from what `runfiles.read_run` found), then rendered twice (`markdown`, `htmlpage`), so
both files hold the same content. Every input file is optional: a missing or unreadable one turns
its section into a "not available" note, so a report can be written for an interrupted run.
Standard library + PyYAML only; never torch.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cxr.errors import CxrError
from cxr.logs import RESULT
from cxr.report.htmlpage import render_html
from cxr.report.markdown import render_markdown
from cxr.report.runfiles import read_run
from cxr.report.sections import build_blocks
from cxr.report.sections.evaluation import is_evaluation
from cxr.rundir import RunDir, write_text

log = logging.getLogger(__name__)


def write_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write `report.md` (figures linked) and `report.html` (figures embedded) into `run_dir`, atomically."""
    run = RunDir(run_dir)
    if not run.root.is_dir():
        raise CxrError(f"run directory not found: {run.root}")
    files = read_run(run)
    for name, why in files.problems.items() if not is_evaluation(files) else ():  # an evaluation has no run files
        log.info("report: %s (%s)", name, why)
    title, blocks = build_blocks(files)
    write_text(run.report_md, render_markdown(blocks))
    write_text(run.report_html, render_html(title, blocks))
    log.info("wrote %s and %s", run.report_md, run.report_html, extra=RESULT)  # `cxr run` prints the path itself
    return run.report_md, run.report_html
