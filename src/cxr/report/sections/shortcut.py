"""The shortcut-audit section (and its first-screen banner): where Grad-CAM looks relative to the
lung masks, the masked-region test with its verdict sentence, and the gallery of the images whose
attention lies most outside the lungs. Reads metrics.json["shortcut"] and each
metrics.json["external"]["sets"][NAME]["shortcut"] (`cxr.study.shortcut`)."""

from __future__ import annotations

from typing import Any

from cxr.report.blocks import Block, Bold, Gallery, Heading, Image, Para, Table, banner, para
from cxr.report.format import fmt, fmt_ci, plain
from cxr.report.runfiles import RunFiles

GALLERY_PREFIX = "shortcut_"  # the audit's figures: shown here, not among "other figures"
FILLS = {"median": "each image's median pixel value", "zero": "black (0)"}


def claims_figure(stem: str) -> bool:
    """Whether a figure of figures/ belongs to this section."""
    return stem.startswith(GALLERY_PREFIX)


def audited_sets(files: RunFiles) -> list[tuple[str, dict[str, Any]]]:
    """(label, audit) of the test split and of every external set that was audited."""
    metrics = files.metrics or {}
    out = []
    if isinstance(metrics.get("shortcut"), dict):
        out.append(("Internal test split", metrics["shortcut"]))
    for name, entry in ((metrics.get("external") or {}).get("sets") or {}).items():
        if isinstance(entry, dict) and isinstance(entry.get("shortcut"), dict):
            out.append((f"External set {name}", entry["shortcut"]))
    return out


def _pct(value: Any) -> str:
    return f"{100 * float(value):.0f}%" if isinstance(value, int | float) else "n/a"


def _acc(entry: dict[str, Any] | None) -> str:
    entry = entry or {}
    return f"{fmt(entry.get('accuracy'))} ({fmt_ci(entry.get('ci'))})"


def attention_sentence(attention: dict[str, Any]) -> Para:
    """Where Grad-CAM's energy lies, against an evenly spread map."""
    diff = attention.get("difference")
    where = "less" if isinstance(diff, int | float) and diff < 0 else "more"
    return para(
        Bold("Attention:"), f" on average {_pct(attention.get('mean_share'))} of the Grad-CAM energy lies inside the "
        f"lungs; an evenly spread heatmap would put {_pct(attention.get('mean_area'))} there (the lungs' area), so "
        f"the model looks {where} at the lungs than an even map (difference {fmt(diff)}, 95% CI "
        f"{fmt_ci(attention.get('difference_ci'))}, {plain(attention.get('n'))} images"
        + (f", {attention['undefined']} without a usable mask or heatmap" if attention.get("undefined") else "")
        + ").")


def occlusion_sentence(occlusion: dict[str, Any]) -> Para:
    """The masked-region test's verdict, with its numbers and intervals."""
    base, lungs, outside = occlusion.get("none"), occlusion.get("lungs"), occlusion.get("outside")
    chance = fmt(occlusion.get("chance"))
    fill = FILLS.get(str(occlusion.get("fill")), plain(occlusion.get("fill")))
    parts: list[Any] = [Bold("Masked-region test:"), f" accuracy {_acc(base)} with the lungs visible (chance {chance})"]
    if lungs:
        parts.append(f"; {_acc(lungs)} with the lungs blanked")
    if outside:
        parts.append(f"; {_acc(outside)} with everything outside the lungs blanked")
    parts.append(f" (blanked pixels: {fill}). ")
    blanked = occlusion.get("blanked") or {}
    control = occlusion.get("control") or {}
    flagged = [name for name, e in (blanked.get("per_class") or {}).items() if e.get("flag")]
    if lungs and blanked.get("flag") is None:
        parts.append("No Normal image with the lungs blanked to compare with: the per-class test was not decided.")
    elif lungs and flagged:
        parts.append(Bold(f"With the lungs blanked, {', '.join(flagged)} images are still called so far more often "
                          f"than blanked Normal images ({plain(control.get('source'))}): the model uses something "
                          "outside the lungs (a shortcut)."))
    elif lungs:
        parts.append(f"With the lungs blanked, no disease class is called itself well above the rate of blanked "
                     f"Normal images ({plain(control.get('source'))}): no sign that it uses what lies outside them.")
    if outside and occlusion.get("informative"):
        kept = outside.get("drop") is not None and outside["drop"] <= 0.10
        parts.append(" With only the lungs left it " + ("keeps its accuracy: the lungs alone suffice." if kept
                     else "loses accuracy: it needs what lies outside them."))
    return para(*parts)


def _auto_text(lungs: Any) -> str:
    """', 5 of them with a suspect automatic mask; 12 masks made automatically' (data.lungs auto)."""
    if not isinstance(lungs, dict) or not lungs.get("model"):
        return ""
    text = f"; {plain(lungs.get('auto'))} lung masks were made automatically"
    return text + (f", {plain(lungs.get('suspect'))} flagged suspect and left out" if lungs.get("suspect") else "")


