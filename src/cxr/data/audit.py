"""Check a dataset before training: readability, sizes and modes, exact and near duplicates.

Every image is decoded once (a thread pool: PIL and hashlib release the GIL while decoding and
hashing). From the decoded pixels come a SHA-1 of shape + pixel bytes (exact duplicates: the same
picture saved twice, even under another name or format) and a 256-bit perceptual hash (near
duplicates: re-encoded, resized, re-windowed or slightly altered copies of one radiograph).

Hashing and grouping live in `cxr.data.hashes`.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxr.data.discover import Discovery, Sample
from cxr.data.hashes import (
    DEFAULT_NEAR_THRESHOLD,
    NEAR_METHOD,
    PHASH_BITS,
    PHASH_FREQS,
    PHASH_THUMB,
    hamming_components,
    hashes_to_words,
    phash,
    pixel_sha1,
)
from cxr.data.masks import check_regions, region_warnings
from cxr.data.multilabel import label_names
from cxr.errors import ImageReadError
from cxr.io import read_image_with_info
from cxr.progress import Progress

log = logging.getLogger(__name__)

_MAX_WORKERS = 8


@dataclass(frozen=True)
class ImageRecord:
    """What decoding one file told us; `reason` is set (and the rest empty) when it is unreadable."""

    path: str
    label: str
    format: str | None = None
    mode: str | None = None
    width: int | None = None
    height: int | None = None
    sha1: str | None = None
    phash: bytes | None = None  # PHASH_BITS bits, big-endian
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


@dataclass(frozen=True)
class DuplicateGroup:
    """Two or more images that are the same picture (exact) or nearly so (near)."""

    paths: tuple[str, ...]
    labels: tuple[str, ...]

    @property
    def cross_class(self) -> bool:
        return len(set(self.labels)) > 1

    def to_json(self) -> dict[str, Any]:
        return {"paths": list(self.paths), "labels": list(self.labels), "cross_class": self.cross_class}


@dataclass
class ClassStats:
    """Per-class counts of images, readable images, sizes ("WxH"), modes and formats."""

    count: int = 0
    readable: int = 0
    sizes: Counter = field(default_factory=Counter)
    modes: Counter = field(default_factory=Counter)
    formats: Counter = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "readable": self.readable,
            "sizes": dict(sorted(self.sizes.items())),
            "modes": dict(sorted(self.modes.items())),
            "formats": dict(sorted(self.formats.items())),
        }


@dataclass
class AuditReport:
    """The result of `audit`; `to_json()` is what `cxr data inspect --json` writes."""

    root: Path
    layout: str
    classes: list[str]
    records: list[ImageRecord]
    duplicate_groups: list[DuplicateGroup]
    near_duplicate_groups: list[DuplicateGroup]
    near_threshold: int
    skipped_hidden: int = 0
    skipped_non_image: int = 0
    unknown_folders: list[str] = field(default_factory=list)
    seconds: float = 0.0
    regions: dict[str, Any] | None = None  # the lung-mask check (cxr.data.masks.check_regions), when any

    @property
    def unreadable(self) -> list[ImageRecord]:
        return [r for r in self.records if not r.ok]

    def class_counts(self) -> dict[str, int]:
        """Images per class (readable or not), in class order."""
        return {name: stats.count for name, stats in self.class_stats().items()}

    def class_stats(self) -> dict[str, ClassStats]:
        """Per class (multi-label: per finding, and `No Finding`) the images, readable ones, sizes, modes."""
        stats = {name: ClassStats() for name in self.classes}
        for record in self.records:
            names = [record.label] if record.label in stats else label_names(record.label)
            for name in names:
                entry = stats.setdefault(name, ClassStats())
                entry.count += 1
                if record.ok:
                    entry.readable += 1
                    entry.sizes[f"{record.width}x{record.height}"] += 1
                    entry.modes[str(record.mode)] += 1
                    entry.formats[str(record.format)] += 1
        return stats

    def warnings(self) -> list[str]:
        """One line per problem worth a look before training."""
        out = []
        if self.unreadable:
            out.append(f"{len(self.unreadable)} unreadable file(s)")
        cross = [g for g in self.duplicate_groups if g.cross_class]
        if self.duplicate_groups:
            out.append(
                f"{len(self.duplicate_groups)} exact-duplicate group(s), {len(cross)} across classes "
                "(cross-class copies are left out of splits)"
            )
        near_cross = sum(g.cross_class for g in self.near_duplicate_groups)
        if self.near_duplicate_groups:
            out.append(
                f"{len(self.near_duplicate_groups)} near-duplicate group(s) "
                f"({NEAR_METHOD} {PHASH_BITS}-bit, Hamming <= {self.near_threshold}), {near_cross} across classes"
            )
        if self.unknown_folders:
            out.append(f"folders without images: {', '.join(self.unknown_folders)}")
        if self.skipped_hidden or self.skipped_non_image:
            out.append(f"skipped {self.skipped_hidden} hidden and {self.skipped_non_image} non-image file(s)")
        if self.regions is not None:
            out.extend(region_warnings(self.regions))
        return out

    def to_json(self) -> dict[str, Any]:
        extra = {"lung_regions": self.regions} if self.regions is not None else {}
        return {
            "root": str(self.root),
            "layout": self.layout,
            "n_images": len(self.records),
            "classes": self.class_counts(),
            "per_class": {name: s.to_json() for name, s in self.class_stats().items()},
            "unreadable": [{"path": r.path, "label": r.label, "reason": r.reason} for r in self.unreadable],
            "duplicate_method": "sha1 of decoded uint8 grayscale pixels and shape",
            "duplicate_groups": [g.to_json() for g in self.duplicate_groups],
            "near_duplicate_method": {
                "method": NEAR_METHOD,
                "bits": PHASH_BITS,
                "threshold": self.near_threshold,
                "description": f"signs of the lowest {PHASH_FREQS}x{PHASH_FREQS} DCT frequencies of a "
                f"{PHASH_THUMB}x{PHASH_THUMB} thumbnail versus their median; images joined when their "
                "Hamming distance is <= threshold, transitively",
            },
            "near_duplicate_groups": [g.to_json() for g in self.near_duplicate_groups],
            "skipped_hidden": self.skipped_hidden,
            "skipped_non_image": self.skipped_non_image,
            "unknown_folders": list(self.unknown_folders),
            "warnings": self.warnings(),
            "seconds": round(self.seconds, 2),
            **extra,
        }


def audit(
    discovery: Discovery,
    near_threshold: int = DEFAULT_NEAR_THRESHOLD,
    progress: bool = True,
    workers: int | None = None,
) -> AuditReport:
    """Decode every image of `discovery` and report stats, unreadable files and duplicate groups."""
    start = time.perf_counter()
    records = scan_images(discovery.root, discovery.samples, progress=progress, workers=workers)
    exact = exact_duplicate_groups(records)
    near = near_duplicate_groups(records, near_threshold)
    regions = None
    if any(s.mask for s in discovery.samples):
        sizes = {r.path: (int(r.width), int(r.height)) for r in records if r.ok}
        regions = check_regions(discovery.root, discovery.samples, sizes)
    report = AuditReport(
        root=discovery.root,
        layout=discovery.layout,
        classes=list(discovery.classes),
        records=records,
        duplicate_groups=exact,
        near_duplicate_groups=near,
        near_threshold=near_threshold,
        skipped_hidden=discovery.skipped_hidden,
        skipped_non_image=discovery.skipped_non_image,
        unknown_folders=list(discovery.unknown_folders),
        seconds=time.perf_counter() - start,
        regions=regions,
    )
    log.info("audited %d images in %.1f s", len(records), report.seconds)
    return report


def default_workers() -> int:
    """Decoding threads: one per usable core, capped."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, _MAX_WORKERS))


