"""Check a dataset before training: readability, sizes and modes, exact and near duplicates.

Every image is decoded once (a thread pool: PIL and hashlib release the GIL while decoding and
hashing). From the decoded pixels come a SHA-1 of shape + pixel bytes (exact duplicates: the same
picture saved twice, even under another name or format) and a 256-bit perceptual hash (near
duplicates: re-encoded, resized, re-windowed or slightly altered copies of one radiograph).

Why a 256-bit pHash and not the common 64-bit dHash: chest X-rays all share one layout, so the 64
gradient signs of a 9x8 thumbnail barely differ between patients. On the 4,830 real images of
cxr4-dev a 64-bit dHash at Hamming <= 4 joined 3,280 unrelated images into one group (a useless
split constraint), while this pHash (signs versus the median of the 16x16 lowest DCT frequencies of
a 32x32 thumbnail) at <= 28 of 256 bits finds all 94 known same-patient/same-study pairs of the
dataset's manifest with one extra pair, and no group larger than 4.

Near duplicates are the connected components of "Hamming distance <= threshold", found with
vectorised popcounts in blocks and a union-find: ~5000 images take well under a second once hashed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from cxr.data.discover import Discovery, Sample
from cxr.errors import ImageReadError
from cxr.io import read_image_with_info

log = logging.getLogger(__name__)

NEAR_METHOD = "phash"
PHASH_THUMB = 32  # side of the box-filtered thumbnail that is DCT-transformed
PHASH_FREQS = 16  # the lowest 16x16 DCT frequencies give the bits
PHASH_BITS = PHASH_FREQS * PHASH_FREQS  # 256
DEFAULT_NEAR_THRESHOLD = 28  # max Hamming distance (of 256 bits) joined as near duplicates
_WORD_BITS = 64
_BLOCK_ROWS = 256  # rows of the pairwise Hamming matrix computed at once (256 x N)
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

    @property
    def unreadable(self) -> list[ImageRecord]:
        return [r for r in self.records if not r.ok]

    def class_counts(self) -> dict[str, int]:
        """Images per class (readable or not), in class order."""
        return {name: stats.count for name, stats in self.class_stats().items()}

    def class_stats(self) -> dict[str, ClassStats]:
        stats = {name: ClassStats() for name in self.classes}
        for record in self.records:
            entry = stats[record.label]
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
        return out

    def to_json(self) -> dict[str, Any]:
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
    bar = tqdm(total=len(jobs), desc="reading images", unit="img", disable=None if progress else True)
    with bar, ThreadPoolExecutor(max_workers=workers) as pool:
        records = []
        for record in pool.map(_scan_one, jobs):
            records.append(record)
            bar.update()
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


def pixel_sha1(pixels: np.ndarray) -> str:
    """SHA-1 of the shape and the decoded pixel bytes: equal for the same picture in any file format."""
    digest = hashlib.sha1(np.asarray(pixels.shape, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(pixels).tobytes())
    return digest.hexdigest()


def phash(pixels: np.ndarray) -> bytes:
    """256-bit perceptual hash: low DCT frequencies of a small thumbnail, thresholded at their median.

    Robust to resizing, re-encoding and gain changes, which keep the coarse structure that low
    frequencies describe.
    """
    thumb = np.asarray(
        Image.fromarray(pixels).resize((PHASH_THUMB, PHASH_THUMB), Image.Resampling.BOX), dtype=np.float64
    )
    basis = _dct_basis(PHASH_THUMB)[:PHASH_FREQS]
    coeffs = (basis @ thumb @ basis.T).ravel()
    bits = coeffs > np.median(coeffs[1:])  # the DC term (mean brightness) does not set the median
    return np.packbits(bits).tobytes()


@lru_cache(maxsize=4)
def _dct_basis(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix (rows = frequencies), so a 2-D DCT is B @ X @ B.T."""
    k = np.arange(n)[:, None]
    basis = np.cos(np.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    basis[0] /= np.sqrt(2.0)
    return basis


def hashes_to_words(hashes: Sequence[bytes]) -> np.ndarray:
    """Equal-length hash bytes -> (N, words) uint64 array for vectorised Hamming distances."""
    joined = b"".join(hashes)
    return np.frombuffer(joined, dtype=">u8").astype(np.uint64).reshape(len(hashes), -1)


# ------------------------------------------------------------------------------------------ groups


class UnionFind:
    """Disjoint sets over 0..n-1 with path halving and union by size."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))
        self.size = [1] * n

    def find(self, i: int) -> int:
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]

    def components(self) -> list[list[int]]:
        """All sets (including singletons), each sorted, ordered by their smallest member."""
        members: dict[int, list[int]] = defaultdict(list)
        for i in range(len(self.parent)):
            members[self.find(i)].append(i)
        return sorted(members.values(), key=lambda m: m[0])


def _popcount(x: np.ndarray) -> np.ndarray:
    """Bits set per uint64 element (numpy>=2 has a native ufunc; else a byte lookup table)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
    return table[x.view(np.uint8)].reshape(*x.shape, 8).sum(axis=-1, dtype=np.uint8)


def near_pairs(words: np.ndarray, threshold: int) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    """Index pairs (i < j) of hashes ((N, W) uint64 words) within `threshold` bits, block by block."""
    words = np.asarray(words, dtype=np.uint64)
    if words.ndim == 1:
        words = words[:, None]
    n = len(words)
    for start in range(0, n, _BLOCK_ROWS):
        block = words[start : start + _BLOCK_ROWS]
        dist = np.zeros((len(block), n), dtype=np.uint16)
        for w in range(words.shape[1]):
            dist += _popcount(block[:, w, None] ^ words[None, :, w])
        rows, cols = np.nonzero(dist <= threshold)
        rows = rows + start
        keep = cols > rows
        yield rows[keep], cols[keep]


def hamming_components(words: np.ndarray, threshold: int) -> list[list[int]]:
    """Connected components (size >= 2) of the graph "Hamming distance <= threshold" over the rows
    of `words` ((N, W) uint64). Identical hashes are collapsed first, so a thousand copies of one
    blank image cost nothing."""
    words = np.asarray(words, dtype=np.uint64)
    if words.ndim == 1:
        words = words[:, None]
    if not len(words):
        return []
    unique, inverse = np.unique(words, axis=0, return_inverse=True)
    uf = UnionFind(len(unique))
    for rows, cols in near_pairs(unique, threshold):
        for a, b in zip(rows.tolist(), cols.tolist(), strict=True):
            uf.union(a, b)
    members: dict[int, list[int]] = defaultdict(list)
    for index, u in enumerate(inverse.ravel().tolist()):
        members[uf.find(u)].append(index)
    return sorted((m for m in members.values() if len(m) > 1), key=lambda m: m[0])


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
