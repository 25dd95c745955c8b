"""``track.backend: tensorboard``: event files in the run folder's ``tensorboard/`` (extra cxr[tensorboard]).

Scalars: ``train/<metric>``, ``val/<metric>``, ``lr``, ``phase``, ``seconds`` per epoch and
``test/<metric>`` at the last epoch; the config as a text table; the run's PNG figures as images.
View with ``tensorboard --logdir runs/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cxr.errors import CxrError
from cxr.tracking.base import epoch_scalars, scalars


class TensorBoardTracker:
    """Writes TensorBoard event files into `folder` with torch's SummaryWriter."""

    def __init__(self, folder: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise CxrError("--track tensorboard needs the package tensorboard: pip install 'cxr[tensorboard]'") from None
        self.folder = folder
        self.writer = SummaryWriter(log_dir=str(folder))
        self.step = 0

    def log_params(self, params: dict[str, Any]) -> None:
        rows = "\n".join(f"| {key} | {value} |" for key, value in params.items())
        self.writer.add_text("config", "| key | value |\n|---|---|\n" + rows, 0)

    def log_epoch(self, row: dict[str, float]) -> None:
        self.step, values = epoch_scalars(row)
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, self.step)
        self.writer.flush()

    def log_test(self, metrics: dict[str, Any], step: int) -> None:
        for tag, value in scalars(metrics, "test/").items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def log_artifacts(self, paths: Sequence[Path]) -> None:
        for path in paths:
            images = sorted(path.glob("*.png")) if path.is_dir() else [path] if path.suffix == ".png" else []
            for image in images:
                pixels = np.asarray(Image.open(image).convert("RGB"))
                self.writer.add_image(f"figures/{image.stem}", pixels, self.step, dataformats="HWC")
        self.writer.flush()

    def close(self, status: str = "FINISHED") -> None:
        self.writer.add_text("status", status, self.step)
        self.writer.close()
