"""Where a run's results came from: software versions, the code's git commit, the machine, the data.

Each start of a run (the first, and every `--resume`) appends an attempt to the run's
provenance.json; the data digest (SHA-256 of split.csv, so of the exact file list, labels, splits
and groups) is recorded once. metrics.json and the report carry the whole record. Torch-free: the
versions are read from the installed packages' metadata.
"""

from __future__ import annotations

import datetime
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from cxr.hashing import file_sha256
from cxr.rundir import RunDir, read_json, write_json

PACKAGES = ("cxr", "torch", "torchvision", "numpy", "scikit-learn", "timm", "onnxruntime", "openvino")
GIT_TIMEOUT = 5.0  # seconds


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape results (absent ones are left out)."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_commit(where: Path | None = None) -> dict[str, Any] | None:
    """The commit (and whether the tree has changes) of the git checkout holding `where` (cxr's source)."""
    folder = Path(where or Path(__file__).resolve().parent)

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, check=True,
                              timeout=GIT_TIMEOUT).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def this_attempt(device: str | None = None) -> dict[str, Any]:
    """The record of one start of a run: when, what software, which machine and command."""
    return {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "versions": package_versions(),
        "git": git_commit(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "device": device,
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else [],
        "seconds": 0.0,
    }


class Provenance:
    """The provenance.json of a run: every attempt, the data digest, and the wall time so far."""

    def __init__(self, run: RunDir, *, resume: bool) -> None:
        self.run = run
        previous = read_json(run.provenance) if resume and run.provenance.is_file() else {}
        self.attempts: list[dict[str, Any]] = list(previous.get("attempts", []))
        self.data: dict[str, Any] = dict(previous.get("data", {}))
        self.current = this_attempt()
        self.attempts.append(self.current)
        self._start = time.perf_counter()

    def record_data(self, root: Path | str, images: int, *, synthetic: bool = False) -> None:
        """The digest of the split (split.csv must be written), where the images were, and whether
        they are synthetic (`cxr.data.synthetic`, no medical meaning)."""
        self.data = {"root": str(root), "images": int(images), "synthetic": bool(synthetic),
                     "split_sha256": file_sha256(self.run.split)}

    def set_device(self, device: str) -> None:
        self.current["device"] = device

    def wall_seconds(self) -> float:
        """Wall time of every attempt: earlier ones up to their last save, this one until now."""
        self.current["seconds"] = round(time.perf_counter() - self._start, 3)
        return float(sum(a.get("seconds", 0.0) for a in self.attempts))

    def to_json(self) -> dict[str, Any]:
        self.wall_seconds()
        return {"attempts": self.attempts, "data": self.data}

    def save(self) -> None:
        write_json(self.run.provenance, self.to_json())
