"""The last sections: figures no other section claims, and the limitations of the numbers."""

from __future__ import annotations

from cxr.report.blocks import Block, Bold, Bullets, Heading, para
from cxr.report.runfiles import RunFiles
from cxr.report.sections.common import SHOWN_FIGURES, figures
from cxr.report.sections.lungs import claims_figure as lungs_figure
from cxr.report.sections.shortcut import claims_figure


def other_figures(files: RunFiles) -> list[Block]:
    """Other figures: every PNG of figures/ that no section shows, so none is silently dropped."""
    known = set(SHOWN_FIGURES)
    others = [stem for stem in files.figures if stem not in known and not claims_figure(stem)
              and not lungs_figure(stem)]
    return [Heading(2, "Other figures"), *figures(files, others)] if others else []


def limitations(files: RunFiles) -> list[Block]:
    """Limitations / not a medical device: the same for every run."""
    return [
        Heading(2, "Limitations / not a medical device"),
        Bullets((
            para(Bold("Not a medical device."), " This is research and teaching software. It is not validated"
                 " for clinical use and must not be used to diagnose, triage or treat anyone."),
            para("The test split comes from the same dataset as the training data. Its numbers do not"
                 " describe other hospitals, scanners, patient populations or disease prevalences; external"
                 " sets, where the report has them, describe only the sources they come from."),
            para("Public COVID-19 X-ray collections mix sources per class; a model can learn the source"
                 " (markers, borders, contrast) instead of the disease. Check the errors, not only the scores."),
            para("The 95% intervals cover resampling of the test images only, not the variation between"
                 " training runs, seeds or data shifts."),
            para("The probabilities are calibrated by one temperature fitted on the validation split; on"
                 " other data they may not be. See the ECE before and after, and the reliability diagrams."),
        )),
    ]
