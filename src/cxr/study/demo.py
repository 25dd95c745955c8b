"""`cxr demo`: a complete study on built-in synthetic images, generated into the run folder."""

from __future__ import annotations

import logging
from pathlib import Path

from cxr.config import RunConfig
from cxr.data.synthetic import CLASSES, generate_dataset
from cxr.models.weights import ensure_weights
from cxr.rundir import RunDir
from cxr.study.folder import check_folder
from cxr.study.presets import DEMO_DATA_SEED, DEMO_IMAGE_SIZE, DEMO_IMAGES_PER_CLASS, demo_config
from cxr.study.run import StudyResult, run_study

log = logging.getLogger(__name__)


def run_demo(
    out_dir: str | Path,
    *,
    n_per_class: int = DEMO_IMAGES_PER_CLASS,
    cfg: RunConfig | None = None,
    force: bool = False,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> StudyResult:
    """Generate the synthetic dataset into out_dir/data (once) and run the demo study in out_dir."""
    out = Path(out_dir)
    cfg = cfg or demo_config()
    check_folder(RunDir(out), resume=False, force=force)  # before generating anything
    ensure_weights(cfg.model.weights, cfg.model.backbone)  # so is a missing weights package
    data = out / "data"
    expected = len(CLASSES) * n_per_class
    existing = sum(1 for _ in data.glob("*/*.png")) if data.is_dir() else 0
    if existing != expected:
        log.info("generating %d synthetic images (%d per class) in %s", expected, n_per_class, data)
        generate_dataset(data, n_per_class=n_per_class, size=DEMO_IMAGE_SIZE, seed=DEMO_DATA_SEED)
    else:
        log.info("reusing the %d synthetic images in %s", existing, data)
    return run_study(cfg, data, out, force=force, cache_dir=cache_dir, progress=progress)
