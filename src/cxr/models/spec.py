"""What `build_model` needs from a configuration, torch-free: the freeze modes and the ModelSpec protocol.

`cxr.config` imports the model catalog (to check backbone and weights names) and these modes; the model
package never imports `cxr.config`, so the dependency between the two runs one way (config -> models).
`cxr.config.ModelConfig` satisfies ModelSpec.
"""

from __future__ import annotations

from typing import Protocol

FREEZE_MODES = ("base", "stages:N", "none")  # N's upper bound is the backbone's stage count (models.build)


class ModelSpec(Protocol):
    """The model settings `cxr.models.build.build_model` reads (cxr.config.ModelConfig has them all)."""

    backbone: str  # a name of cxr.models.catalog
    weights: str  # a weights spec of that backbone
    freeze: str  # one of FREEZE_MODES
    head: tuple[int, ...]  # hidden widths of the MLP head
    dropout: float  # dropout before each hidden Linear of the head
