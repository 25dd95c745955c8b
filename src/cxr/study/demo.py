"""`cxr demo`: a complete study on built-in synthetic images, generated into the run folder: the four
classes (`cxr.data.synthetic`), or with `task="multilabel"` several findings per image and an
NIH-style manifest (`cxr.data.synthetic_findings`)."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

from cxr.config import RunConfig
from cxr.data.synthetic import CLASSES, generate_dataset, is_synthetic
from cxr.data.synthetic_findings import MANIFEST, generate_multilabel_dataset
from cxr.errors import CxrError
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
    task: str = "multiclass",
    resume: bool = False,
) -> StudyResult:
    """Generate the synthetic dataset into out_dir/data (once) and run the demo study in out_dir.

    task "multilabel": `len(CLASSES) * n_per_class` images with findings drawn independently, studied
    as a multi-label task (sigmoid outputs, per-finding AUROC, thresholds chosen on validation).
    `resume` continues the demo in out_dir from its last.pt, on the images already there."""
    if task not in ("multiclass", "multilabel"):
        raise CxrError(f"unknown demo task {task!r}; allowed: multiclass, multilabel")
    out = Path(out_dir)
    cfg = cfg or demo_config()
    if task == "multilabel":
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, task="multilabel"))
    check_folder(RunDir(out), resume=resume, force=force)  # before generating anything
    ensure_weights(cfg.model.weights, cfg.model.backbone)  # so is a missing weights package
    data = out / "data"
    expected = len(CLASSES) * n_per_class
    source = data / MANIFEST if task == "multilabel" else data
    existing = _generated_images(data, task)
    if resume:  # the run's own images: the resume checks its split against them
        log.info("resuming the demo in %s on the %d synthetic images in %s", out, existing, data)
    elif existing != expected:
        log.info("generating %d synthetic images (%s) in %s", expected,
                 "several findings each" if task == "multilabel" else f"{n_per_class} per class", data)
        if is_synthetic(data):  # an earlier demo's images go whole: none of another task or count stays mixed in
            shutil.rmtree(data)
        if task == "multilabel":
            generate_multilabel_dataset(data, n_images=expected, size=DEMO_IMAGE_SIZE, seed=DEMO_DATA_SEED)
        else:
            generate_dataset(data, n_per_class=n_per_class, size=DEMO_IMAGE_SIZE, seed=DEMO_DATA_SEED)
    else:
        log.info("reusing the %d synthetic images in %s", existing, data)
    return run_study(cfg, source, out, resume=resume, force=force, cache_dir=cache_dir, progress=progress)


def _generated_images(data: Path, task: str) -> int:
    """Images of a demo folder of `task` (0 when it holds the other task's layout, so it is made again)."""
    if not data.is_dir():
        return 0
    multilabel_layout = (data / MANIFEST).is_file()
    if task == "multilabel":
        return len(list(data.glob("images/*.png"))) if multilabel_layout else 0
    return 0 if multilabel_layout else sum(len(list((data / name).glob("*.png"))) for name in CLASSES)
