"""A stratified, group-aware, reproducible train/val/test split -> split.csv.

Images that must stay together form a group: a manifest `group` (e.g. a patient id), exact
duplicates, and near duplicates (perceptual hash, see `cxr.data.audit`), joined transitively. A
group is placed in one split as a whole, so no picture of one patient or study leaks between train
and test. Exact duplicates filed under different classes are left out (their label is unknowable)
and reported, as are unreadable files.

Per class, the target counts are the ratios applied with the largest-remainder method. Groups are
placed largest first (random order within a size, from the seed) into the split where they add the
least overshoot over the targets, preferring the split that is relatively furthest from its target.
With singleton groups every class hits its targets exactly, i.e. within one image of the ratios.

The result is a pure function of (file list, labels, groups, pixels, ratios, seed): everything is
sorted before the seeded generator is used, so the CSV is byte-identical whatever order the
filesystem lists files in.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import defaultdict
from typing import Any

import numpy as np

from cxr.checks import validate_ratios
from cxr.data.audit import AuditReport, audit
from cxr.data.discover import Discovery
from cxr.data.hashes import DEFAULT_NEAR_THRESHOLD, NEAR_METHOD, PHASH_BITS, UnionFind
from cxr.data.multilabel import finding_counts, targets
from cxr.data.split_multilabel import assign_groups_multilabel
from cxr.rundir import SPLITS, SplitRow, split_counts

log = logging.getLogger(__name__)

_GROUP_ID_HEX = 10  # hex digits of the group id (40 bits: collisions are negligible)


def largest_remainder(n: int, ratios: tuple[float, ...]) -> list[int]:
    """Split `n` into integer parts proportional to `ratios` that sum to `n` (Hamilton's method);
    ties of the remainders go to the earlier split."""
    exact = [n * r for r in ratios]
    parts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(ratios)), key=lambda i: (-(exact[i] - parts[i]), i))
    for i in by_remainder[: n - sum(parts)]:
        parts[i] += 1
    return parts


def make_split(
    discovery: Discovery,
    ratios: tuple[float, float, float] = (0.7, 0.1, 0.2),
    seed: int = 123,
    near_threshold: int = DEFAULT_NEAR_THRESHOLD,
    progress: bool = True,
    *,
    audit_report: AuditReport | None = None,
) -> tuple[list[SplitRow], dict[str, Any]]:
    """Split `discovery` into train/val/test rows (sorted by path) and a report of what was done.

    `audit_report` reuses an audit of the same discovery (and threshold) instead of decoding again.
    """
    ratios = validate_ratios(ratios)
    if audit_report is None:
        audit_report = audit(discovery, near_threshold=near_threshold, progress=progress)
    near_threshold = audit_report.near_threshold
    groups_of = {s.path: s.group for s in discovery.samples}
    masks_of = {s.path: s.mask for s in discovery.samples}
    records = sorted(audit_report.records, key=lambda r: r.path)

    excluded_paths = {r.path for r in records if not r.ok}
    cross = [g for g in audit_report.duplicate_groups if g.cross_class]
    excluded_paths.update(p for g in cross for p in g.paths)
    kept = [r for r in records if r.path not in excluded_paths]
    index = {r.path: i for i, r in enumerate(kept)}

    uf = UnionFind(len(kept))
    by_manifest_group: dict[str, int] = {}
    for i, record in enumerate(kept):
        group = groups_of.get(record.path)
        if group is not None:
            uf.union(by_manifest_group.setdefault(group, i), i)
    for dup in [*audit_report.duplicate_groups, *audit_report.near_duplicate_groups]:
        members = [index[p] for p in dup.paths if p in index]
        for other in members[1:]:
            uf.union(members[0], other)

    classes = list(discovery.classes)
    components = uf.components()
    group_ids = [_group_id(kept[m[0]].path) for m in components]
    labels = [r.label for r in kept]
    if discovery.task == "multilabel":  # iterative stratification over the findings
        assignment = assign_groups_multilabel(components, targets(labels, classes)[0], ratios, seed)
    else:
        assignment = _assign_groups(components, labels, classes, ratios, seed)

    rows = []
    for component, gid, split in zip(components, group_ids, assignment, strict=True):
        rows.extend(SplitRow(kept[i].path, kept[i].label, split, gid, masks_of.get(kept[i].path)) for i in component)
    rows.sort(key=lambda r: r.path)

    counts = finding_counts(rows, classes) if discovery.task == "multilabel" else split_counts(rows, classes)
    report = _report(counts, len(rows), ratios, seed, near_threshold, components, records, cross)
    report["task"] = discovery.task
    log.info(
        "split %d images into %s (%d groups; %d excluded)",
        len(rows),
        ", ".join(f"{s} {sum(report['counts'][s].values())}" for s in SPLITS),
        len(components),
        len(records) - len(rows),
    )
    return rows, report


def _group_id(first_path: str) -> str:
    """A stable id from the group's first path, so it does not change when other files come and go."""
    return "g" + hashlib.sha1(first_path.encode("utf-8")).hexdigest()[:_GROUP_ID_HEX]


def _assign_groups(
    components: list[list[int]],
    labels: list[str],
    classes: list[str],
    ratios: tuple[float, float, float],
    seed: int,
) -> list[str]:
    """Place each group (list of sample indices) into a split; returns one split name per group."""
    totals: dict[str, int] = defaultdict(int)
    for label in labels:
        totals[label] += 1
    targets = {c: largest_remainder(totals[c], ratios) for c in classes}
    current = {c: [0] * len(SPLITS) for c in classes}

    rng = np.random.default_rng(seed)
    shuffled = [int(i) for i in rng.permutation(len(components))]
    order = sorted(shuffled, key=lambda g: -len(components[g]))  # stable: random within a size

    assignment = [""] * len(components)
    for g in order:
        need: dict[str, int] = defaultdict(int)
        for i in components[g]:
            need[labels[i]] += 1
        best = min(range(len(SPLITS)), key=lambda s: _placement_cost(need, s, targets, current))
        for label, k in need.items():
            current[label][best] += k
        assignment[g] = SPLITS[best]
    return assignment


def _placement_cost(
    need: dict[str, int], s: int, targets: dict[str, list[int]], current: dict[str, list[int]]
) -> tuple[int, float, int]:
    """(added overshoot over the targets, minus the relative room left, split index): lower is better."""
    overshoot = 0
    room = 0.0
    for label, k in need.items():
        target, have = targets[label][s], current[label][s]
        overshoot += max(0, have + k - target) - max(0, have - target)
        room += k * (target - have) / max(target, 1)
    return overshoot, -room, s


def _report(
    counts: dict[str, dict[str, int]],
    n_rows: int,
    ratios: tuple[float, float, float],
    seed: int,
    near_threshold: int,
    components: list[list[int]],
    records: list,
    cross: list,
) -> dict[str, Any]:
    classes = list(counts[SPLITS[0]])
    per_class_total = {c: sum(counts[s][c] for s in SPLITS) for c in classes}
    deviation = {
        c: max(
            (abs(counts[s][c] - per_class_total[c] * r) for s, r in zip(SPLITS, ratios, strict=True)),
            default=0.0,
        )
        for c in classes
    }
    sizes = [len(c) for c in components]
    return {
        "ratios": list(ratios),
        "seed": seed,
        "near_duplicates": {"method": NEAR_METHOD, "bits": PHASH_BITS, "threshold": near_threshold},
        "n_images": len(records),
        "n_rows": n_rows,
        "counts": counts,
        "max_deviation_from_ratio": {c: round(d, 3) for c, d in deviation.items()},
        "groups": {
            "total": len(components),
            "multi_member": sum(size > 1 for size in sizes),
            "largest": max(sizes, default=0),
        },
        "excluded_cross_class_duplicates": [g.to_json() for g in cross],
        "excluded_unreadable": [{"path": r.path, "reason": r.reason} for r in records if not r.ok],
    }
