"""What every surface says about a model trained on synthetic images (`cxr demo`): the API's answers,
`cxr predict --out` JSON, the `cxr explain` figure and the log of whoever loads it. Torch-free, no cxr imports."""

from __future__ import annotations

SYNTHETIC_WARNING = (
    "This model was trained on synthetic images (cxr.data.synthetic, e.g. by `cxr demo`): procedurally drawn "
    "pictures, not X-rays. Its predictions have no medical meaning."
)
SYNTHETIC_FIGURE_NOTE = "Trained on synthetic images (cxr demo): no medical meaning"  # one line under a figure


def synthetic_model_line(name: str) -> str:
    """The WARNING line logged when a synthetic-data model is loaded."""
    return (f"WARNING: {name} was trained on synthetic images (cxr demo): its predictions have no medical "
            "meaning")
