"""The report of an evaluation folder (`cxr evaluate --checkpoint CKPT ... --out DIR`): what was evaluated,
then only the sections it has data for, so a folder that is not a training run is not a page of "not
available" (and its log is not a list of missing run files).

An evaluation folder is one whose metrics.json names the `checkpoint` and that has no config.yaml.
"""

from __future__ import annotations

from cxr.report.blocks import Block, Bold, Code, Heading, banner, para
from cxr.report.format import plain
from cxr.report.runfiles import RunFiles

SYNTHETIC_MODEL_KEY = "synthetic_model"  # metrics.json: True when the checkpoint was trained on synthetic images


def is_evaluation(files: RunFiles) -> bool:
    """Whether the folder holds a checkpoint's evaluation rather than a training run."""
    return isinstance(files.metrics, dict) and "checkpoint" in files.metrics and not files.run.config.is_file()


def synthetic_model(files: RunFiles) -> bool:
    """Whether the evaluated checkpoint says it was trained on synthetic images."""
    return (files.metrics or {}).get(SYNTHETIC_MODEL_KEY) is True


def synthetic_model_banner(files: RunFiles) -> list[Block]:
    """The first-screen warning of a model trained on synthetic images (whatever images it was scored on)."""
    if not synthetic_model(files):
        return []
    return [banner(
        "warning", Bold("Model trained on synthetic data, no medical meaning."), " The checkpoint was trained on"
        " images drawn by ", Code("cxr.data.synthetic"), " (e.g. by ", Code("cxr demo"), "), not on X-rays: the"
        " numbers below show what the pipeline produces and say nothing about chest X-rays.")]


def evaluated(files: RunFiles) -> list[Block]:
    """What this folder is: the checkpoint, its classes, and where the internal test row comes from."""
    metrics = files.metrics or {}
    blocks: list[Block] = [Heading(2, "Evaluated checkpoint"), para(
        Code(plain(metrics.get("checkpoint"))), " (classes ", ", ".join(metrics.get("classes") or []) or "n/a",
        "), evaluated by ", Code("cxr evaluate --checkpoint"), ". This folder holds that evaluation, not a "
        "training run: settings, split and training history are in the checkpoint's run folder.")]
    source = ((metrics.get("external") or {}).get("internal_from"))
    if source:
        blocks.append(para("The external table's internal test rows are the test split of the checkpoint's run, "
                           "read from ", Code(plain(source)), "."))
    return blocks
