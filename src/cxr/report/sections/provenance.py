"""The provenance section: the software, code version, machine and data of every start of the run."""

from __future__ import annotations

from typing import Any

from cxr.report.blocks import Block, Code, Heading, Table, not_available, para
from cxr.report.format import fmt_duration, plain
from cxr.report.runfiles import RunFiles

SHOWN_VERSIONS = ("cxr", "torch", "torchvision", "python", "numpy", "scikit-learn", "timm", "onnxruntime")


def _commit(git: Any) -> str:
    if not isinstance(git, dict) or not git.get("commit"):
        return "n/a (not a git checkout)"
    return f"{str(git['commit'])[:12]}{' (uncommitted changes)' if git.get('dirty') else ' (clean)'}"


def _command(command: Any) -> str:
    return " ".join(str(c) for c in command) if isinstance(command, list) and command else "n/a"


def provenance(files: RunFiles) -> list[Block]:
    """Provenance: versions, git commit, device and data digest of the last start, then every attempt."""
    blocks: list[Block] = [Heading(2, "Provenance")]
    record = files.provenance
    attempts = [a for a in (record or {}).get("attempts") or [] if isinstance(a, dict)]
    if not attempts:
        why = files.problems.get(files.run.provenance.name, "provenance.json has no attempts")
        blocks.append(not_available("Provenance", why))
        return blocks
    last = attempts[-1]
    versions = last.get("versions") if isinstance(last.get("versions"), dict) else {}
    data = (record or {}).get("data") if isinstance((record or {}).get("data"), dict) else {}
    rows = [(name, plain(versions[name])) for name in SHOWN_VERSIONS if name in versions]
    rows += [
        ("git commit", _commit(last.get("git"))),
        ("device", plain(last.get("device"))),
        ("host, platform", f"{plain(last.get('host'))}, {plain(last.get('platform'))}"),
        ("data", plain(data.get("root"))),
        ("images", plain(data.get("images"))),
        ("synthetic data", "yes" if data.get("synthetic") else "no"),
        ("data digest (SHA-256 of split.csv)", plain(data.get("split_sha256"))),
    ]
    blocks.append(para("How this run was made (from ", Code("provenance.json"), "; the last start of the run):"))
    blocks.append(Table(("Item", "Value"), tuple(rows)))
    blocks.append(para(f"Attempts: {len(attempts)} (a resumed run adds one per start)."))
    attempt_rows = tuple(
        (str(i), plain(a.get("started")), fmt_duration(a.get("seconds")), plain(a.get("device")),
         _commit(a.get("git")), _command(a.get("command")))
        for i, a in enumerate(attempts, start=1)
    )
    blocks.append(Table(("#", "Started (UTC)", "Wall time", "Device", "git commit", "Command"), attempt_rows))
    return blocks
