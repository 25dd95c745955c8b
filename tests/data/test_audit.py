"""cxr.data.audit: stats, unreadable files, exact and near duplicates, the vectorised grouping."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr.data.audit import audit as run_audit
from cxr.data.discover import discover
from cxr.data.hashes import (
    DEFAULT_NEAR_THRESHOLD,
    PHASH_BITS,
    hamming_components,
    hashes_to_words,
    near_pairs,
    phash,
    pixel_sha1,
)

SIDE = 64


def smooth_image(rng: np.random.Generator, side: int = SIDE) -> np.ndarray:
    """A random picture with detail at the scales the hash sees: distinct per draw, stable under
    small changes (brightness, resizing)."""
    coarse = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((side, side), Image.Resampling.BICUBIC))


def save(path: Path, pixels: np.ndarray, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)


@pytest.fixture
def dataset(tmp_path) -> Path:
    """Two classes of distinct images, plus duplicates and broken files with known names."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for label in ("COVID", "Normal"):
        for i in range(4):
            save(root / label / f"{label}-{i}.png", smooth_image(rng))
    base = np.asarray(Image.open(root / "COVID" / "COVID-0.png"))
    save(root / "COVID" / "copy-of-0.bmp", base, "BMP")  # same pixels, other format: exact duplicate
    save(root / "Normal" / "also-0.png", base)  # same pixels in another class
    brighter = np.clip(base.astype(int) * 1.05 + 3, 0, 255).astype(np.uint8)
    save(root / "COVID" / "brighter-1.png", brighter[:, :])  # near duplicate of COVID-0
    other = np.asarray(Image.open(root / "Normal" / "Normal-2.png"))
    resized = np.asarray(Image.fromarray(other).resize((48, 48), Image.Resampling.BILINEAR))
    save(root / "Normal" / "small-2.png", resized)  # near duplicate of Normal-2 at another size
    (root / "Normal" / "zero.png").write_bytes(b"")
    (root / "Normal" / "text.png").write_text("hello")
    return root


def test_audit_report(dataset):
    report = run_audit(discover(dataset), progress=False, workers=2)
    data = report.to_json()
    assert data["classes"] == {"COVID": 6, "Normal": 8}
    assert {u["path"] for u in data["unreadable"]} == {"Normal/zero.png", "Normal/text.png"}
    assert all(u["reason"] for u in data["unreadable"])
    assert data["per_class"]["COVID"]["sizes"] == {"64x64": 6}
    assert data["per_class"]["COVID"]["formats"] == {"BMP": 1, "PNG": 5}
    assert data["per_class"]["Normal"]["sizes"] == {"48x48": 1, "64x64": 5}
    assert data["near_duplicate_method"]["method"] == "phash"
    assert data["near_duplicate_method"]["threshold"] == DEFAULT_NEAR_THRESHOLD
    assert data["near_duplicate_method"]["bits"] == PHASH_BITS

    exact = [g["paths"] for g in data["duplicate_groups"]]
    assert exact == [["COVID/COVID-0.png", "COVID/copy-of-0.bmp", "Normal/also-0.png"]]
    assert data["duplicate_groups"][0]["cross_class"] is True

    near = [set(g["paths"]) for g in data["near_duplicate_groups"]]
    assert {"COVID/COVID-0.png", "COVID/copy-of-0.bmp", "Normal/also-0.png", "COVID/brighter-1.png"} in near
    assert {"Normal/Normal-2.png", "Normal/small-2.png"} in near
    assert len(near) == 2  # the other random images are not near anything
    assert any("unreadable" in w for w in data["warnings"])


def test_threshold_zero_keeps_only_identical_hashes(dataset):
    report = run_audit(discover(dataset), near_threshold=0, progress=False)
    near = [set(g.paths) for g in report.near_duplicate_groups]
    assert {"COVID/COVID-0.png", "COVID/copy-of-0.bmp", "Normal/also-0.png"} in near
    assert not any("Normal/small-2.png" in g for g in near)


def test_pixel_sha1_depends_on_shape_and_pixels():
    a = np.zeros((4, 6), np.uint8)
    assert pixel_sha1(a) == pixel_sha1(a.copy())
    assert pixel_sha1(a) != pixel_sha1(a.reshape(6, 4))
    b = a.copy()
    b[0, 0] = 1
    assert pixel_sha1(a) != pixel_sha1(b)


def test_phash_size_and_distinctness():
    rng = np.random.default_rng(1)
    x, y = smooth_image(rng), smooth_image(rng)
    assert len(phash(x)) * 8 == PHASH_BITS
    words = hashes_to_words([phash(x), phash(y), phash(np.clip(x * 0.9 + 10, 0, 255).astype(np.uint8))])
    dist = [int(np.unpackbits((words[0] ^ words[i]).view(np.uint8)).sum()) for i in (1, 2)]
    assert dist[0] > 3 * DEFAULT_NEAR_THRESHOLD and dist[1] <= DEFAULT_NEAR_THRESHOLD


def test_hamming_components_transitive_and_thresholded():
    words = np.array([0b0, 0b1, 0b11, 0b111, 0xFF00, 0xFF00, 0xFFFF_0000_0000], dtype=np.uint64)[:, None]
    assert hamming_components(words, 1) == [[0, 1, 2, 3], [4, 5]]  # chained 1-bit steps join
    assert hamming_components(words, 0) == [[4, 5]]
    assert hamming_components(np.zeros((0, 1), np.uint64), 3) == []


def test_near_pairs_match_brute_force():
    rng = np.random.default_rng(2)
    words = rng.integers(0, 2**63, size=(700, 2), dtype=np.uint64)
    words[::7] = words[0] ^ np.uint64(0b101)  # a cluster at distance 0..2
    got = set()
    for rows, cols in near_pairs(words, 3):
        got.update(zip(rows.tolist(), cols.tolist(), strict=True))
    bits = np.unpackbits(words.view(np.uint8), axis=1)
    dist = (bits[:, None, :] != bits[None, :, :]).sum(-1)
    i, j = np.nonzero(np.triu(dist <= 3, 1))
    assert got == set(zip(i.tolist(), j.tolist(), strict=True)) and got


def test_grouping_scales_to_thousands():
    rng = np.random.default_rng(3)
    words = rng.integers(0, 2**63, size=(5000, PHASH_BITS // 64), dtype=np.uint64)
    start = time.perf_counter()
    hamming_components(words, DEFAULT_NEAR_THRESHOLD)
    assert time.perf_counter() - start < 10  # ~0.5 s here; generous for a loaded CI machine
