"""The automatic-lungs section: where the built-in lung segmenter made the masks (`data.lungs: auto`),
how many per set, the share its quality control flagged `suspect`, and a grid of masks outlined on
their images. Reads `lungs.json` and `figures/lungs_auto.png` (`cxr.study.auto_lungs`)."""

from __future__ import annotations

from typing import Any

from cxr.errors import CxrError
from cxr.report.blocks import Block, Bold, Code, Heading, Image, Table, para
from cxr.report.format import plain
from cxr.report.runfiles import RunFiles
from cxr.rundir import read_json

LUNGS_JSON = "lungs.json"  # in the run folder
GRID_FIGURE = "figures/lungs_auto.png"
_STEM = "lungs_auto"
_SHOWN = 5  # suspect images named


def claims_figure(stem: str) -> bool:
    """Whether a figure of figures/ belongs to this section."""
    return stem == _STEM


def _share(part: Any, whole: Any) -> str:
    if not isinstance(part, int) or not isinstance(whole, int) or whole <= 0:
        return "n/a"
    return f"{100 * part / whole:.1f}%"


def _read(files: RunFiles) -> dict[str, Any] | None:
    path = files.run_dir / LUNGS_JSON
    if not path.is_file():
        return None
    try:
        doc = read_json(path)
    except CxrError as exc:
        files.problems[LUNGS_JSON] = str(exc)
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("sets"), dict) else None


def lungs(files: RunFiles) -> list[Block]:
    """Automatic lung masks: counts per set, the suspect share, a few suspect images, the grid."""
    doc = _read(files)
    if doc is None:
        return []
    model = str(doc.get("model") or "")
    blocks: list[Block] = [Heading(2, "Automatic lung masks"), para(
        "Where no lung mask or box was given, the built-in lung segmenter made one (", Code("data.lungs: auto"),
        f"; weights sha256 {model[:12] or 'n/a'}, masks cached by image bytes). Each mask's quality control (lung "
        "area, connected parts, left/right balance, confidence) flags it ", Bold("ok"), " or ", Bold("suspect"),
        ": suspect masks are left out of the shortcut audit, and a lung crop uses the whole image for them. ",
        Code("--lungs masks"), " uses only given masks, ", Code("--lungs none"), " none.")]
    rows, suspects = [], []
    for name, entry in doc["sets"].items():
        if not isinstance(entry, dict):
            continue
        made = (entry.get("auto") or 0) + (entry.get("suspect") or 0)
        rows.append((plain(name), plain(entry.get("images")), plain(entry.get("given")), plain(made),
                     plain(entry.get("suspect")), _share(entry.get("suspect"), made)))
        suspects += [f"{name}: {s.get('path')} ({s.get('reason') or 'suspect'})"
                     for s in entry.get("suspect_images") or [] if isinstance(s, dict)]
    blocks.append(Table(("Set", "Images", "Given masks/boxes", "Automatic", "Suspect", "Share suspect"), tuple(rows)))
    if suspects:
        blocks.append(para(Bold("Suspect: "), "; ".join(suspects[:_SHOWN])
                           + (f"; and {len(suspects) - _SHOWN} more" if len(suspects) > _SHOWN else "") + "."))
    grid = doc.get("grid") if isinstance(doc.get("grid"), dict) else None
    figure = files.run_dir / str((grid or {}).get("figure") or GRID_FIGURE)
    if figure.is_file():
        blocks.append(Image(figure, files.rel(figure), "Automatic lung masks (outline in green; a red frame and "
                            "outline: flagged suspect)"))
    return blocks