def blanked_table(occlusion: dict[str, Any]) -> Table | None:
    """Per disease class: the share called itself with the lungs blanked against the control's share."""
    per_class = (occlusion.get("blanked") or {}).get("per_class") or {}
    if not per_class:
        return None
    rows = tuple((name, plain(e.get("n")), f"{fmt(e.get('rate'))} ({fmt_ci(e.get('ci'))})",
                  f"{fmt(e.get('control_rate'))} ({fmt_ci(e.get('control_ci'))})",
                  f"{fmt(e.get('difference'))} ({fmt_ci(e.get('difference_ci'))})",
                  "yes" if e.get("flag") else "no" if e.get("flag") is not None else "n/a")
                 for name, e in per_class.items())
    return Table(("Class (lungs blanked)", "n", "Called itself (95% CI)", "Blanked Normals called it (95% CI)",
                  "Difference (95% Newcombe CI)", "Flagged"), rows)


def _group_table(attention: dict[str, Any]) -> Table:
    rows = []
    for name, group in (attention.get("per_class") or {}).items():
        rows.append((f"true {name}", plain(group.get("n")), _pct(group.get("mean_share")), _pct(group.get("mean_area")),
                     fmt(group.get("difference"))))
    for name, group in (attention.get("by_prediction") or {}).items():
        rows.append((f"{name} predictions", plain(group.get("n")), _pct(group.get("mean_share")),
                     _pct(group.get("mean_area")), fmt(group.get("difference"))))
    return Table(("Images", "n", "Grad-CAM energy in the lungs", "Even map (lung area)", "Difference"), tuple(rows))


def _verdict(audit: dict[str, Any]) -> Para:
    verdict = audit.get("verdict") or {}
    if verdict.get("flagged") is None:
        return para(Bold("Verdict: not decided"), " (nothing could be computed).")
    which = [name for name, key in (("attention", "attention_flag"), ("masked-region test", "occlusion_flag"))
             if verdict.get(key)]
    if verdict["flagged"]:
        return para(Bold("Verdict: FLAGGED as a likely shortcut"), f" (by the {' and the '.join(which)}).")
    return para(Bold("Verdict: not flagged"), " (neither signal of the rule below fired).")


def _gallery(files: RunFiles, audit: dict[str, Any]) -> list[Block]:
    images = []
    for item in audit.get("gallery") or []:
        path = files.run_dir / str(item.get("figure", ""))
        if path.is_file():
            caption = (f"{item.get('path')}: true {item.get('label')}, predicted {item.get('pred')}, "
                       f"{_pct(item.get('share'))} in the lungs (area {_pct(item.get('area'))})")
            images.append(Image(path, files.rel(path), caption))
    if not images:
        return []
    return [para("The images whose attention lies most outside the lungs (Grad-CAM heatmap, lung outline in green):"),
            Gallery(tuple(images))]


def shortcut(files: RunFiles) -> list[Block]:
    """Shortcut audit: per audited set the verdict, attention, masked-region test, tables and gallery."""
    blocks: list[Block] = [Heading(2, "Shortcut audit (lungs or elsewhere?)")]
    sets = audited_sets(files)
    if not sets:
        blocks.append(para("Not run: no test or external image has a usable lung mask or box (Kaggle v4 masks/ "
                           "folders, --masks DIR, --boxes FILE, a manifest mask/lung_box column, or the automatic "
                           "lungs of --lungs auto)."))
        return blocks
    for label, audit in sets:
        blocks.append(Heading(3, label))
        blocks.append(_verdict(audit))
        attention = audit.get("attention") or {}
        if attention.get("n"):
            blocks.append(attention_sentence(attention))
        if isinstance(audit.get("occlusion"), dict):
            blocks.append(occlusion_sentence(audit["occlusion"]))
            table = blanked_table(audit["occlusion"])
            if table is not None:
                blocks.append(table)
        blocks.append(para(f"{plain(audit.get('images'))} images audited (at most {plain(audit.get('max_images'))}, "
                           f"{plain(audit.get('selection'))}); {plain(audit.get('without_region'))} without a lung "
                           "mask or box were left out" + _auto_text(audit.get("lungs")) + "."))
        if attention.get("n"):
            blocks.append(_group_table(attention))
        blocks += _gallery(files, audit)
    rule = (sets[0][1].get("verdict") or {}).get("rule")
    if rule:
        blocks.append(para(Bold("Flag rule."), " ", rule, " Grad-CAM shares are correlational (a heatmap can be "
                           "unfaithful, e.g. for a frozen, randomly initialised backbone); the masked-region test is "
                           "causal."))
    return blocks


def shortcut_banner(files: RunFiles) -> list[Block]:
    """A first-screen warning when any audited set is flagged."""
    flagged = [label for label, audit in audited_sets(files) if (audit.get("verdict") or {}).get("flagged")]
    if not flagged:
        return []
    return [banner("danger", Bold("Shortcut audit: flagged"), f" on {', '.join(flagged)}. The model scores without "
                   "relying on the lungs; see the shortcut audit section before trusting any number below.")]
