"""`cxr evaluate`'s external validation and shortcut audit: its extra options, and the command when
it is given a run folder (`cxr evaluate RUN_DIR --external NAME=PATH --shortcut`) or extras beside
--checkpoint/--data."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cxr.cli.flags import entry_value
from cxr.config import LUNGS_CHOICES, OCCLUDE_CHOICES
from cxr.errors import CxrError

OCCLUDE_BOTH = "both"


def _say(text: object) -> None:
    sys.stdout.write(f"{text}\n")


def add_arguments(evaluate: argparse.ArgumentParser) -> None:
    """RUN_DIR and the external / shortcut options of `cxr evaluate`."""
    evaluate.add_argument("run_dir", nargs="?", type=Path, metavar="RUN_DIR",
                          help="a finished run: add the external sets and/or the shortcut audit to its metrics.json "
                               "and report, with its best.pt and its data (nothing else in it changes)")
    evaluate.add_argument("--external", action="append", type=entry_value("--external"), metavar="NAME=PATH",
                          help="also score this other data set (repeatable): a folder or CSV manifest, named NAME; "
                               "add ,masks=DIR ,boxes=FILE ,label_map=FILE for its lung masks, boxes or class names")
    evaluate.add_argument("--label-map", type=Path, metavar="FILE",
                          help="YAML 'their class name: our class' (or ': ignore') for the external sets")
    evaluate.add_argument("--shortcut", action="store_true",
                          help="the shortcut audit of the test images with lung masks or boxes (automatic ones where "
                               "none are given, see --lungs): Grad-CAM energy inside the lungs and the masked-region "
                               "test (lungs, then all else, blanked)")
    evaluate.add_argument("--lungs", choices=LUNGS_CHOICES, metavar="MODE",
                          help="where lung regions come from: auto = the given masks/boxes, else masks made by the "
                               "built-in lung segmenter (cached; suspect ones left out of the audit, a suspect lung "
                               "crop is the whole image); masks = only given ones; none = no lungs (default: the "
                               "checkpoint's data.lungs, auto)")
    evaluate.add_argument("--occlude", choices=(*OCCLUDE_CHOICES, OCCLUDE_BOTH),
                          help="the shortcut audit with only this masked-region test: blank the lungs, everything "
                               "outside them, or both in turn (blanked pixels: eval.occlude_fill, the image's median)")


def wants_extras(args: argparse.Namespace) -> bool:
    return bool(args.run_dir or args.external or args.shortcut or args.occlude)


def occlude_modes(args: argparse.Namespace) -> tuple[str, ...] | None:
    """The masked-region tests asked for: None (no audit), or the modes."""
    if args.occlude:
        return OCCLUDE_CHOICES if args.occlude == OCCLUDE_BOTH else (args.occlude,)
    return OCCLUDE_CHOICES if args.shortcut else None


def run_extras(args: argparse.Namespace, target: Path | None, create: bool = False) -> dict[str, Any]:
    """Add the asked-for evaluations to `target` (a run or, with `create`, an --out folder; None: print
    only) and print them."""
    from cxr.study.audits import add_evaluations, external_from_flags

    external = external_from_flags(args.external or [])
    added = add_evaluations(target, checkpoint=args.checkpoint, data=args.data, external=external,
                            label_map=str(args.label_map) if args.label_map else None, occlude=occlude_modes(args),
                            device=args.device, precision=args.precision, create=create, lungs=args.lungs)
    for line in summary_lines(added, [name for name, _ in args.external or []]):
        _say(line)
    return added


def cmd_run_dir(args: argparse.Namespace) -> int:
    """`cxr evaluate RUN_DIR ...`: the extras added to a finished run."""
    if args.out is not None:
        raise CxrError("with RUN_DIR the results go into RUN_DIR; --out is for --checkpoint/--data evaluations")
    if not (args.external or args.shortcut or args.occlude):
        raise CxrError(f"nothing to add to {args.run_dir}: give --external NAME=PATH, --shortcut or --occlude")
    run_extras(args, args.run_dir)
    _say(args.run_dir / "metrics.json")
    _say(args.run_dir / "report.html")
    return 0


def _ci(ci: Any) -> str:
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def summary_lines(added: dict[str, Any], names: list[str] | None = None) -> list[str]:
    """One line per external set (those in `names`, default all) and per shortcut audit."""
    lines = []
    for name, entry in ((added.get("external") or {}).get("sets") or {}).items():
        if names is not None and name not in names:
            continue
        m = entry["metrics"]
        worse = entry.get("worse_than_internal") or []
        recall = f"{m['macro_recall']:.3f}" if m.get("macro_recall") is not None else "n/a"
        accuracy = f"{m['accuracy']:.3f}" if m.get("accuracy") is not None else "n/a"
        shown = m["classes_present"] + [f"{c} (abnormal)" for c in m.get("foreign_present", [])]
        extra = "".join(f", {label} {m[key]:.3f}{_ci(m['ci'].get(key))}" for key, label in (
            ("called_normal", "called Normal"), ("abnormal_auroc", "abnormal vs Normal AUROC"))
            if m.get(key) is not None)
        lines.append(f"external {name} n={m['n']} ({', '.join(shown)}): accuracy {accuracy}"
                     f"{_ci(m['ci'].get('accuracy'))}, macro recall {recall}{_ci(m['ci'].get('macro_recall'))}{extra}"
                     + (f"; worse than the internal test: {', '.join(worse)}" if worse else "")
                     + (f"; {(entry.get('ood') or {}).get('flagged')} of {m['n']} flagged out of distribution"
                        if entry.get("ood") else ""))
        if entry.get("shortcut"):
            lines.append(_audit_line(f"external {name}", entry["shortcut"]))
    if added.get("shortcut"):
        lines.append(_audit_line("test", added["shortcut"]))
    return lines


def _audit_line(label: str, audit: dict[str, Any]) -> str:
    att, occ = audit.get("attention") or {}, audit.get("occlusion") or {}
    verdict = "FLAGGED" if (audit.get("verdict") or {}).get("flagged") else "not flagged"
    text = f"shortcut audit ({label}, {audit.get('images')} images): {verdict}"
    if att.get("mean_share") is not None:
        text += f"; Grad-CAM energy in the lungs {att['mean_share']:.2f} (an even map {att['mean_area']:.2f})"
    for mode in ("none", *OCCLUDE_CHOICES):
        if occ.get(mode):
            text += f"; accuracy, {mode if mode != 'none' else 'nothing'} blanked {occ[mode]['accuracy']:.3f}"
    return text
