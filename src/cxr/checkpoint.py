"""Checkpoint files: one dict, saved atomically, loaded without unpickling arbitrary objects.

Keys: format, model (state dict), optimizer (state dict or None), epoch, config (resolved run config
as a plain dict), classes, preprocessing, metrics, history (list of per-epoch dicts), extra.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxr.config import RunConfig, from_dict, to_dict
from cxr.errors import CxrError
from cxr.models.build import build_model
from cxr.rundir import atomic_write
from cxr.transforms import Preprocessing

FORMAT = "cxr-checkpoint/1"
REQUIRED_KEYS = ("format", "model", "config", "classes", "preprocessing")
_ZIP_MAGIC = b"PK\x03\x04"
DEFAULT_THRESHOLD = 0.5  # a finding is called present at this probability when validation chose no threshold


def save_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    config: RunConfig,
    classes: list[str],
    preprocessing: Preprocessing,
    epoch: int,
    optimizer: torch.optim.Optimizer | None = None,
    metrics: dict[str, Any] | None = None,
    history: list[dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the checkpoint atomically (`cxr.rundir.atomic_write`: temp file, fsync, rename)."""
    module = model.module if hasattr(model, "module") else model
    state = {
        "format": FORMAT,
        "model": module.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "epoch": int(epoch),
        "config": to_dict(config),
        "classes": list(classes),
        "preprocessing": preprocessing.to_dict(),
        "metrics": metrics or {},
        "history": history or [],
        "extra": extra or {},
    }
    return atomic_write(path, lambda fh: torch.save(state, fh))


def update_extra(path: str | Path, **entries: Any) -> Path:
    """Add entries to a saved checkpoint's `extra` (atomically): what is fitted after training, such as
    the multi-label thresholds, travels with the weights."""
    state = load_checkpoint(path)
    state["extra"] = {**(state.get("extra") or {}), **entries}
    return atomic_write(path, lambda fh: torch.save(state, fh))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict safely (`weights_only=True`) and check its record; errors name the file.

    A file that is not a checkpoint says what it is not (never PyTorch's advice to load it unsafely);
    a checkpoint missing keys, or whose classes or preprocessing record are invalid, is refused here
    with one CxrError rather than failing later inside PyTorch.
    """
    path = Path(path)
    if not path.is_file():
        raise CxrError(f"checkpoint not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise CxrError(f"{path} is not a cxr checkpoint: the file is empty (0 bytes)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any decoding failure is a bad file for the user
        raise CxrError(f"{path} is not a cxr checkpoint: {_unreadable_reason(path, exc)}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CxrError(f"{path} is not a cxr checkpoint (expected format {FORMAT!r}, found {found!r})")
    check_checkpoint(ckpt, path)
    return ckpt


def _unreadable_reason(path: Path, exc: Exception) -> str:
    """What a file that torch.load refused is not, without relaying PyTorch's message (which advises
    `weights_only=False`, i.e. running code from the file)."""
    if isinstance(exc, pickle.UnpicklingError) and "weights only" in str(exc).lower():
        return ("it holds Python objects other than tensors and plain values (a pickled model or other "
                "code); cxr only loads checkpoints it wrote")
    with path.open("rb") as fh:
        head = fh.read(len(_ZIP_MAGIC))
    if head == _ZIP_MAGIC:
        return f"a damaged or truncated PyTorch archive ({type(exc).__name__})"
    return "not a PyTorch file (neither a torch.save archive nor a pickle)"


def check_checkpoint(ckpt: dict[str, Any], path: str | Path) -> None:
    """Refuse a checkpoint dict that lacks a key or whose classes / preprocessing are invalid."""
    missing = [key for key in REQUIRED_KEYS if key not in ckpt]
    if missing:
        raise CxrError(f"{path}: checkpoint is missing {', '.join(map(repr, missing))} "
                       f"(a cxr checkpoint has {', '.join(REQUIRED_KEYS)})")
    if not isinstance(ckpt["model"], dict) or not ckpt["model"]:
        raise CxrError(f"{path}: checkpoint 'model' must be a non-empty state dict")
    classes = ckpt["classes"]
    if (not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes)
            or len(set(classes)) != len(classes)):
        raise CxrError(f"{path}: checkpoint 'classes' must be a list of distinct names, got {classes!r}")
    try:
        Preprocessing.from_dict(ckpt["preprocessing"])
    except CxrError as exc:
        raise CxrError(f"{path}: {exc}") from None


def config_of(ckpt: dict[str, Any]) -> RunConfig:
    """The run config stored in a checkpoint."""
    return from_dict(ckpt["config"], check_files=False)  # weights files need not exist where it is read


def is_multilabel(ckpt: dict[str, Any]) -> bool:
    """Whether the checkpoint's model scores findings (one sigmoid each) rather than one class (softmax)."""
    return ((ckpt.get("config") or {}).get("data") or {}).get("task") == "multilabel"


def thresholds_of(ckpt: dict[str, Any]) -> list[float]:
    """The per-finding decision thresholds chosen on validation (`extra["thresholds"]`); 0.5 where a
    finding had none (validation without both outcomes) or the checkpoint predates them."""
    classes = ckpt.get("classes") or []
    stored = (ckpt.get("extra") or {}).get("thresholds") or [None] * len(classes)
    if len(stored) != len(classes):
        raise CxrError(f"checkpoint holds {len(stored)} thresholds for {len(classes)} findings")
    return [DEFAULT_THRESHOLD if t is None else float(t) for t in stored]


def model_from_checkpoint(ckpt: dict[str, Any], source: str | Path = "checkpoint") -> nn.Module:
    """Rebuild the classifier of a checkpoint and load its weights (no pretrained download).

    Weights that do not fit the model the checkpoint's config describes (missing or unexpected
    tensors, a head sized for another number of classes) are one CxrError naming `source`.
    """

    try:
        cfg = config_of(ckpt)
        model = build_model(cfg.model, num_classes=len(ckpt["classes"]), load_weights=False)
        model.preprocessing = Preprocessing.from_dict(ckpt["preprocessing"])
    except CxrError as exc:
        raise CxrError(f"{source}: {exc}") from None
    problem = weights_mismatch(model.state_dict(), ckpt["model"])
    if problem:
        raise CxrError(f"{source}: the weights do not fit the {cfg.model.backbone} model for "
                       f"{len(ckpt['classes'])} classes {ckpt['classes']} that its config describes: {problem}")
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model


def weights_mismatch(expected: dict[str, Any], found: dict[str, Any], shown: int = 3) -> str:
    """'' when `found` has the keys and tensor shapes of `expected`, else a one-line description."""
    problems = []
    for key, tensor in expected.items():
        if key not in found:
            problems.append(f"{key} missing")
        elif hasattr(found[key], "shape") and tuple(found[key].shape) != tuple(tensor.shape):
            problems.append(f"{key} is {list(found[key].shape)}, the model needs {list(tensor.shape)}")
    problems += [f"unexpected {key}" for key in found if key not in expected]
    if not problems:
        return ""
    more = f" and {len(problems) - shown} more" if len(problems) > shown else ""
    return "; ".join(problems[:shown]) + more
