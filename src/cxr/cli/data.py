"""`cxr data ...` subcommands: inspect a dataset, split it, preview its training augmentation."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from cxr.cli._common import add_command, non_negative_int, positive_int, writable_output
from cxr.config import DataConfig, EvalConfig, allowed_values, load_config
from cxr.data.audit import AuditReport
from cxr.data.hashes import DEFAULT_NEAR_THRESHOLD, NEAR_METHOD, PHASH_BITS
from cxr.errors import CxrError
from cxr.rundir import SPLITS

_SHOWN_GROUPS = 10  # duplicate groups printed in full; the JSON has them all
_SHOWN_SIZES = 3  # most common image sizes printed per class


def register(sub: argparse._SubParsersAction) -> None:
    """Add `cxr data {inspect,split,augment-samples}` to the `cxr` parser."""
    group = add_command(sub, "data", None, "inspect, split and preview a dataset")
    data_sub = group.add_subparsers(dest="data_command", metavar="COMMAND", help="what to do with the dataset")

    p = add_command(
        data_sub,
        "inspect",
        cmd_inspect,
        "check a dataset: class counts, sizes, modes, unreadable files, duplicates; draw its figures",
    )
    p.add_argument(
        "path", help="dataset folder (Kaggle layouts, class-per-folder) or CSV manifest path,label[,group]"
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="write the full report as JSON")
    p.add_argument(
        "--figures", type=Path, metavar="DIR", help="write bar_chart.png, pie_chart.png, dataset_images.png"
    )
    p.add_argument("--strict", action="store_true", help="exit with status 1 if any file is unreadable")
    p.add_argument("--masks", type=Path, metavar="DIR",
                   help="folder of lung masks matched to the images by path or file name (checked against them)")
    p.add_argument("--boxes", type=Path, metavar="FILE", help="CSV path,x0,y0,x1,y1 of lung bounding boxes")
    p.add_argument(
        "--grid-per-class",
        type=positive_int,
        default=EvalConfig().grid_per_class,
        metavar="N",
        help="images per class in the sample grid",
    )
    _add_threshold(p)

    p = add_command(data_sub, "split", cmd_split, "write a stratified, group-aware train/val/test split.csv")
    p.add_argument("path", help="dataset folder or CSV manifest")
    p.add_argument(
        "--out", type=Path, required=True, metavar="FILE", help="split CSV to write (path,label,split,group)"
    )
    p.add_argument(
        "--ratios",
        type=float,
        nargs="+",
        default=list(DataConfig().ratios),
        metavar="R",
        help=f"train, val and test fractions: {allowed_values('data.ratios')}",
    )
    p.add_argument("--seed", type=int, default=DataConfig().split_seed, help="seed of the split")
    p.add_argument("--report", type=Path, metavar="FILE", help="also write the split report as JSON")
    _add_threshold(p)

    p = add_command(
        data_sub,
        "augment-samples",
        cmd_augment_samples,
        "save N augmented training images (the seed's aug_images/) to look at the augmentation",
    )
    p.add_argument("path", help="dataset folder or CSV manifest")
    p.add_argument("--n", type=positive_int, default=EvalConfig().aug_samples, help="number of images")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the PNGs")
    p.add_argument("--seed", type=int, default=0, help="seed of the image choice and augmentation")
    p.add_argument(
        "--config", type=Path, metavar="FILE", help="run config YAML whose augment section is used"
    )


def _out(text: str = "") -> None:
    """A result line on stdout (logs and progress bars go to stderr)."""
    sys.stdout.write(text + "\n")


def _add_threshold(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--near-threshold",
        type=non_negative_int,
        default=DEFAULT_NEAR_THRESHOLD,
        metavar="N",
        help=f"max Hamming distance (of {PHASH_BITS} bits) between perceptual hashes of near duplicates",
    )


# ------------------------------------------------------------------------------------------ inspect


def cmd_inspect(args: argparse.Namespace) -> int:
    """Audit the dataset, print a summary, optionally write JSON and figures."""
    from cxr.data.audit import audit
    from cxr.data.discover import discover
    from cxr.data.masks import with_regions

    writable_output(args.json)
    writable_output(args.figures, folder=True)
    discovery = with_regions(discover(args.path), args.masks, args.boxes)
    report = audit(discovery, near_threshold=args.near_threshold, progress=True)
    _print_inspect(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_json(), indent=2) + "\n")
        _out(f"\nreport written to {args.json}")
    if args.figures:
        from cxr.report.dataset_figures import write_dataset_figures

        readable = [r for r in report.records if r.ok]
        paths = write_dataset_figures(
            report.root, readable, args.figures, counts=report.class_counts(), per_class=args.grid_per_class
        )
        _out(f"figures written: {', '.join(str(p) for p in paths)}")
    warnings = report.warnings()
    if warnings:
        _out("\nwarnings:")
        for line in warnings:
            _out(f"  - {line}")
    if args.strict and report.unreadable:
        _out(f"\n--strict: {len(report.unreadable)} unreadable file(s), exiting with status 1")
        return 1
    return 0


def _print_regions(regions: dict) -> None:
    """The lung-mask check of `cxr data inspect`."""
    area = regions.get("area_fraction") or {}
    share = f"; lung area {area['mean']:.0%} of the image on average" if area else ""
    _out(f"lung regions: {regions['with_region']} image(s) ({regions['masks']} masks, {regions['boxes']} boxes), "
         f"{regions['without_region']} without; {regions['scaled_to_image']} mask(s) scaled to their image's size, "
         f"{len(regions['empty'])} empty, {len(regions['unusable'])} not usable{share}")
    for item in regions["unusable"][:_SHOWN_GROUPS]:
        _out(f"  {item['path']}: {item['reason']}")


def _print_inspect(report: AuditReport) -> None:
    stats = report.class_stats()
    _out(
        f"dataset: {report.root} ({report.layout} layout), {len(report.records)} images, "
        f"{len(report.classes)} classes, read in {report.seconds:.1f} s\n"
    )
    rows = [("class", "images", "readable", "sizes (WxH)", "modes")]
    for name, s in stats.items():
        rows.append(
            (name, str(s.count), str(s.readable), _top(s.sizes, _SHOWN_SIZES), _top(s.modes, _SHOWN_SIZES))
        )
    total_sizes = sum((s.sizes for s in stats.values()), Counter())
    total_modes = sum((s.modes for s in stats.values()), Counter())
    rows.append(
        (
            "total",
            str(len(report.records)),
            str(sum(s.readable for s in stats.values())),
            _top(total_sizes, _SHOWN_SIZES),
            _top(total_modes, _SHOWN_SIZES),
        )
    )
    _print_table(rows, left=(0, 3, 4))

    unreadable = report.unreadable
    _out(f"\nunreadable files: {len(unreadable)}")
    for record in unreadable:
        _out(f"  {record.path}: {record.reason}")

    exact = report.duplicate_groups
    cross = sum(g.cross_class for g in exact)
    _out(
        f"\nexact duplicates (same decoded pixels): {len(exact)} group(s), "
        f"{sum(len(g.paths) for g in exact)} images, {cross} group(s) across classes"
    )
    _print_groups(exact)
    near = report.near_duplicate_groups
    _out(
        f"near duplicates ({NEAR_METHOD} {PHASH_BITS}-bit, Hamming <= {report.near_threshold}): "
        f"{len(near)} group(s), {sum(len(g.paths) for g in near)} images, "
        f"{sum(g.cross_class for g in near)} group(s) across classes"
    )
    _print_groups(near)
    if report.regions is not None:
        _print_regions(report.regions)
    if report.skipped_hidden or report.skipped_non_image:
        _out(f"skipped: {report.skipped_hidden} hidden, {report.skipped_non_image} non-image file(s)")
    if report.unknown_folders:
        _out(f"folders without images (not classes): {', '.join(report.unknown_folders)}")


def _top(counter: Counter, k: int) -> str:
    if not counter:
        return "-"
    items = counter.most_common()
    text = ", ".join(f"{key} ({n})" for key, n in items[:k])
    return text + (f", +{len(items) - k} more" if len(items) > k else "")


def _print_table(rows: list[tuple[str, ...]], left: tuple[int, ...] = (0,)) -> None:
    """Aligned columns: the `left` columns left-aligned (text), the others right-aligned (numbers)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        cells = [
            c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        _out("  ".join(cells).rstrip())
        if n == 0:
            _out("  ".join("-" * w for w in widths))


def _print_groups(groups: list) -> None:
    for group in groups[:_SHOWN_GROUPS]:
        members = ", ".join(f"{p} [{label}]" for p, label in zip(group.paths, group.labels, strict=True))
        _out(f"  {'CROSS-CLASS ' if group.cross_class else ''}{members}")
    if len(groups) > _SHOWN_GROUPS:
        _out(f"  ... {len(groups) - _SHOWN_GROUPS} more (see --json)")


# -------------------------------------------------------------------------------------------- split


def cmd_split(args: argparse.Namespace) -> int:
    """Discover, audit and split; write the CSV and print per-class counts."""
    from cxr.data.discover import discover
    from cxr.data.split import make_split, validate_ratios
    from cxr.rundir import write_split_csv

    ratios = validate_ratios(args.ratios)  # before the slow part
    writable_output(args.out)
    writable_output(args.report)
    discovery = discover(args.path)
    rows, report = make_split(
        discovery, ratios, seed=args.seed, near_threshold=args.near_threshold, progress=True
    )
    write_split_csv(rows, args.out)
    table = [("class", *SPLITS, "total")]
    for name in discovery.classes:
        counts = [report["counts"][s][name] for s in SPLITS]
        table.append((name, *map(str, counts), str(sum(counts))))
    totals = [sum(report["counts"][s].values()) for s in SPLITS]
    table.append(("total", *map(str, totals), str(sum(totals))))
    _print_table(table)
    groups = report["groups"]
    _out(
        f"\n{groups['total']} groups ({groups['multi_member']} with several images, largest {groups['largest']})"
    )
    for group in report["excluded_cross_class_duplicates"]:
        _out(f"excluded (same pixels, different classes): {', '.join(group['paths'])}")
    for item in report["excluded_unreadable"]:
        _out(f"excluded (unreadable): {item['path']}: {item['reason']}")
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=2) + "\n")
    _out(f"split written to {args.out}")
    return 0


# ---------------------------------------------------------------------------------- augment-samples


def cmd_augment_samples(args: argparse.Namespace) -> int:
    """Write N augmented images from the dataset with the (configured) training augmentation."""
    from cxr.data.discover import discover

    try:
        from cxr.data.samples import write_augmented_samples
    except ImportError as exc:  # written by another part of the project; may be missing in a partial install
        raise CxrError(f"augmented samples are not available in this installation: {exc}") from None
    cfg = load_config(args.config)
    discovery = discover(args.path)
    written = write_augmented_samples(
        discovery.root, discovery.samples, args.n, args.out, cfg.augment, cfg.data.image_size, args.seed
    )
    _out(f"{len(written)} augmented images written to {args.out}")
    return 0