def scan_images(
    root: Path, samples: Sequence[Sample], progress: bool = True, workers: int | None = None
) -> list[ImageRecord]:
    """Decode and hash every sample (in sample order) with a thread pool."""
    workers = workers or default_workers()
    jobs = [(root / s.path, s) for s in samples]
    bar = Progress(len(jobs), "reading images", enabled=progress)
    with bar, ThreadPoolExecutor(max_workers=workers) as pool:
        records = []
        for record in pool.map(_scan_one, jobs):
            records.append(record)
            bar.update(1)
    return records


def _scan_one(job: tuple[Path, Sample]) -> ImageRecord:
    file, sample = job
    try:
        pixels, info = read_image_with_info(file)
    except ImageReadError as exc:
        return ImageRecord(sample.path, sample.label, reason=exc.reason)
    return ImageRecord(
        sample.path,
        sample.label,
        format=info.format,
        mode=info.mode,
        width=info.width,
        height=info.height,
        sha1=pixel_sha1(pixels),
        phash=phash(pixels),
    )


def exact_duplicate_groups(records: Sequence[ImageRecord]) -> list[DuplicateGroup]:
    """Readable images with identical decoded pixels, grouped; sorted by first path."""
    by_hash: dict[str, list[ImageRecord]] = defaultdict(list)
    for record in records:
        if record.ok:
            by_hash[str(record.sha1)].append(record)
    return _groups([members for members in by_hash.values() if len(members) > 1])


def near_duplicate_groups(records: Sequence[ImageRecord], threshold: int) -> list[DuplicateGroup]:
    """Readable images whose pHashes are within `threshold` bits, joined transitively."""
    readable = [r for r in records if r.ok and r.phash is not None]
    if not readable:
        return []
    components = hamming_components(hashes_to_words([r.phash for r in readable]), threshold)
    return _groups([[readable[i] for i in component] for component in components])


def _groups(member_lists: Iterable[list[ImageRecord]]) -> list[DuplicateGroup]:
    groups = []
    for members in member_lists:
        members = sorted(members, key=lambda r: r.path)
        groups.append(DuplicateGroup(tuple(r.path for r in members), tuple(r.label for r in members)))
    return sorted(groups, key=lambda g: g.paths[0])
