"""The report's domain content: one function per section, each `(RunFiles) -> list[Block]`.

`build_blocks` calls the functions of `SECTIONS` in order below the title. A new section is a
function of that shape in one of these modules, added to `SECTIONS` where it should appear. A
warning that must be on the first screen is a section at the start of `SECTIONS` returning
`[banner("warning", ...)]` when it applies and `[]` otherwise.
"""

from __future__ import annotations

from collections.abc import Callable

from cxr.report.blocks import Block, Heading
from cxr.report.format import get, plain
from cxr.report.runfiles import RunFiles
from cxr.report.sections.banners import first_screen
from cxr.report.sections.calibration import calibration
from cxr.report.sections.closing import limitations, other_figures
from cxr.report.sections.conformal import conformal
from cxr.report.sections.errors import errors
from cxr.report.sections.evaluation import evaluated, is_evaluation, synthetic_model_banner
from cxr.report.sections.external import external
from cxr.report.sections.headline import headline
from cxr.report.sections.lungs import lungs
from cxr.report.sections.ood import ood
from cxr.report.sections.operating import operating_points
from cxr.report.sections.overview import dataset, summary
from cxr.report.sections.provenance import provenance
from cxr.report.sections.results import results
from cxr.report.sections.shortcut import shortcut, shortcut_banner
from cxr.report.sections.training import augmented, training

Section = Callable[[RunFiles], list[Block]]

SECTIONS: tuple[Section, ...] = (
    first_screen, shortcut_banner, headline, summary, dataset, results, calibration, conformal, operating_points,
    errors, external, ood, shortcut, lungs, training, augmented, provenance, other_figures, limitations,
)
SCORED_SECTIONS: tuple[Section, ...] = (results, calibration, operating_points)  # an evaluation with --data


def sections_for(files: RunFiles) -> tuple[Section, ...]:
    """SECTIONS for a run; for an evaluation folder (cxr.report.sections.evaluation) what it has data for."""
    if not is_evaluation(files):
        return SECTIONS
    scored = SCORED_SECTIONS if isinstance((files.metrics or {}).get("test"), dict) else ()
    return (synthetic_model_banner, first_screen, shortcut_banner, evaluated, *scored, external, shortcut,
            limitations)


def report_title(files: RunFiles) -> str:
    """'cxr report: <run name>', the config's name or else the folder's."""
    name = get(files.config, "name")
    return f"cxr report: {plain(name) if name else files.run_dir.name}"


def build_blocks(files: RunFiles, sections: tuple[Section, ...] | None = None) -> tuple[str, list[Block]]:
    """The report's title and content blocks for one run folder (default sections: `sections_for(files)`)."""
    title = report_title(files)
    blocks: list[Block] = [Heading(1, title)]
    for section in sections if sections is not None else sections_for(files):
        blocks += section(files)
    return title, blocks
