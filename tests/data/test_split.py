"""cxr.data.split: stratified within one image, groups never straddle, deterministic bytes."""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr.data import discover as discover_module
from cxr.data.discover import Discovery, Sample, discover
from cxr.data.split import largest_remainder, make_split, validate_ratios
from cxr.errors import CxrError
from cxr.rundir import SPLITS, SplitRow, read_split_csv, write_split_csv

COUNTS = {"COVID": 37, "Lung_Opacity": 23, "Normal": 50, "Viral_Pneumonia": 11}
RATIOS = (0.7, 0.1, 0.2)


def distinct_image(rng: np.random.Generator) -> np.ndarray:
    """Random 32x32 detail: any two are far apart in the perceptual hash."""
    coarse = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((32, 32), Image.Resampling.BICUBIC))


def make_dataset(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for label, n in counts.items():
        (root / label).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(distinct_image(rng)).save(root / label / f"{label}-{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("split") / "data", COUNTS)


def split_counts(rows: list[SplitRow]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(SPLITS, 0))
    for row in rows:
        counts[row.label][row.split] += 1
    return counts


def assert_no_group_straddles(rows: list[SplitRow]) -> None:
    splits_of = defaultdict(set)
    for row in rows:
        splits_of[row.group].add(row.split)
    assert all(len(s) == 1 for s in splits_of.values())


def test_stratified_within_one_image(dataset):
    rows, report = make_split(discover(dataset), RATIOS, seed=123, progress=False)
    assert len(rows) == sum(COUNTS.values())
    counts = split_counts(rows)
    for label, n in COUNTS.items():
        for split, ratio in zip(SPLITS, RATIOS, strict=True):
            assert abs(counts[label][split] - n * ratio) < 1, (label, split, counts[label])
    assert report["counts"]["train"] == {label: counts[label]["train"] for label in COUNTS}
    assert max(report["max_deviation_from_ratio"].values()) < 1
    assert [r.path for r in rows] == sorted(r.path for r in rows)
    assert len({r.group for r in rows}) == len(rows)  # all distinct images: singleton groups


def test_deterministic_under_shuffled_listing(dataset, tmp_path, monkeypatch):
    first = discover(dataset)
    rows, _ = make_split(first, seed=7, progress=False)
    write_split_csv(rows, tmp_path / "a.csv")

    real = discover_module._list_dir
    rng = random.Random(1)

    def shuffled(folder):
        entries = real(folder)
        rng.shuffle(entries)
        return entries

    monkeypatch.setattr(discover_module, "_list_dir", shuffled)
    second = discover(dataset)
    # also hand make_split the samples in a scrambled order
    scrambled = Discovery(
        **{**vars(second), "samples": random.Random(2).sample(second.samples, len(second.samples))}
    )
    rows2, _ = make_split(scrambled, seed=7, progress=False)
    write_split_csv(rows2, tmp_path / "b.csv")
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()

    rows3, _ = make_split(first, seed=8, progress=False)
    assert [r.split for r in rows3] != [r.split for r in rows]  # the seed matters


def test_groups_never_straddle(tmp_path):
    """Manifest groups (patients), exact and near duplicates each stay in one split."""
    root = make_dataset(tmp_path / "data", {"a": 30, "b": 30}, seed=3)
    rng = np.random.default_rng(4)
    dup = distinct_image(rng)
    Image.fromarray(dup).save(root / "a" / "dup-1.png")
    Image.fromarray(dup).save(root / "a" / "dup-2.bmp")  # exact duplicate
    near = np.clip(dup.astype(int) + 4, 0, 255).astype(np.uint8)
    Image.fromarray(near).save(root / "a" / "dup-3.png")  # near duplicate
    lines = ["path,label,group"]
    for label in ("a", "b"):
        for i, file in enumerate(sorted((root / label).iterdir())):
            lines.append(f"{label}/{file.name},{label},patient{i % 7}")  # 7 patients span both classes
    (tmp_path / "data.csv").write_text("\n".join(lines) + "\n")

    found = discover(tmp_path / "data.csv")
    assert found.root == root
    rows, report = make_split(found, seed=123, progress=False)
    assert_no_group_straddles(rows)
    split_of = {r.path: r.split for r in rows}
    patient = {s.path: s.group for s in found.samples}
    by_patient = defaultdict(set)
    for path, split in split_of.items():
        by_patient[patient[path]].add(split)
    assert all(len(s) == 1 for s in by_patient.values())
    assert split_of["a/dup-1.png"] == split_of["a/dup-2.bmp"] == split_of["a/dup-3.png"]
    dup_patients = {patient[f"a/dup-{k}{ext}"] for k, ext in ((1, ".png"), (2, ".bmp"), (3, ".png"))}
    assert len(dup_patients) == 3  # the duplicates join three patients into one group
    assert report["groups"]["total"] == 7 - 2


def test_duplicate_groups_kept_together_without_manifest(tmp_path):
    root = make_dataset(tmp_path / "data", {"a": 20, "b": 20}, seed=5)
    rng = np.random.default_rng(6)
    for k in range(4):
        img = distinct_image(rng)
        for j in range(3):
            Image.fromarray(img).save(root / "a" / f"same{k}-{j}.png")
    rows, report = make_split(discover(root), seed=1, progress=False)
    assert_no_group_straddles(rows)
    for k in range(4):
        assert len({r.split for r in rows if r.path.startswith(f"a/same{k}-")}) == 1
        assert len({r.group for r in rows if r.path.startswith(f"a/same{k}-")}) == 1
    assert report["groups"]["multi_member"] == 4 and report["groups"]["largest"] == 3


def test_cross_class_duplicates_and_unreadable_excluded(tmp_path):
    root = make_dataset(tmp_path / "data", {"a": 10, "b": 10}, seed=7)
    img = distinct_image(np.random.default_rng(8))
    Image.fromarray(img).save(root / "a" / "both.png")
    Image.fromarray(img).save(root / "b" / "both.png")
    (root / "b" / "broken.png").write_bytes(b"")
    rows, report = make_split(discover(root), seed=1, progress=False)
    paths = {r.path for r in rows}
    assert "a/both.png" not in paths and "b/both.png" not in paths and "b/broken.png" not in paths
    assert len(rows) == 20
    assert report["excluded_cross_class_duplicates"][0]["paths"] == ["a/both.png", "b/both.png"]
    assert report["excluded_unreadable"][0]["path"] == "b/broken.png"


def test_same_split_from_folder_and_manifest(tmp_path):
    root = make_dataset(tmp_path / "data", {"a": 12, "b": 9}, seed=9)
    lines = ["path,label"] + [
        f"{p.parent.name}/{p.name},{p.parent.name}" for p in sorted(root.glob("*/*.png"))
    ]
    (tmp_path / "data.csv").write_text("\n".join(lines) + "\n")
    from_folder, _ = make_split(discover(root), progress=False)
    from_manifest, _ = make_split(discover(tmp_path / "data.csv"), progress=False)
    assert from_folder == from_manifest


@pytest.mark.parametrize(
    "ratios,message",
    [
        ((0.7, 0.3), r"3 positive numbers.*\[0.7, 0.3\]"),
        ((0.8, -0.1, 0.3), r"3 positive numbers.*-0.1"),
        ((0.7, 0.2, 0.2), r"sum to 1.*\[0.7, 0.2, 0.2\]"),
    ],
)
def test_bad_ratios(ratios, message):
    with pytest.raises(CxrError, match=message):
        validate_ratios(ratios)


def test_largest_remainder():
    assert largest_remainder(10, RATIOS) == [7, 1, 2]
    assert largest_remainder(11, RATIOS) == [8, 1, 2]
    assert largest_remainder(3, RATIOS) == [2, 0, 1]
    for n in range(50):
        parts = largest_remainder(n, RATIOS)
        assert sum(parts) == n and all(abs(p - n * r) < 1 for p, r in zip(parts, RATIOS, strict=True))


def test_csv_round_trip_and_errors(tmp_path):
    rows = [SplitRow("a/1.png", "a", "train", "g1"), SplitRow("b/x,y.png", "b", "test", "g2")]
    write_split_csv(rows, tmp_path / "s.csv")
    assert (tmp_path / "s.csv").read_text().splitlines()[0] == "path,label,split,group"
    assert read_split_csv(tmp_path / "s.csv") == rows
    (tmp_path / "bad.csv").write_text("path,label,split,group\na.png,a,holdout,g\n")
    with pytest.raises(CxrError, match="line 2.*'holdout'"):
        read_split_csv(tmp_path / "bad.csv")
    (tmp_path / "cols.csv").write_text("path,label\na.png,a\n")
    with pytest.raises(CxrError, match="lacks column"):
        read_split_csv(tmp_path / "cols.csv")


def test_sample_groups_from_discovery_object(tmp_path):
    """make_split works on any Discovery, e.g. one built in code with group ids."""
    root = make_dataset(tmp_path / "data", {"a": 8, "b": 8}, seed=10)
    samples = [
        Sample(f"{label}/{label}-{i:03d}.png", label, group=f"p{i // 4}")
        for label in ("a", "b")
        for i in range(8)
    ]
    found = Discovery(root, "manual", samples, ["a", "b"], 0, 0, [])
    rows, report = make_split(found, seed=3, progress=False)
    assert report["groups"]["total"] == 2  # p0 and p1 each span both classes
    assert_no_group_straddles(rows)
